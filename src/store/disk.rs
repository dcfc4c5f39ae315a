//! The disk store: one file per chunk, committed atomically, verified as it is read.
//!
//! **Layout.** A chunk lives at `store.path/<origin_id>/<hash>/<index>`, the chunk path of
//! SPEC §2. File names come from the hash, never from the object key, so no key — however
//! hostile — can name a file outside the store.
//!
//! **Format.** `data ‖ crc32c of each 64 KiB block (LE u32 each) ‖ footer`, the footer being
//! `magic "SHOALCK1" ‖ data_len u64 ‖ block_size u32 ‖ block_count u32 ‖ crc32c(table) u32 ‖
//! reserved u32` (32 bytes). Checksums go at the end so a chunk is written in one forward
//! pass while it streams from the origin. Per-block checksums let a ranged read verify only
//! the blocks it touches, and let a full read verify each block just before it goes out, so
//! nothing is ever sent that has not been checked, and nothing needs the whole chunk in memory.
//!
//! **Reads.** A hit is read in pieces of up to 1 MiB of whole blocks. Each piece is first
//! asked of the page cache on the runtime thread itself (`preadv2` with `RWF_NOWAIT`, into
//! memory nobody zeroed); only a piece that would wait for the device goes to a blocking
//! thread. A warm chunk thus costs no thread hop per piece, which made the disk store's
//! warm 256 MiB GET ~30–40% faster and about as fast as the memory store's.
//!
//! **Commit.** Bytes go to `.tmp-<instance>-<index>-<n>` in the chunk's own directory; on commit the
//! footer is written, the file fsynced, renamed to its final name, and the directory fsynced.
//! A reader (or a restart after a crash at any point) sees either no chunk or a complete one.
//! Temp files left by a crash are removed by the start-up scan.
//!
//! **Eviction.** The index is a moka cache weighted by file size: W-TinyLFU, i.e. a frequency
//! sketch decides admission and LRU decides eviction. For a cache of large immutable objects
//! read by many clients this matters: a one-off scan of a huge dataset would flush every hot
//! model file out of a plain LRU, while TinyLFU only admits a new chunk over a victim that was
//! used less often. Evicting a chunk unlinks its file; a reader that already has it open keeps
//! reading the (now nameless) inode undisturbed, so eviction never breaks a reader. Unlinking
//! a large file can take milliseconds, so it never runs on a runtime thread: evictions,
//! corrupt chunks and abandoned temp files are handed to one `shoal-disk-unlink` thread.
//!
//! **Admission.** TinyLFU can decline a chunk that was just written: when the store is full of
//! chunks read more often than this one, keeping it would evict something hotter. That is
//! deliberate (it is what makes the store scan-resistant); the commit reports
//! [`Committed::Refused`], the file is unlinked, the `refused` counter goes up, and the chunk's
//! readers are served from the fill's buffer.
//!
//! **Restart.** The index is rebuilt by a background scan. The store is usable at once:
//! until the scan ends, a lookup that the index does not know opens the chunk's file directly
//! (its path follows from the key) and adopts it.

use super::{range_ok, ChunkStore, ChunkWriter, Committed, StoreError, StoreStats};
use crate::chunk::ChunkKey;
use crate::error::Error;
use crate::origin::ByteStream;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"SHOALCK1";
const FOOTER: u64 = 32;
/// Checksum granularity: small enough that a 4 KiB ranged read verifies little extra, large
/// enough that the table of a 128 MiB chunk is only 8 KiB.
pub const BLOCK: u64 = 64 << 10;
/// Bytes read per disk request on the hit path (whole blocks).
const READ_AHEAD: u64 = 16 * BLOCK;
/// Chunks up to this size (small objects, the tails of large ones) are also kept in memory
/// once read, when the store has a small-chunk memory ([`DiskStore::open_with`]).
pub const SMALL_CHUNK: u64 = 4 * BLOCK;

