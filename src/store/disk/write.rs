//! Atomic commits: a temp file in the chunk's directory, its footer, fsync, rename.

use super::format::Footer;
use super::index::{ChunkId, Unlink};
use super::{io, DiskStore, BLOCK, READ_AHEAD};
use crate::model::ChunkKey;
use crate::store::{ChunkWriter, Committed, StoreError};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

impl DiskStore {
    /// A writer of chunk `key` (`len` bytes) into a new temp file.
    pub(super) async fn writer(&self, key: &ChunkKey, len: u64) -> Result<DiskWriter, StoreError> {
        let id = ChunkId::of(key);
        let dir = self
            .path(&id)
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| StoreError::Io("bad chunk path".into()))?;
        let nonce = self.inner.nonce.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".tmp-{}-{}-{nonce}",
            self.inner.instance, key.index
        ));
        let t2 = tmp.clone();
        let file = tokio::task::spawn_blocking(move || -> std::io::Result<File> {
            let create = || {
                std::fs::create_dir_all(&dir)?;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&t2)
            };
            // The start-up scan removes empty chunk directories; if it removed this one
            // between the two calls above, make it again.
            match create() {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(),
                other => other,
            }
        })
        .await
        .map_err(|e| StoreError::Io(e.to_string()))?
        .map_err(io)?;
        Ok(DiskWriter {
            store: self.clone(),
            id,
            tmp,
            committed: false,
            file: Some(file),
            promised: len,
            written: 0,
            buf: BytesMut::with_capacity(READ_AHEAD as usize),
            crcs: Vec::with_capacity(len.div_ceil(BLOCK) as usize),
            block_crc: crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi),
            block_fill: 0,
        })
    }
}

pub(super) struct DiskWriter {
    store: DiskStore,
    id: ChunkId,
    tmp: PathBuf,
    /// Renamed into place: there is no temp file left to remove.
    committed: bool,
    file: Option<File>,
    promised: u64,
    written: u64,
    buf: BytesMut,
    crcs: Vec<u32>,
    /// The CRC32C of the block being written so far.
    block_crc: crc_fast::Digest,
    block_fill: u64,
}

impl DiskWriter {
    fn checksum(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            let n = ((BLOCK - self.block_fill) as usize).min(b.len());
            self.block_crc.update(&b[..n]);
            self.block_fill += n as u64;
            b = &b[n..];
            if self.block_fill == BLOCK {
                self.crcs.push(self.block_crc.finalize_reset() as u32);
                self.block_fill = 0;
            }
        }
    }

    async fn flush(&mut self) -> Result<(), StoreError> {
        let data = self.buf.split().freeze();
        let Some(file) = self.file.take() else {
            return Err(StoreError::Io("writer already failed".into()));
        };
        let (file, res) = tokio::task::spawn_blocking(move || {
            let mut f = file;
            let r = f.write_all(&data);
            (f, r)
        })
        .await
        .map_err(|e| StoreError::Io(e.to_string()))?;
        res.map_err(io)?;
        self.file = Some(file);
        Ok(())
    }
}

#[async_trait]
impl ChunkWriter for DiskWriter {
    async fn write(&mut self, bytes: Bytes) -> Result<(), StoreError> {
        if self.written + bytes.len() as u64 > self.promised {
            return Err(StoreError::Length {
                wrote: self.written + bytes.len() as u64,
                promised: self.promised,
            });
        }
        self.checksum(&bytes);
        self.written += bytes.len() as u64;
        self.buf.extend_from_slice(&bytes);
        if self.buf.len() as u64 >= READ_AHEAD {
            if let Err(e) = self.flush().await {
                // This chunk will never commit: count it with the failed commits.
                self.store
                    .inner
                    .failed_commits
                    .fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<Committed, StoreError> {
        let result = async {
            if self.written != self.promised {
                return Err(StoreError::Length {
                    wrote: self.written,
                    promised: self.promised,
                });
            }
            if self.block_fill > 0 {
                self.crcs.push(self.block_crc.finalize_reset() as u32);
                self.block_fill = 0;
            }
            let footer = Footer::encode(self.written, &self.crcs);
            self.buf.extend_from_slice(&footer);
            self.flush().await?;
            let file = self
                .file
                .take()
                .ok_or_else(|| StoreError::Io("no file".into()))?;
            let (tmp, fin) = (self.tmp.clone(), self.store.path(&self.id));
            let size = self.written + footer.len() as u64;
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                file.sync_all()?;
                drop(file);
                std::fs::rename(&tmp, &fin)?;
                if let Some(dir) = fin.parent() {
                    File::open(dir)?.sync_all()?;
                }
                Ok(())
            })
            .await
            .map_err(|e| StoreError::Io(e.to_string()))?
            .map_err(io)?;
            self.committed = true;
            // A file kept open for this chunk is an older copy now (same bytes, old inode).
            self.store.inner.handles.invalidate(&self.id);
            let index = &self.store.inner.index;
            index.insert(self.id.clone(), size);
            // Evict (and decide admission) now, so the bound holds when commit returns.
            index.run_pending_tasks();
            if index.contains_key(&self.id) {
                Ok(Committed::Kept)
            } else {
                // Declined by TinyLFU; the eviction listener has queued the file's unlink.
                self.store.inner.refused.fetch_add(1, Ordering::Relaxed);
                Ok(Committed::Refused)
            }
        }
        .await;
        if result.is_err() {
            self.store
                .inner
                .failed_commits
                .fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl Drop for DiskWriter {
    fn drop(&mut self) {
        // Not committed (or the commit failed before the rename): remove the temp file, on the
        // unlink thread (a drop may run on a runtime thread).
        if !self.committed {
            let _ = self
                .store
                .inner
                .unlink
                .send(Unlink::Temp(std::mem::take(&mut self.tmp)));
        }
    }
}
