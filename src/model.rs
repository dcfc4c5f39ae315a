//! The chunk model: identity, store path, tier ladder and range→chunk math.
//!
//! A chunk is identified by everything that determines its bytes: the origin, the bucket, the
//! key, the object's ETag, the chunk size and the chunk's index. Putting the ETag into the
//! identity is what makes the cache safe without any invalidation protocol: a new version of an
//! object has a new ETag, so it hashes to new chunks and no byte of the old version can ever be
//! served for it. Putting the chunk size in means a config change orphans old chunks instead of
//! mis-slicing them.
//!
//! The store path is orca's, bit for bit (SPEC §2), so tools and test vectors carry over:
//! `origin_id/hex(sha256(LP(origin_id)‖LP(bucket)‖LP(key)‖LP(etag)‖LE64(chunk_size)))/index`.
//!
//! These are plain types every wing shares (the read path, the stores, the cluster, the
//! config): they depend on nothing above them.

use sha2::{Digest, Sha256};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// The largest piece. Small enough that a reader pins little when it holds one piece of a
/// chunk that was evicted meanwhile; large enough that a 128 MiB chunk is 512 pieces.
pub const PIECE: usize = 256 << 10;

/// The smallest chunk size accepted anywhere (SPEC §2): smaller chunks would turn every large
/// object into a storm of tiny origin requests.
pub const MIN_CHUNK_SIZE: u64 = 1 << 20;

/// Identity of one chunk of one version of one object.
///
/// Cheap to clone: the strings are shared, because one GET of a large object creates a key per
/// chunk and every layer of the stack passes keys around.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    /// Names the origin, so two origins with the same bucket names never share chunks.
    pub origin_id: Arc<str>,
    /// Origin bucket.
    pub bucket: Arc<str>,
    /// Object key, exactly as stored at the origin (decoded).
    pub key: Arc<str>,
    /// Origin ETag without quotes; pins the object version.
    pub etag: Arc<str>,
    /// Chunk size used to cut this object (depends on tiers).
    pub chunk_size: u64,
    /// Zero-based chunk index.
    pub index: u64,
}

impl ChunkKey {
    /// The hash part of the store path (64 lowercase hex characters) — shared by every chunk of
    /// one object version.
    pub fn object_hash(&self) -> String {
        fn lp(h: &mut Sha256, s: &str) {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        let mut h = Sha256::new();
        lp(&mut h, &self.origin_id);
        lp(&mut h, &self.bucket);
        lp(&mut h, &self.key);
        lp(&mut h, &self.etag);
        h.update(self.chunk_size.to_le_bytes());
        let digest = h.finalize();
        let mut out = String::with_capacity(64);
        for b in digest {
            use std::fmt::Write;
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// The store path `origin_id/<hash>/<index>` of SPEC §2.
    pub fn path(&self) -> String {
        format!("{}/{}/{}", self.origin_id, self.object_hash(), self.index)
    }

    /// Byte offset of this chunk inside the object.
    pub fn offset(&self) -> u64 {
        self.index.saturating_mul(self.chunk_size)
    }

    /// Exact length of this chunk for an object of `object_size` bytes: the chunk size, or the
    /// remainder for the tail chunk, or 0 past the end.
    pub fn expected_len(&self, object_size: u64) -> u64 {
        let off = self.offset();
        if off >= object_size {
            0
        } else {
            self.chunk_size.min(object_size - off)
        }
    }
}

impl fmt::Debug for ChunkKey {
    // The ETag is deliberately not printed (it can be long and it is not useful in logs);
    // its length is, so two versions can still be told apart.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ChunkKey{{{}/{}/{}@{}#{}}}",
            self.origin_id,
            self.bucket,
            self.key,
            self.index,
            self.etag.len()
        )
    }
}

/// One step of the chunk-size ladder: objects of at least `min_object_size` bytes are cut into
/// `chunk_size` chunks. Large objects get large chunks so that a 100 GiB model file is not
/// twelve thousand origin requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tier {
    /// Inclusive lower bound on the object size.
    pub min_object_size: u64,
    /// Chunk size for objects at or above the bound.
    pub chunk_size: u64,
}

