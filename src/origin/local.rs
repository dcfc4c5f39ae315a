//! A directory served as an origin: one folder per bucket, one file per key.
//!
//! It exists so that `make run` and demos work with no AWS account and no S3 server. It keeps
//! the origin contract honestly anyway: the ETag is a hash of the file's content (cached per
//! inode/size/mtime stamp, so it is computed once per version), so editing a file always makes
//! a new ETag, and a ranged read checks the ETag it was pinned to.

use super::{
    BucketInfo, BucketList, ListEntry, ListPage, ListRequest, ListVersion, ObjectMeta, Origin,
    RangeAnswer, RangeRequest,
};
use crate::error::{Error, OriginError};
use async_trait::async_trait;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// What identifies one version of a file cheaply.
type Stamp = (u64, u64, Option<SystemTime>, Option<SystemTime>);

/// The local-directory origin.
#[derive(Clone, Debug)]
pub struct LocalOrigin {
    root: PathBuf,
    etags: Arc<Mutex<HashMap<PathBuf, (Stamp, String)>>>,
}

fn stamp(m: &std::fs::Metadata) -> Stamp {
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(m);
    #[cfg(not(unix))]
    let ino = 0;
    (ino, m.len(), m.modified().ok(), m.created().ok())
}

fn io_err(e: std::io::Error) -> OriginError {
    if e.kind() == std::io::ErrorKind::NotFound {
        OriginError::NotFound
    } else {
        OriginError::Transient(format!("local origin: {e}"))
    }
}

