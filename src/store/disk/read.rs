//! Verified reads: a hit is read in pieces of whole blocks, each checked before it goes out.

use super::format::Footer;
use super::index::ChunkId;
use super::{io, DiskStore, Handle, BLOCK, READ_AHEAD, SMALL_CHUNK};
use crate::error::Error;
use crate::model::ByteStream;
use crate::model::ChunkKey;
use crate::store::{range_ok, StoreError};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl DiskStore {
    /// A verified read of `range` of a chunk ([`ChunkStore::get`](crate::store::ChunkStore::get)).
    pub(super) async fn read(
        &self,
        key: &ChunkKey,
        range: Range<u64>,
    ) -> Result<Option<ByteStream>, StoreError> {
        let id = ChunkId::of(key);
        // One lookup per read: each `get` also counts as a use for TinyLFU's frequency sketch.
        let indexed = self.inner.index.get(&id).is_some();
        if !indexed && self.scan_complete() {
            return Ok(None);
        }
        if let Some(bytes) = indexed
            .then(|| self.inner.small.as_ref()?.get(&id))
            .flatten()
        {
            // A small chunk read before: verified then, and immutable (its key pins the
            // version), so it is served from memory.
            if !range_ok(&range, bytes.len() as u64) {
                return Ok(None);
            }
            let part = bytes.slice(range.start as usize..range.end as usize);
            return Ok(Some(futures_util::stream::iter([Ok(part)]).boxed()));
        }
        let small = self.inner.small.clone();
        // Open the file (or reuse it, for a hot chunk) and read and verify the first piece, in
        // one trip to a blocking thread unless the page cache has it. Damage found here is a
        // plain miss, so the chunk is refilled and the response never starts with bad bytes.
        let this = self.clone();
        let id2 = id.clone();
        let r = range.clone();
        let open_and_read = move || {
            let handle = match this.inner.handles.get(&id2) {
                Some(h) => h,
                None => {
                    let Some((f, ft)) = this.open_chunk(&id2)? else {
                        return Ok(None);
                    };
                    let h: Handle = Arc::new((Arc::new(f), Arc::new(ft)));
                    this.inner.handles.insert(id2.clone(), h.clone());
                    h
                }
            };
            let (file, footer) = (&handle.0, &handle.1);
            if !range_ok(&r, footer.data_len) {
                return Ok(None);
            }
            if let Some(m) = small.filter(|_| footer.data_len <= SMALL_CHUNK) {
                // Small: read and verify it whole (at most a few blocks), keep it in memory.
                let whole = read_verified(file, footer, 0, 0..footer.data_len);
                if let Ok(b) = &whole {
                    m.insert(id2.clone(), b.clone());
                }
                let first = whole.map(|b| b.slice(r.start as usize..r.end as usize));
                return Ok(Some((handle.clone(), first)));
            }
            let first = if r.is_empty() {
                Ok(Bytes::new())
            } else {
                let (block, span) = piece(r.start, r.end, footer.data_len);
                read_verified(file, footer, block, span.clone()).map(|b| cut(b, &span, &r))
            };
            Ok(Some((handle.clone(), first)))
        };
        // A hot chunk whose first piece is in the page cache is read right here; anything
        // else goes to a blocking thread.
        let inline = self
            .inner
            .handles
            .get(&id)
            .filter(|h| {
                !range.is_empty()
                    && range_ok(&range, h.1.data_len)
                    && (self.inner.small.is_none() || h.1.data_len > SMALL_CHUNK)
            })
            .and_then(|h| {
                let (block, span) = piece(range.start, range.end, h.1.data_len);
                let first = self.read_inline(&h.0, &h.1, block, span.clone())?;
                Some((h, first.map(|b| cut(b, &span, &range))))
            });
        let opened = match inline {
            Some(hit) => Some(hit),
            None => tokio::task::spawn_blocking(open_and_read)
                .await
                .map_err(|e| StoreError::Io(e.to_string()))??,
        };
        let Some((handle, first)) = opened else {
            return Ok(None);
        };
        let first = match first {
            Ok(b) => b,
            Err(Ok(bad)) => {
                self.drop_corrupt(&id, &format!("checksum mismatch in block {bad}"));
                return Ok(None);
            }
            Err(Err(e)) => {
                self.inner.handles.invalidate(&id);
                tracing::warn!(chunk = ?id, error = %e, "chunk read failed; refilling");
                return Ok(None);
            }
        };
        if !indexed {
            // Found on disk while the start-up scan is still running: adopt it.
            self.inner.index.insert(id.clone(), handle.1.file_size());
        }
        let reader = Reader {
            store: self.clone(),
            id,
            file: handle.0.clone(),
            footer: handle.1.clone(),
            pos: range.start + first.len() as u64,
            end: range.end,
        };
        let rest = futures_util::stream::unfold(reader, |mut r| async move {
            r.next().await.map(|item| (item, r))
        });
        Ok(Some(
            futures_util::stream::iter([Ok(first)]).chain(rest).boxed(),
        ))
    }

    /// Reads and verifies a piece on the calling thread if the page cache holds all of it;
    /// `None` when it must be read on a blocking thread.
    fn read_inline(
        &self,
        f: &File,
        ft: &Footer,
        first: u64,
        span: Range<u64>,
    ) -> Option<Result<Bytes, Result<u64, std::io::Error>>> {
        if !self.inner.nowait.load(Ordering::Relaxed) {
            return None;
        }
        match read_cached(f, span) {
            Cached::Hit(buf) => {
                self.inner.inline_reads.fetch_add(1, Ordering::Relaxed);
                Some(verify(ft, first, buf))
            }
            Cached::Miss => None,
            Cached::Unsupported => {
                self.inner.nowait.store(false, Ordering::Relaxed);
                None
            }
        }
    }

    /// Opens a chunk file and reads its footer; `Ok(None)` when absent or invalid.
    fn open_chunk(&self, id: &ChunkId) -> Result<Option<(File, Footer)>, StoreError> {
        let f = match File::open(self.path(id)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.inner.index.invalidate(id);
                self.inner.handles.invalidate(id);
                self.forget_small(id);
                return Ok(None);
            }
            Err(e) => return Err(io(e)),
        };
        match Footer::read(&f).map_err(io)? {
            Some(ft) => Ok(Some((f, ft))),
            None => {
                self.drop_corrupt(id, "invalid footer");
                Ok(None)
            }
        }
    }
}