/// Picks the chunk size for an object: the last tier (ascending) whose bound the object
/// reaches, else `base`.
pub fn chunk_size_for(object_size: u64, base: u64, tiers: &[Tier]) -> u64 {
    tiers
        .iter()
        .rfind(|t| t.min_object_size <= object_size)
        .map_or(base, |t| t.chunk_size)
}

/// One chunk's share of a byte range: which chunk, and which bytes of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkSlice {
    /// Chunk index.
    pub index: u64,
    /// Byte range inside the chunk (relative to the chunk start).
    pub range: Range<u64>,
}

/// Splits the inclusive byte range `[start, end]` of an object of `object_size` bytes into the
/// chunks that hold it, in order. `end` is clamped to the object; an empty or out-of-bounds
/// range yields nothing.
pub fn slices(start: u64, end: u64, chunk_size: u64, object_size: u64) -> Vec<ChunkSlice> {
    if object_size == 0 || start >= object_size || chunk_size == 0 {
        return Vec::new();
    }
    let end = end.min(object_size - 1);
    if start > end {
        return Vec::new();
    }
    let first = start / chunk_size;
    let last = end / chunk_size;
    (first..=last)
        .map(|index| {
            let chunk_start = index * chunk_size;
            let chunk_end = (chunk_start + chunk_size - 1).min(object_size - 1);
            let lo = start.max(chunk_start) - chunk_start;
            let hi = end.min(chunk_end) - chunk_start + 1;
            ChunkSlice {
                index,
                range: lo..hi,
            }
        })
        .collect()
}

// ---- What the origins answer, and what the read path and the stores pass around ----

use crate::error::Error;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use std::time::SystemTime;

/// A stream of object bytes; errors are the crate's, so layers above can pass it on unchanged.
pub type ByteStream = BoxStream<'static, Result<Bytes, Error>>;