impl LocalOrigin {
    /// Serves `root`; each sub-directory is a bucket.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalOrigin {
            root: root.into(),
            etags: Arc::default(),
        }
    }

    fn bucket_dir(&self, bucket: &str) -> Result<PathBuf, OriginError> {
        if bucket.is_empty() || bucket.contains(['/', '\\', '\0']) || bucket.starts_with('.') {
            return Err(OriginError::NoSuchBucket);
        }
        let p = self.root.join(bucket);
        if p.is_dir() {
            Ok(p)
        } else {
            Err(OriginError::NoSuchBucket)
        }
    }

    /// Maps a key to a file, refusing anything that could leave the bucket directory.
    fn file(&self, bucket: &str, key: &str) -> Result<PathBuf, OriginError> {
        let dir = self.bucket_dir(bucket)?;
        if key.is_empty() || key.contains('\0') || key.ends_with('/') {
            return Err(OriginError::NotFound);
        }
        if key
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(OriginError::NotFound);
        }
        Ok(dir.join(key))
    }

    /// The content ETag of `path`, computed once per file version.
    async fn etag(&self, path: &Path) -> Result<(std::fs::Metadata, String), OriginError> {
        let meta = tokio::fs::metadata(path).await.map_err(io_err)?;
        if !meta.is_file() {
            return Err(OriginError::NotFound);
        }
        let st = stamp(&meta);
        if let Ok(map) = self.etags.lock() {
            if let Some((s, e)) = map.get(path) {
                if *s == st {
                    return Ok((meta, e.clone()));
                }
            }
        }
        let p = path.to_owned();
        let etag = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut f = std::fs::File::open(&p)?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            Ok(h.finalize()[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect())
        })
        .await
        .map_err(|e| OriginError::Transient(format!("local origin: {e}")))?
        .map_err(io_err)?;
        if let Ok(mut map) = self.etags.lock() {
            map.insert(path.to_owned(), (st, etag.clone()));
        }
        Ok((meta, etag))
    }

    /// Every file under `dir`, keyed by its path below the bucket. A directory or file that
    /// vanishes while it is walked is skipped (it was deleted: not listing it is right); any
    /// other error fails the walk, because a listing that silently leaves out a directory it
    /// could not read looks complete and is not.
    fn walk(
        dir: &Path,
        rel: &str,
        out: &mut Vec<(String, std::fs::Metadata)>,
    ) -> std::io::Result<()> {
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        for ent in rd {
            let ent = ent?;
            let Ok(name) = ent.file_name().into_string() else {
                continue;
            };
            let key = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            match ent.metadata() {
                Ok(m) if m.is_dir() => Self::walk(&ent.path(), &key, out)?,
                Ok(m) if m.is_file() => out.push((key, m)),
                Ok(_) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Origin for LocalOrigin {
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, OriginError> {
        let path = self.file(bucket, key)?;
        let (meta, etag) = self.etag(&path).await?;
        Ok(ObjectMeta {
            size: meta.len(),
            etag,
            content_type: Some("application/octet-stream".into()),
            last_modified: meta.modified().ok(),
            ..ObjectMeta::default()
        })
    }

    async fn get_range(&self, r: &RangeRequest) -> Result<RangeAnswer, OriginError> {
        let path = self.file(&r.bucket, &r.key)?;
        let (meta, current) = self.etag(&path).await?;
        if current != *r.etag {
            return Err(OriginError::EtagChanged);
        }
        if r.offset.saturating_add(r.len) > meta.len() {
            return Err(OriginError::Rejected(
                "range past the end of the file".into(),
            ));
        }
        let mut f = tokio::fs::File::open(&path).await.map_err(io_err)?;
        f.seek(std::io::SeekFrom::Start(r.offset))
            .await
            .map_err(io_err)?;
        let reader = f.take(r.len);
        let stream = tokio_util::io::ReaderStream::with_capacity(reader, 256 << 10)
            .map(|x| x.map_err(|e| Error::Origin(io_err(e))));
        Ok(RangeAnswer {
            etag: Some(current),
            content_range: Some(format!(
                "bytes {}-{}/{}",
                r.offset,
                r.offset + r.len - 1,
                meta.len()
            )),
            content_length: Some(r.len),
            body: stream.boxed(),
        })
    }

    async fn list(&self, bucket: &str, req: &ListRequest) -> Result<ListPage, OriginError> {
        let dir = self.bucket_dir(bucket)?;
        let req = req.clone();
        tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            // Not `io_err`: a walk's NotFound cannot be a missing key (vanished entries are
            // skipped); any error left is transient.
            LocalOrigin::walk(&dir, "", &mut all)
                .map_err(|e| OriginError::Transient(format!("local origin LIST: {e}")))?;
            all.sort_by(|a, b| a.0.cmp(&b.0));
            let after = match req.version {
                ListVersion::V2 => req
                    .continuation_token
                    .as_deref()
                    .map(|t| decode_token(t).unwrap_or_default())
                    .or(req.start_after.clone()),
                ListVersion::V1 => req.marker.clone(),
            };
            let prefix = req.prefix.clone().unwrap_or_default();
            let mut page = ListPage::default();
            let mut last = None::<String>;
            let mut count = 0;
            for (key, m) in all {
                if !key.starts_with(&prefix) || after.as_deref().is_some_and(|a| key.as_str() <= a)
                {
                    continue;
                }
                let grouped = req
                    .delimiter
                    .as_deref()
                    .filter(|d| !d.is_empty())
                    .and_then(|d| {
                        key[prefix.len()..]
                            .find(d)
                            .map(|i| key[..prefix.len() + i + d.len()].to_owned())
                    });
                if let Some(cp) = &grouped {
                    if page.common_prefixes.last() == Some(cp) {
                        continue;
                    }
                }
                if count == req.max_keys.max(0) as usize {
                    page.is_truncated = true;
                    break;
                }
                count += 1;
                match grouped {
                    Some(cp) => {
                        last = Some(cp.clone());
                        page.common_prefixes.push(cp)
                    }
                    None => {
                        last = Some(key.clone());
                        page.contents.push(ListEntry {
                            etag: None,
                            size: m.len(),
                            last_modified: m.modified().ok(),
                            storage_class: Some("STANDARD".into()),
                            owner: None,
                            key,
                        })
                    }
                }
            }
            if page.is_truncated {
                match req.version {
                    ListVersion::V2 => {
                        page.next_continuation_token = last.as_deref().map(encode_token)
                    }
                    ListVersion::V1 => {
                        if req.delimiter.is_some() {
                            page.next_marker = last
                        }
                    }
                }
            }
            let enc = |s: String| {
                if req.encoding_url {
                    super::url_encode(&s)
                } else {
                    s
                }
            };
            for o in &mut page.contents {
                o.key = enc(std::mem::take(&mut o.key));
            }
            page.common_prefixes = page.common_prefixes.drain(..).map(enc).collect();
            page.next_marker = page.next_marker.take().map(enc);
            page.prefix = Some(enc(req.prefix.clone().unwrap_or_default()));
            page.delimiter = req.delimiter.clone().map(enc);
            if req.version == ListVersion::V2 {
                page.start_after = req.start_after.clone().map(enc);
            } else {
                page.marker = Some(enc(req.marker.clone().unwrap_or_default()));
            }
            page.url_encoded = req.encoding_url;
            Ok(page)
        })
        .await
        .map_err(|e| OriginError::Transient(format!("local origin: {e}")))?
    }

    async fn head_bucket(&self, bucket: &str) -> Result<(), OriginError> {
        self.bucket_dir(bucket).map(|_| ())
    }

    async fn list_buckets(&self) -> Result<BucketList, OriginError> {
        let mut buckets: Vec<BucketInfo> = std::fs::read_dir(&self.root)
            .map_err(io_err)?
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| {
                let created = e
                    .metadata()
                    .ok()
                    .and_then(|m| m.created().or(m.modified()).ok());
                let name = e.file_name().into_string().ok()?;
                Some(BucketInfo { name, created })
            })
            .filter(|b| !b.name.starts_with('.'))
            .collect();
        buckets.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(BucketList {
            buckets,
            owner: None,
        })
    }

    fn region(&self) -> &str {
        "local"
    }
}