/// Reads `want` (whole blocks starting at block `first`) and verifies each block; returns the
/// verified bytes or the index of the first bad block.
fn read_verified(
    f: &File,
    ft: &Footer,
    first: u64,
    want: Range<u64>,
) -> Result<Bytes, Result<u64, std::io::Error>> {
    let mut buf = BytesMut::zeroed((want.end - want.start) as usize);
    f.read_exact_at(&mut buf, want.start).map_err(Err)?;
    verify(ft, first, buf)
}

/// Checks each block of `buf` (whole blocks from block `first`) against the footer's table.
fn verify(ft: &Footer, first: u64, buf: BytesMut) -> Result<Bytes, Result<u64, std::io::Error>> {
    for (i, block) in buf.chunks(BLOCK as usize).enumerate() {
        let b = first + i as u64;
        if ft.crcs.get(b as usize).copied() != Some(crc_fast::crc32_iscsi(block)) {
            return Err(Ok(b));
        }
    }
    Ok(buf.freeze())
}

/// The piece of a read that starts at `pos`: its first block and the whole blocks it spans
/// (at most [`READ_AHEAD`] bytes, never past `end`'s block or the data).
fn piece(pos: u64, end: u64, data_len: u64) -> (u64, Range<u64>) {
    let block = pos / BLOCK;
    let lo = block * BLOCK;
    let hi = (lo + READ_AHEAD)
        .min(end.div_ceil(BLOCK) * BLOCK)
        .min(data_len);
    (block, lo..hi)
}