/// What a HEAD at the origin says about one object version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes.
    pub size: u64,
    /// ETag without surrounding quotes; empty when the origin gave none.
    pub etag: String,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Last-Modified`.
    pub last_modified: Option<SystemTime>,
    /// `Cache-Control`.
    pub cache_control: Option<String>,
    /// `Content-Encoding`.
    pub content_encoding: Option<String>,
    /// `Content-Disposition`.
    pub content_disposition: Option<String>,
    /// `Content-Language`.
    pub content_language: Option<String>,
    /// `Expires`, verbatim.
    pub expires: Option<String>,
    /// `x-amz-meta-*` pairs (names without the prefix, lowercase), sorted by name.
    pub user_metadata: Vec<(String, String)>,
    /// `x-amz-version-id`, when the origin's bucket is versioned.
    pub version_id: Option<String>,
    /// `x-amz-mp-parts-count`: how many parts a multipart object has.
    pub parts_count: Option<u32>,
    /// The byte range `(first, last)` of the part asked for by number (`?partNumber=`).
    pub part_range: Option<(u64, u64)>,
    /// The object's stored checksums as the origin reported them (`x-amz-checksum-*` header
    /// names, lowercase, with `x-amz-checksum-type`); `None` when unknown (the metadata came
    /// from a ranged GET, which does not carry them).
    pub checksums: Option<Vec<(String, String)>>,
    /// The response headers this metadata implies, built on first use (see [`HeaderCache`]).
    pub headers: HeaderCache,
}

/// The response headers an object's metadata implies (ETag, Last-Modified, Content-Type,
/// user metadata…), built once per cached metadata entry: a warm GET then copies a prepared
/// map instead of formatting and allocating every value again (about ten allocations of the
/// ~58 a warm small GET made). Not part of the metadata's identity: metas compare equal
/// whatever it holds, and a clone starts empty, so a copy changed afterwards can never keep
/// headers of the original.
#[derive(Default)]
pub struct HeaderCache(std::sync::OnceLock<http::HeaderMap>);

impl HeaderCache {
    /// The headers, built by `build` the first time.
    pub fn get_or_init(&self, build: impl FnOnce() -> http::HeaderMap) -> &http::HeaderMap {
        self.0.get_or_init(build)
    }
}

impl Clone for HeaderCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for HeaderCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for HeaderCache {}

impl std::fmt::Debug for HeaderCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "built"
        } else {
            "empty"
        })
    }
}

/// Which variant of an object a read means: the current version (the default), a specific
/// version (`?versionId=`), and/or one part of a multipart object (`?partNumber=`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    /// `versionId`.
    pub version_id: Option<Arc<str>>,
    /// `partNumber`.
    pub part_number: Option<u32>,
}

impl Selector {
    /// The current version, whole.
    pub fn is_current(&self) -> bool {
        self.version_id.is_none() && self.part_number.is_none()
    }
}

/// A bucket as ListBuckets names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInfo {
    /// Name.
    pub name: String,
    /// `CreationDate`, when the origin says.
    pub created: Option<SystemTime>,
}

/// A ListBuckets answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketList {
    /// The buckets.
    pub buckets: Vec<BucketInfo>,
    /// The owner (id, display name), as the origin names it.
    pub owner: Option<(String, Option<String>)>,
}

/// Which LIST API a client used; the answer keeps that shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListVersion {
    /// ListObjects (marker based).
    V1,
    /// ListObjectsV2 (continuation-token based).
    V2,
}

/// A LIST request with every S3 parameter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListRequest {
    /// V1 or V2.
    pub version: ListVersion,
    /// `prefix`.
    pub prefix: Option<String>,
    /// `delimiter`.
    pub delimiter: Option<String>,
    /// `max-keys` (already clamped to 0..=1000).
    pub max_keys: i32,
    /// V2 `continuation-token`.
    pub continuation_token: Option<String>,
    /// V2 `start-after`.
    pub start_after: Option<String>,
    /// V1 `marker`.
    pub marker: Option<String>,
    /// V2 `fetch-owner`.
    pub fetch_owner: bool,
    /// `encoding-type=url`: the origin URL-encodes keys and echoed values.
    pub encoding_url: bool,
}

/// One object of a LIST page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// Key.
    pub key: String,
    /// Last-Modified.
    pub last_modified: Option<SystemTime>,
    /// ETag as the origin listed it (quotes kept).
    pub etag: Option<String>,
    /// Size.
    pub size: u64,
    /// Storage class.
    pub storage_class: Option<String>,
    /// Owner (id, display name), when asked for and given.
    pub owner: Option<(String, Option<String>)>,
}

/// One LIST page, in the origin's own order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Objects.
    pub contents: Vec<ListEntry>,
    /// Common prefixes (with delimiter).
    pub common_prefixes: Vec<String>,
    /// More pages follow.
    pub is_truncated: bool,
    /// V2: token for the next page.
    pub next_continuation_token: Option<String>,
    /// V1: marker for the next page (when a delimiter was given).
    pub next_marker: Option<String>,
    /// The request's prefix as the origin echoed it.
    pub prefix: Option<String>,
    /// `MaxKeys` as the origin echoed it (stores differ on `max-keys=0`).
    pub max_keys: Option<i32>,
    /// The request's delimiter as the origin echoed it.
    pub delimiter: Option<String>,
    /// V2: the request's start-after as the origin echoed it.
    pub start_after: Option<String>,
    /// V1: the request's marker as the origin echoed it.
    pub marker: Option<String>,
    /// Keys, prefixes and echoed values are URL-encoded (`encoding-type=url`). The origin's
    /// own encoding is passed through untouched, so Shoal's listing is the origin's.
    pub url_encoded: bool,
}

/// URL-encodes a LIST value for `encoding-type=url` (used where Shoal lists by itself, in the
/// local origin): RFC 3986 unreserved characters and `/` are kept.
pub fn url_encode(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    utf8_percent_encode(s, KEEP).to_string()
}

/// Percent-encodes a query component (or any value that must survive a URL untouched):
/// everything but RFC 3986 unreserved characters. One encoder for every URL Shoal builds —
/// origin requests it signs, pass-through queries, `/internal/fill` chunk keys.
pub fn encode_component(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(s, KEEP).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(o: &str, b: &str, k: &str, e: &str, cs: u64, i: u64) -> ChunkKey {
        ChunkKey {
            origin_id: o.into(),
            bucket: b.into(),
            key: k.into(),
            etag: e.into(),
            chunk_size: cs,
            index: i,
        }
    }

    #[test]
    fn path_matches_orca_test_vectors() {
        assert_eq!(
            key("origin-a", "b", "k", "e", 1024, 7).path(),
            "origin-a/cc0e4b455e06eb99a21504f612a81a6668b63886990b32c1b3758aae4a33a7ad/7"
        );
        assert_eq!(
            key(
                "inttest-origin",
                "bucket",
                "sample-1k",
                "d41d8cd98f00b204e9800998ecf8427e",
                1048576,
                0
            )
            .path(),
            "inttest-origin/42b86e03f4a83070da71a7ab05104fe4820f27a4e5f709b70bfeb13c2b2f6b37/0"
        );
    }

    #[test]
    fn every_field_changes_the_path() {
        let base = key("o", "b", "k", "e", 1 << 20, 0);
        let variants = [
            key("o2", "b", "k", "e", 1 << 20, 0),
            key("o", "b2", "k", "e", 1 << 20, 0),
            key("o", "b", "k2", "e", 1 << 20, 0),
            key("o", "b", "k", "e2", 1 << 20, 0),
            key("o", "b", "k", "e", 2 << 20, 0),
            key("o", "b", "k", "e", 1 << 20, 1),
            // Length prefixes keep field boundaries: "ab"+"c" differs from "a"+"bc".
            key("o", "bk", "", "e", 1 << 20, 0),
        ];
        for v in variants {
            assert_ne!(base.path(), v.path(), "{v:?}");
        }
    }

    #[test]
    fn expected_len_handles_tail_and_past_end() {
        let k = |i| key("o", "b", "k", "e", 100, i);
        assert_eq!(k(0).expected_len(250), 100);
        assert_eq!(k(2).expected_len(250), 50);
        assert_eq!(k(3).expected_len(250), 0);
        assert_eq!(k(0).expected_len(0), 0);
    }

    #[test]
    fn tiers_pick_last_reached_bound() {
        let tiers = [
            Tier {
                min_object_size: 1 << 30,
                chunk_size: 64 << 20,
            },
            Tier {
                min_object_size: 10 << 30,
                chunk_size: 128 << 20,
            },
        ];
        assert_eq!(chunk_size_for(100 << 20, 8 << 20, &tiers), 8 << 20);
        assert_eq!(chunk_size_for(1 << 30, 8 << 20, &tiers), 64 << 20);
        assert_eq!(chunk_size_for((10 << 30) - 1, 8 << 20, &tiers), 64 << 20);
        assert_eq!(chunk_size_for(700 << 30, 8 << 20, &tiers), 128 << 20);
        assert_eq!(chunk_size_for(0, 8 << 20, &[]), 8 << 20);
    }

    #[test]
    fn slices_cover_boundaries() {
        assert_eq!(
            slices(90, 210, 100, 250),
            vec![
                ChunkSlice {
                    index: 0,
                    range: 90..100
                },
                ChunkSlice {
                    index: 1,
                    range: 0..100
                },
                ChunkSlice {
                    index: 2,
                    range: 0..11
                },
            ]
        );
        assert_eq!(
            slices(240, 9999, 100, 250),
            vec![ChunkSlice {
                index: 2,
                range: 40..50
            }]
        );
        assert!(slices(250, 260, 100, 250).is_empty());
        assert!(slices(0, 0, 100, 0).is_empty());
    }

    proptest! {
        #[test]
        fn slices_reassemble_the_range(size in 1u64..5000, cs in 1u64..700, a in 0u64..6000, b in 0u64..6000) {
            let (start, end) = (a.min(b), a.max(b));
            let got = slices(start, end, cs, size);
            if start >= size {
                prop_assert!(got.is_empty());
            } else {
                let end = end.min(size - 1);
                let mut pos = start;
                for s in &got {
                    prop_assert_eq!(s.index * cs + s.range.start, pos);
                    prop_assert!(s.range.end <= cs);
                    prop_assert!(s.range.start < s.range.end);
                    pos = s.index * cs + s.range.end;
                }
                prop_assert_eq!(pos, end + 1);
            }
        }
    }
}