fn encode_token(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(t: &str) -> Option<String> {
    if t.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..t.len())
        .step_by(2)
        .map(|i| t.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn etag_changes_with_content_and_pins_reads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        let f = dir.path().join("b/k");
        std::fs::write(&f, b"hello world").unwrap();
        let o = LocalOrigin::new(dir.path());
        let m1 = o.head("b", "k").await.unwrap();
        assert_eq!(m1.size, 11);
        let got: Vec<u8> = o
            .get_range(&RangeRequest::new("b", "k", &m1.etag, 11, 6, 5))
            .await
            .unwrap()
            .body
            .map(|b| b.unwrap().to_vec())
            .concat()
            .await;
        assert_eq!(got, b"world");
        // Same size, new content: the ETag must change and old pins must fail.
        std::fs::write(&f, b"HELLO WORLD").unwrap();
        let m2 = o.head("b", "k").await.unwrap();
        assert_ne!(m1.etag, m2.etag);
        assert_eq!(
            o.get_range(&RangeRequest::new("b", "k", &m1.etag, 11, 0, 1))
                .await
                .err(),
            Some(OriginError::EtagChanged)
        );
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_bucket() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("secret"), b"x").unwrap();
        let o = LocalOrigin::new(dir.path());
        assert_eq!(o.head("b", "../secret").await, Err(OriginError::NotFound));
        assert_eq!(o.head("..", "secret").await, Err(OriginError::NoSuchBucket));
    }

    #[tokio::test]
    async fn list_groups_and_paginates() {
        let dir = tempfile::tempdir().unwrap();
        for k in ["a/1", "a/2", "b", "c/x/y"] {
            let p = dir.path().join("bk").join(k);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let o = LocalOrigin::new(dir.path());
        let mut req = ListRequest {
            version: ListVersion::V2,
            prefix: None,
            delimiter: Some("/".into()),
            max_keys: 2,
            continuation_token: None,
            start_after: None,
            marker: None,
            fetch_owner: false,
            encoding_url: false,
        };
        let p1 = o.list("bk", &req).await.unwrap();
        assert_eq!(p1.common_prefixes, vec!["a/"]);
        assert_eq!(p1.contents[0].key, "b");
        assert!(p1.is_truncated);
        req.continuation_token = p1.next_continuation_token;
        let p2 = o.list("bk", &req).await.unwrap();
        assert_eq!(p2.common_prefixes, vec!["c/"]);
        assert!(!p2.is_truncated);
    }
}