/// The bytes of `want` in `buf`, which holds `span` (a piece starting at or before
/// `want.start`).
fn cut(buf: Bytes, span: &Range<u64>, want: &Range<u64>) -> Bytes {
    let s = (want.start - span.start) as usize;
    let e = (want.end.min(span.end) - span.start) as usize;
    buf.slice(s..e)
}

/// What a read that must not wait for the device found.
enum Cached {
    /// All of it was in the page cache: the bytes, not yet verified.
    Hit(BytesMut),
    /// Some of it would have to come from the device (or the read failed): read it on a
    /// blocking thread instead.
    Miss,
    /// This file system cannot say (no `RWF_NOWAIT`): do not ask again.
    Unsupported,
}

/// Reads `want` on the calling thread only if the page cache holds all of it (Linux
/// `preadv2(RWF_NOWAIT)`). A warm chunk is then served without a trip to a blocking thread
/// per piece, and into memory nobody zeroed first: the zeroing and the hop together cost the
/// disk store about a third more CPU per warm GET than the memory store.
#[cfg(target_os = "linux")]
fn read_cached(f: &File, want: Range<u64>) -> Cached {
    use std::os::fd::AsRawFd;
    let len = (want.end - want.start) as usize;
    let mut buf = BytesMut::with_capacity(len);
    let spare = buf.spare_capacity_mut();
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: len,
    };
    // SAFETY: `iov` describes `len` bytes of `buf`'s spare capacity, which `buf` owns and
    // keeps alive (and does not move) for the call; the kernel writes at most `len` bytes
    // there and reads nothing from it. `f` is an open file for the whole call.
    let n = unsafe {
        libc::preadv2(
            f.as_raw_fd(),
            &iov,
            1,
            want.start as libc::off_t,
            libc::RWF_NOWAIT,
        )
    };
    if n == len as isize {
        // SAFETY: the kernel initialised exactly the first `n == len` bytes of the spare
        // capacity, and `len` is within the capacity asked for above.
        unsafe { buf.set_len(len) };
        return Cached::Hit(buf);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) if n < 0 => {
            Cached::Unsupported
        }
        _ => Cached::Miss,
    }
}

#[cfg(not(target_os = "linux"))]
fn read_cached(_: &File, _: Range<u64>) -> Cached {
    Cached::Unsupported
}

struct Reader {
    store: DiskStore,
    id: ChunkId,
    file: Arc<File>,
    footer: Arc<Footer>,
    /// Next byte of the range to send, and the range end.
    pos: u64,
    end: u64,
}

impl Reader {
    /// The next verified piece: whole blocks read, then cut to the range.
    async fn next(&mut self) -> Option<Result<Bytes, Error>> {
        if self.pos >= self.end {
            return None;
        }
        let (first, span) = piece(self.pos, self.end, self.footer.data_len);
        let (lo, hi) = (span.start, span.end);
        let res = match self
            .store
            .read_inline(&self.file, &self.footer, first, span)
        {
            Some(r) => Ok(r),
            None => {
                let (f, ft) = (self.file.clone(), self.footer.clone());
                tokio::task::spawn_blocking(move || read_verified(&f, &ft, first, lo..hi)).await
            }
        };
        match res {
            Ok(Ok(buf)) => {
                let part = cut(buf, &(lo..hi), &(self.pos..self.end));
                self.pos = self.end.min(hi);
                Some(Ok(part))
            }
            Ok(Err(Ok(bad))) => {
                self.store
                    .drop_corrupt(&self.id, &format!("checksum mismatch in block {bad}"));
                self.pos = self.end;
                Some(Err(Error::Store("chunk failed its checksum".into())))
            }
            Ok(Err(Err(e))) => {
                self.pos = self.end;
                Some(Err(Error::Store(format!("chunk read: {e}").into())))
            }
            Err(e) => {
                self.pos = self.end;
                Some(Err(Error::internal(format!("disk read task: {e}"))))
            }
        }
    }
}