/// A chunk's identity as the disk knows it: its store path. The index is keyed by this rather
/// than by [`ChunkKey`] because the start-up scan can recover paths, not bucket/key/ETag.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct ChunkId {
    origin: Arc<str>,
    hash: Arc<str>,
    index: u64,
}

impl ChunkId {
    fn of(key: &ChunkKey) -> Self {
        ChunkId {
            origin: key.origin_id.clone(),
            hash: key.object_hash().into(),
            index: key.index,
        }
    }

    fn rel_path(&self) -> PathBuf {
        PathBuf::from(&*self.origin)
            .join(&*self.hash)
            .join(self.index.to_string())
    }
}

/// Work for the unlink thread.
enum Unlink {
    /// A chunk file, unless the chunk was committed again meanwhile.
    Chunk(ChunkId),
    /// A temp file of a writer that did not commit.
    Temp(PathBuf),
}

/// An open chunk file and its footer, kept between reads of hot chunks.
type Handle = Arc<(Arc<File>, Arc<Footer>)>;

/// How many chunk files stay open for reuse. A hit on a small object then costs one blocking
/// read and no `open` or footer read; files evicted from the index are let go at once, so
/// their space is freed.
const OPEN_FILES: u64 = 256;

struct Inner {
    root: PathBuf,
    index: moka::sync::Cache<ChunkId, u64>,
    /// Open files of recently read chunks.
    handles: moka::sync::Cache<ChunkId, Handle>,
    /// Verified bytes of recently read small chunks (`store.small_chunk_memory`), so that a
    /// hot small object costs no trip to a blocking thread; `None` when off.
    small: Option<moka::sync::Cache<ChunkId, Bytes>>,
    scanning: AtomicBool,
    /// Whether reads may first try the page cache on the calling thread ([`read_cached`]);
    /// cleared for good when the file system cannot.
    nowait: AtomicBool,
    /// Pieces served that way (the tests check the path is taken).
    inline_reads: AtomicU64,
    corrupt: AtomicU64,
    failed_commits: AtomicU64,
    refused: AtomicU64,
    /// Removals for size, refused admissions included (subtracted when counted).
    sized_out: Arc<AtomicU64>,
    nonce: AtomicU64,
    unlink: std::sync::mpsc::Sender<Unlink>,
    /// Names this opening of the store in its temp files, so the start-up scan removes the
    /// temp files of earlier runs (crashes) but never those of fills already running now.
    instance: String,
}

/// Chunks as files under a directory, bounded by `capacity` bytes. See the module docs.
#[derive(Clone)]
pub struct DiskStore {
    inner: Arc<Inner>,
}

fn io(e: std::io::Error) -> StoreError {
    if e.raw_os_error() == Some(28) {
        StoreError::Full(e.to_string())
    } else {
        StoreError::Io(e.to_string())
    }
}

/// A tag unique to this opening of the store (process id, time, and hasher randomness).
fn instance_tag() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", h.finish())
}

struct Footer {
    data_len: u64,
    crcs: Vec<u32>,
}

impl Footer {
    fn encode(data_len: u64, crcs: &[u32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(crcs.len() * 4 + FOOTER as usize);
        for c in crcs {
            out.extend_from_slice(&c.to_le_bytes());
        }
        let table_crc = crc_fast::crc32_iscsi(&out);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&data_len.to_le_bytes());
        out.extend_from_slice(&(BLOCK as u32).to_le_bytes());
        out.extend_from_slice(&(crcs.len() as u32).to_le_bytes());
        out.extend_from_slice(&table_crc.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out
    }

    /// Reads and checks the footer and checksum table; `None` if the file is not a valid chunk.
    fn read(f: &File) -> std::io::Result<Option<Footer>> {
        let size = f.metadata()?.len();
        if size < FOOTER {
            return Ok(None);
        }
        let mut ft = [0u8; FOOTER as usize];
        f.read_exact_at(&mut ft, size - FOOTER)?;
        if &ft[..8] != MAGIC {
            return Ok(None);
        }
        let le64 = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        let le32 = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or([0; 4]));
        let data_len = le64(&ft[8..16]);
        let block = le32(&ft[16..20]) as u64;
        let n = le32(&ft[20..24]) as u64;
        let table_crc = le32(&ft[24..28]);
        if block != BLOCK || n != data_len.div_ceil(BLOCK) || data_len + n * 4 + FOOTER != size {
            return Ok(None);
        }
        let mut table = vec![0u8; (n * 4) as usize];
        f.read_exact_at(&mut table, data_len)?;
        if crc_fast::crc32_iscsi(&table) != table_crc {
            return Ok(None);
        }
        let crcs = table.chunks_exact(4).map(le32).collect();
        Ok(Some(Footer { data_len, crcs }))
    }

    /// Size of the whole chunk file: data, checksum table and footer (the index weight).
    fn file_size(&self) -> u64 {
        self.data_len + self.crcs.len() as u64 * 4 + FOOTER
    }
}

impl DiskStore {
    /// Opens (or creates) a store at `root` holding at most `capacity` bytes of chunk files,
    /// and starts the background scan that rebuilds the index.
    pub fn open(root: impl Into<PathBuf>, capacity: u64) -> Result<Self, StoreError> {
        Self::open_with(root, capacity, 0)
    }

    /// As [`open`](Self::open), also keeping up to `small_memory` bytes (at most `capacity`:
    /// they are copies of chunks on disk) of small chunks (at most 256 KiB each) in memory
    /// once read. A hit on a small object is then a
    /// memory read: a disk read of a few KiB costs a trip to a blocking thread and a syscall,
    /// many times the cost of the copy itself, and small objects are exactly the requests
    /// where that overhead is the whole price.
    pub fn open_with(
        root: impl Into<PathBuf>,
        capacity: u64,
        small_memory: u64,
    ) -> Result<Self, StoreError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(io)?;
        let probe = root.join(".shoal-write-probe");
        std::fs::write(&probe, b"ok").map_err(io)?;
        let _ = std::fs::remove_file(&probe);
        let (unlink, todo) = std::sync::mpsc::channel::<Unlink>();
        let evicted = unlink.clone();
        let sized_out: Arc<AtomicU64> = Arc::default();
        let counted = sized_out.clone();
        let handles: moka::sync::Cache<ChunkId, Handle> = moka::sync::Cache::builder()
            .max_capacity(OPEN_FILES)
            .build();
        let open = handles.clone();
        let small_memory = small_memory.min(capacity);
        let small = (small_memory > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(small_memory)
                .weigher(|_k: &ChunkId, b: &Bytes| u32::try_from(b.len()).unwrap_or(u32::MAX))
                .build()
        });
        let small_gone = small.clone();
        let index = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .weigher(|_k: &ChunkId, size: &u64| u32::try_from(*size).unwrap_or(u32::MAX))
            .eviction_listener(move |k: Arc<ChunkId>, _v, cause| {
                use moka::notification::RemovalCause;
                // Replaced: the same file was committed again. Explicit: the caller removed it
                // (and the file) itself. Size covers evictions and refused admissions.
                if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                    counted.fetch_add(1, Ordering::Relaxed);
                    // Let the file go, so that unlinking it frees its space.
                    open.invalidate(&*k);
                    open.run_pending_tasks();
                    if let Some(m) = &small_gone {
                        m.invalidate(&*k);
                    }
                    let _ = evicted.send(Unlink::Chunk((*k).clone()));
                }
            })
            .build();
        let store = DiskStore {
            inner: Arc::new(Inner {
                root,
                index,
                handles,
                small,
                scanning: AtomicBool::new(true),
                nowait: AtomicBool::new(true),
                inline_reads: AtomicU64::new(0),
                corrupt: AtomicU64::new(0),
                failed_commits: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                sized_out,
                nonce: AtomicU64::new(0),
                unlink,
                instance: instance_tag(),
            }),
        };
        let weak = Arc::downgrade(&store.inner);
        let root = store.inner.root.clone();
        std::thread::Builder::new()
            .name("shoal-disk-unlink".into())
            // Ends when the store (the last sender) is dropped.
            .spawn(move || {
                for job in todo {
                    match job {
                        Unlink::Chunk(id) => {
                            let again = weak.upgrade().is_some_and(|i| i.index.contains_key(&id));
                            if !again {
                                let _ = std::fs::remove_file(root.join(id.rel_path()));
                            }
                        }
                        Unlink::Temp(p) => {
                            let _ = std::fs::remove_file(p);
                        }
                    }
                }
            })
            .map_err(io)?;
        let s = store.clone();
        std::thread::Builder::new()
            .name("shoal-disk-scan".into())
            .spawn(move || s.scan())
            .map_err(io)?;
        Ok(store)
    }

    /// Whether the start-up scan has finished.
    pub fn scan_complete(&self) -> bool {
        !self.inner.scanning.load(Ordering::Acquire)
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        self.inner.root.join(id.rel_path())
    }

    /// Walks `root/<origin>/<hash>/<file>`: removes temp files and invalid chunks, indexes the
    /// rest. Runs on its own thread; the store serves while it runs.
    fn scan(&self) {
        let started = std::time::Instant::now();
        let mut found = 0u64;
        let own_tmp = format!(".tmp-{}-", self.inner.instance);
        let dirs = |p: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        for origin_dir in dirs(&self.inner.root) {
            let Some(origin_id) = origin_dir
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_owned)
            else {
                continue;
            };
            // Dot-directories are not origins (a cluster's `.hot` cache lives there).
            if !origin_dir.is_dir() || origin_id.starts_with('.') {
                continue;
            }

            for obj_dir in dirs(&origin_dir) {
                let Some(hash) = obj_dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned)
                else {
                    continue;
                };
                for f in dirs(&obj_dir) {
                    let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    if name.starts_with(".tmp-") && !name.starts_with(&own_tmp) {
                        let _ = std::fs::remove_file(&f);
                        continue;
                    }
                    let Ok(index) = name.parse::<u64>() else {
                        continue;
                    };
                    match File::open(&f).and_then(|fh| Footer::read(&fh)) {
                        Ok(Some(footer)) => {
                            let id = ChunkId {
                                origin: origin_id.as_str().into(),
                                hash: hash.as_str().into(),
                                index,
                            };
                            if !self.inner.index.contains_key(&id) {
                                self.inner.index.insert(id, footer.file_size());
                            }
                            found += 1;
                        }
                        _ => {
                            let _ = std::fs::remove_file(&f);
                        }
                    }
                }
                let _ = std::fs::remove_dir(&obj_dir); // only succeeds when empty
            }
        }
        self.inner.index.run_pending_tasks();
        self.inner.scanning.store(false, Ordering::Release);
        tracing::info!(
            chunks = found,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "disk store index rebuilt"
        );
    }

    fn drop_corrupt(&self, id: &ChunkId, why: &str) {
        self.inner.corrupt.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(chunk = ?id, why, "corrupt chunk dropped; it will be refilled");
        self.inner.index.invalidate(id);
        self.inner.handles.invalidate(id);
        self.forget_small(id);
        let _ = self.inner.unlink.send(Unlink::Chunk(id.clone()));
    }

    fn forget_small(&self, id: &ChunkId) {
        if let Some(m) = &self.inner.small {
            m.invalidate(id);
        }
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

#[async_trait]
impl ChunkStore for DiskStore {
    async fn get(
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

    async fn begin(&self, key: &ChunkKey, len: u64) -> Result<Box<dyn ChunkWriter>, StoreError> {
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
        Ok(Box::new(DiskWriter {
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
        }))
    }

    fn contains(&self, key: &ChunkKey) -> bool {
        let id = ChunkId::of(key);
        // Until the start-up scan has indexed everything, a chunk from before the restart may
        // only be on disk: its path follows from the key, so one stat answers (start-up only).
        self.inner.index.contains_key(&id) || (!self.scan_complete() && self.path(&id).is_file())
    }

    fn wanted(&self, key: &ChunkKey) {
        // A lookup, hit or miss, is what moka's frequency sketch counts.
        let _ = self.inner.index.get(&ChunkId::of(key));
    }

    fn stats(&self) -> StoreStats {
        self.inner.index.run_pending_tasks();
        StoreStats {
            used_bytes: self.inner.index.weighted_size(),
            chunks: self.inner.index.entry_count(),
            corrupt: self.inner.corrupt.load(Ordering::Relaxed),
            failed_commits: self.inner.failed_commits.load(Ordering::Relaxed),
            refused: self.inner.refused.load(Ordering::Relaxed),
            evictions: self
                .inner
                .sized_out
                .load(Ordering::Relaxed)
                .saturating_sub(self.inner.refused.load(Ordering::Relaxed)),
        }
    }
}

struct DiskWriter {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the start-up scan runs while the store already serves, and it used to
    /// delete the temp file of a fill in progress, so that fill's commit failed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_scan_leaves_running_fills_alone() {
        let dir = tempfile::tempdir().unwrap();
        let s = DiskStore::open(dir.path(), 1 << 30).unwrap();
        let key = ChunkKey {
            index: 3,
            ..key("k")
        };
        let mut w = s.begin(&key, 10).await.unwrap();
        w.write(Bytes::from_static(b"01234")).await.unwrap();
        // A scan now (as one running at start-up would be) must not take the temp file.
        let s2 = s.clone();
        tokio::task::spawn_blocking(move || s2.scan())
            .await
            .unwrap();
        w.write(Bytes::from_static(b"56789")).await.unwrap();
        w.commit().await.expect("commit after a scan");
        let mut got = Vec::new();
        let mut st = s.get(&key, 0..10).await.unwrap().expect("committed");
        while let Some(b) = st.next().await {
            got.extend_from_slice(&b.unwrap());
        }
        assert_eq!(got, b"0123456789");
        // A temp file of another (crashed) run is removed by the scan.
        let stale = dir
            .path()
            .join(ChunkId::of(&key).rel_path())
            .with_file_name(".tmp-deadbeef-3-0");
        std::fs::write(&stale, b"partial").unwrap();
        let s3 = s.clone();
        tokio::task::spawn_blocking(move || s3.scan())
            .await
            .unwrap();
        assert!(!stale.exists());
    }

    fn key(name: &str) -> ChunkKey {
        ChunkKey {
            origin_id: "o".into(),
            bucket: "b".into(),
            key: name.into(),
            etag: "e".into(),
            chunk_size: 1 << 20,
            index: 0,
        }
    }

    async fn put(s: &DiskStore, k: &ChunkKey, data: &[u8]) {
        let mut w = s.begin(k, data.len() as u64).await.unwrap();
        w.write(Bytes::copy_from_slice(data)).await.unwrap();
        w.commit().await.unwrap();
    }

    async fn read(s: &DiskStore, k: &ChunkKey, r: Range<u64>) -> Option<Vec<u8>> {
        let mut st = s.get(k, r).await.unwrap()?;
        let mut got = Vec::new();
        while let Some(b) = st.next().await {
            got.extend_from_slice(&b.ok()?);
        }
        Some(got)
    }

    /// Flips a byte of a committed chunk's data in place (the open file sees it too).
    fn damage(s: &DiskStore, k: &ChunkKey) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(s.path(&ChunkId::of(k)))
            .unwrap();
        f.write_all_at(b"\xff\x00\xff", 5).unwrap();
    }

    /// A small chunk, once read and verified, is served from memory: damage on disk after
    /// that is never seen (the bytes served are the verified ones), while a large chunk is
    /// read from disk every time, so the same damage is caught and the read is a miss.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_chunks_are_served_from_memory_once_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = DiskStore::open_with(dir.path(), 1 << 30, 1 << 20).unwrap();
        let small: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let large: Vec<u8> = (0..SMALL_CHUNK as u32 + 1).map(|i| (i * 3) as u8).collect();
        let (ks, kl) = (key("small"), key("large"));
        put(&s, &ks, &small).await;
        put(&s, &kl, &large).await;
        assert_eq!(read(&s, &ks, 100..200).await.unwrap(), small[100..200]);
        assert_eq!(read(&s, &kl, 0..large.len() as u64).await.unwrap(), large);
        damage(&s, &ks);
        damage(&s, &kl);
        assert_eq!(read(&s, &ks, 0..10_000).await.unwrap(), small);
        assert_eq!(read(&s, &ks, 9_990..10_000).await.unwrap(), small[9_990..]);
        assert_eq!(read(&s, &ks, 0..0).await.unwrap(), b"");
        assert!(read(&s, &ks, 0..10_001).await.is_none(), "past the end");
        assert!(
            read(&s, &kl, 0..100).await.is_none(),
            "large: damage caught"
        );
        assert_eq!(s.stats().corrupt, 1);

        // Without the small-chunk memory the small chunk's damage is caught too.
        let dir = tempfile::tempdir().unwrap();
        let s = DiskStore::open(dir.path(), 1 << 30).unwrap();
        put(&s, &ks, &small).await;
        assert_eq!(read(&s, &ks, 0..10_000).await.unwrap(), small);
        damage(&s, &ks);
        assert!(read(&s, &ks, 0..10_000).await.is_none());
    }

    /// A warm large chunk is read from the page cache on the calling thread, piece by piece,
    /// and still verified: the bytes are exact for any range, damage in a later piece ends
    /// the stream with an error, and with the page-cache path off (a file system without
    /// `RWF_NOWAIT`) the same reads go through blocking threads with the same results.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn warm_pieces_are_read_in_place_and_still_verified() {
        let dir = tempfile::tempdir().unwrap();
        let s = DiskStore::open(dir.path(), 1 << 30).unwrap();
        // Three and a bit pieces.
        let len = 3 * READ_AHEAD + 5_000;
        let data: Vec<u8> = (0..len).map(|i| (i * 13 + i / 7) as u8).collect();
        let k = key("large");
        put(&s, &k, &data).await;
        for nowait in [true, false] {
            s.inner.nowait.store(nowait, Ordering::Relaxed);
            let before = s.inner.inline_reads.load(Ordering::Relaxed);
            for r in [
                0..len,
                1..len - 1,
                READ_AHEAD - 1..2 * READ_AHEAD + 1,
                len - 10..len,
                BLOCK + 3..BLOCK + 4,
            ] {
                let got = read(&s, &k, r.clone()).await.expect("hit");
                assert!(got == data[r.start as usize..r.end as usize], "{r:?}");
            }
            let inline = s.inner.inline_reads.load(Ordering::Relaxed) - before;
            if nowait {
                // Every piece (4 + 4 + 2 + 1 + 1) but the first read's first, read where the
                // file is opened. The file was just written, so all of it is in the page cache.
                assert_eq!(inline, 11);
            } else {
                assert_eq!(inline, 0);
            }
        }
        s.inner.nowait.store(true, Ordering::Relaxed);
        // Damage in the third piece: the first two pieces go out, then the stream fails.
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(s.path(&ChunkId::of(&k)))
                .unwrap();
            f.write_all_at(b"\x00\xff", 2 * READ_AHEAD + 100).unwrap();
        }
        let before = s.inner.inline_reads.load(Ordering::Relaxed);
        let mut st = s
            .get(&k, 0..len)
            .await
            .unwrap()
            .expect("first piece is fine");
        let mut good = 0;
        let mut failed = false;
        while let Some(b) = st.next().await {
            match b {
                Ok(b) => good += b.len() as u64,
                Err(_) => failed = true,
            }
        }
        assert!(failed, "damage in a later piece must fail the stream");
        assert_eq!(good, 2 * READ_AHEAD);
        assert_eq!(s.inner.inline_reads.load(Ordering::Relaxed) - before, 3);
        assert_eq!(s.stats().corrupt, 1);
    }

    /// The memory copy goes with its chunk: once the chunk is evicted from the store, the
    /// store no longer answers for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_chunk_leaves_memory_when_it_leaves_the_store() {
        let dir = tempfile::tempdir().unwrap();
        // Room for about three 10 KB chunk files.
        let s = DiskStore::open_with(dir.path(), 32_000, 1 << 20).unwrap();
        let data = vec![9u8; 10_000];
        let first = key("first");
        put(&s, &first, &data).await;
        assert_eq!(read(&s, &first, 0..10_000).await.unwrap(), data);
        let id = ChunkId::of(&first);
        assert!(s.inner.small.as_ref().unwrap().contains_key(&id));
        // Newer chunks, each asked for often, push it out (TinyLFU admits them over it).
        for n in 0..8 {
            let k = key(&format!("hot{n}"));
            for _ in 0..5 {
                let _ = s.get(&k, 0..1).await;
            }
            put(&s, &k, &data).await;
            s.inner.index.run_pending_tasks();
            if !s.inner.index.contains_key(&id) {
                break;
            }
        }
        assert!(
            !s.inner.index.contains_key(&id),
            "the chunk was never evicted"
        );
        s.inner.small.as_ref().unwrap().run_pending_tasks();
        assert!(!s.inner.small.as_ref().unwrap().contains_key(&id));
        assert!(read(&s, &first, 0..10_000).await.is_none());
    }

    /// The format's checksum is CRC-32C (Castagnoli), whichever crate computes it: chunk
    /// files written by earlier versions stay valid. A block written in odd-sized pieces gets
    /// the checksum of the whole block.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocks_carry_crc32c() {
        assert_eq!(crc_fast::crc32_iscsi(b"123456789"), 0xe306_9283);
        let dir = tempfile::tempdir().unwrap();
        let s = DiskStore::open(dir.path(), 1 << 30).unwrap();
        let data: Vec<u8> = (0..BLOCK as usize * 2 + 99)
            .map(|i| (i % 251) as u8)
            .collect();
        let k = key("pieces");
        let mut w = s.begin(&k, data.len() as u64).await.unwrap();
        for piece in data.chunks(7_777) {
            w.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        w.commit().await.unwrap();
        let ft = Footer::read(&File::open(s.path(&ChunkId::of(&k))).unwrap())
            .unwrap()
            .unwrap();
        let want: Vec<u32> = data
            .chunks(BLOCK as usize)
            .map(crc_fast::crc32_iscsi)
            .collect();
        assert_eq!(ft.crcs, want);
    }

    #[test]
    fn footer_round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        let data = vec![7u8; (BLOCK + 10) as usize];
        let crcs = vec![
            crc_fast::crc32_iscsi(&data[..BLOCK as usize]),
            crc_fast::crc32_iscsi(&data[BLOCK as usize..]),
        ];
        let mut bytes = data.clone();
        bytes.extend_from_slice(&Footer::encode(data.len() as u64, &crcs));
        std::fs::write(&p, &bytes).unwrap();
        let ft = Footer::read(&File::open(&p).unwrap()).unwrap().unwrap();
        assert_eq!(ft.data_len, data.len() as u64);
        assert_eq!(ft.crcs, crcs);
        // A truncated file is not a chunk.
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert!(Footer::read(&File::open(&p).unwrap()).unwrap().is_none());
        // A damaged table is not a chunk.
        let mut bad = bytes.clone();
        bad[data.len()] ^= 1;
        std::fs::write(&p, &bad).unwrap();
        assert!(Footer::read(&File::open(&p).unwrap()).unwrap().is_none());
    }
}
