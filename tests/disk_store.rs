//! The disk store: crash safety, integrity, bounds and restarts, through Shoal and a real
//! S3 origin (Garage) where the read path is involved.

mod common;

use bytes::Bytes;
use common::faulty::Faulty;
use common::*;
use shoal::config::{ByteSize, Config, StoreKind};
use shoal::store::{ChunkStore, DiskStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const MIB: usize = 1 << 20;

fn disk_config(path: &Path, capacity: u64) -> Config {
    let mut cfg = config(garage());
    cfg.store.kind = StoreKind::Disk;
    cfg.store.path = Some(path.to_owned());
    cfg.store.capacity = ByteSize(capacity);
    cfg
}

fn files(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(files(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn du(p: &Path) -> u64 {
    files(p)
        .iter()
        .filter_map(|f| f.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn chunk_file(store: &Path, index: u64) -> PathBuf {
    files(store)
        .into_iter()
        .find(|f| f.file_name().and_then(|n| n.to_str()) == Some(&index.to_string()))
        .expect("chunk file")
}

fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, offset).unwrap();
}

/// GETs `path` and waits for the fills behind it to commit (or fail), so that what is on
/// disk afterwards is settled.
async fn get_all(s: &Shoal, path: &str) -> (u16, Vec<u8>) {
    let r = s.get(path).await;
    let st = r.status().as_u16();
    let body = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    assert!(
        s.running.fills_settled(Duration::from_secs(10)).await,
        "fills did not settle"
    );
    (st, body)
}

/// Helper process for `a_crash_mid_write_leaves_no_visible_chunk`: when started by that test
/// (SHOAL_CRASH_DIR set) it writes part of a chunk and aborts like a `kill -9` would: no
/// destructor, no cleanup. Run normally it has nothing to do.
#[test]
fn zz_crash_writer_process() {
    let Ok(dir) = std::env::var("SHOAL_CRASH_DIR") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = DiskStore::open(&dir, 1 << 30).unwrap();
        let mut w = s.begin(&crash_key(), 3 * MIB as u64).await.unwrap();
        for _ in 0..2 {
            w.write(Bytes::from(vec![0xAB; MIB])).await.unwrap();
        }
        std::process::abort();
    });
}

fn crash_key() -> shoal::model::ChunkKey {
    shoal::model::ChunkKey {
        origin_id: "crash".into(),
        bucket: "b".into(),
        key: "k".into(),
        etag: "e".into(),
        chunk_size: 4 * MIB as u64,
        index: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_write_leaves_no_visible_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "zz_crash_writer_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SHOAL_CRASH_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the writer process must have died");
    let leftovers: Vec<_> = files(dir.path())
        .into_iter()
        .filter(|f| {
            f.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(".tmp-")
        })
        .collect();
    assert_eq!(leftovers.len(), 1, "the crash left a partial temp file");
    assert!(leftovers[0].metadata().unwrap().len() >= MIB as u64);

    let s = DiskStore::open(dir.path(), 1 << 30).unwrap();
    assert!(
        s.get(&crash_key(), 0..10).await.unwrap().is_none(),
        "no partial chunk is visible"
    );
    for _ in 0..200 {
        if s.scan_complete() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(s.scan_complete());
    assert!(
        files(dir.path())
            .iter()
            .all(|f| !f.to_str().unwrap().contains(".tmp-")),
        "temp files removed"
    );
    assert!(s.get(&crash_key(), 0..10).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flipped_bytes_are_detected_and_refilled() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "flip").await;
    let want = data(5 * MIB + 100, 31);
    put(&c, &b, "obj", want.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = disk_config(dir.path(), 1 << 30);
    cfg.chunk.size = ByteSize(2 * MIB as u64);
    let origin = Faulty::new(s3_origin(&cfg).await);
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    let path = format!("{b}/obj");
    assert!(get_all(&shoal, &path).await == (200, want.clone()));
    assert_eq!(origin.gets_for("obj").len(), 3);

    // Damage chunk 0 at its start (seen before headers) and chunk 1 deep inside (seen while
    // streaming, after earlier blocks of it went out).
    flip(&chunk_file(dir.path(), 0), 10);
    flip(&chunk_file(dir.path(), 1), (3 * MIB / 2) as u64);
    let (st, got) = get_all(&shoal, &path).await;
    assert_eq!(st, 200);
    assert!(got == want, "exact bytes despite the damage");
    assert_eq!(shoal.running.store.stats().corrupt, 2);
    let mut gets = origin.gets_for("obj");
    gets.sort();
    let two = 2 * MIB as u64;
    assert_eq!(
        gets,
        vec![
            (0, two),
            (0, two),
            (two, two),
            (two, two),
            (2 * two, 100 + MIB as u64)
        ]
    );
    // Healed: the next read is all hits again.
    assert!(get_all(&shoal, &path).await == (200, want));
    assert_eq!(origin.gets_for("obj").len(), 5);
    shoal.stop().await;
}

/// Chunk files kept open for reuse (hot small objects) are let go when their chunk is evicted,
/// so an unlinked chunk's space is really freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_evicted_chunk_file_is_not_held_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path(), 4 * MIB as u64).unwrap();
    let key = |i: u64| shoal::model::ChunkKey {
        origin_id: "o".into(),
        bucket: "b".into(),
        key: format!("k{i}").into(),
        etag: "e".into(),
        chunk_size: MIB as u64,
        index: 0,
    };
    let write = |i: u64| {
        let store = store.clone();
        async move {
            let mut w = store.begin(&key(i), MIB as u64).await.unwrap();
            w.write(Bytes::from(data(MIB, i))).await.unwrap();
            w.commit().await.unwrap()
        }
    };
    let read = |i: u64| {
        let store = store.clone();
        async move {
            let s = store.get(&key(i), 0..4096).await.unwrap();
            if let Some(mut s) = s {
                use futures_util::StreamExt;
                while s.next().await.is_some() {}
            }
        }
    };
    write(0).await;
    read(0).await;
    assert!(store.contains(&key(0)));
    // Other chunks, read more often, push chunk 0 out.
    let mut i = 1;
    while store.contains(&key(0)) && i < 200 {
        // Asked for often before it arrives (TinyLFU counts misses), so it is admitted.
        for _ in 0..10 {
            read(i).await;
        }
        write(i).await;
        read(i).await;
        i += 1;
    }
    assert!(!store.contains(&key(0)), "chunk 0 was never evicted");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| p.starts_with(&dir.path().display().to_string()) && p.ends_with("(deleted)"))
        .collect();
    assert!(held.is_empty(), "evicted chunk files still open: {held:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capacity_holds_under_a_larger_workload() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "cap").await;
    for i in 0..12 {
        put(&c, &b, &format!("o{i}"), data(MIB, i)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let cap = 5 * MIB as u64;
    let cfg = disk_config(dir.path(), cap);
    let shoal = Shoal::start(&cfg, s3_origin(&cfg).await).await;
    for round in 0..2 {
        for i in 0..12 {
            let (st, got) = get_all(&shoal, &format!("{b}/o{i}")).await;
            assert_eq!(st, 200);
            assert!(got == data(MIB, i), "round {round} object {i}");
            // Evicted files are unlinked by the store's own thread, a moment after the
            // eviction (never on a runtime thread): allow it that moment, on a loaded machine.
            let mut used = du(dir.path());
            for _ in 0..100 {
                if used <= cap {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                used = du(dir.path());
            }
            assert!(used <= cap, "{used} bytes on disk > capacity {cap}");
        }
    }
    assert!(shoal.running.store.stats().used_bytes <= cap);
    shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_keeps_hits() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "restart").await;
    let want = data(3 * MIB + 5, 8);
    put(&c, &b, "keep", want.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = disk_config(dir.path(), 1 << 30);
    let first = Faulty::new(s3_origin(&cfg).await);
    let shoal = Shoal::start(&cfg, first.clone()).await;
    assert!(get_all(&shoal, &format!("{b}/keep")).await == (200, want.clone()));
    assert_eq!(first.gets_for("keep").len(), 4);
    shoal.stop().await;

    let second = Faulty::new(s3_origin(&cfg).await);
    let shoal = Shoal::start(&cfg, second.clone()).await;
    assert!(get_all(&shoal, &format!("{b}/keep")).await == (200, want));
    assert!(
        second.gets_for("keep").is_empty(),
        "served from the chunks of before the restart"
    );
    for _ in 0..200 {
        if shoal.running.store.stats().chunks == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(shoal.running.store.stats().chunks, 4);
    shoal.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_and_eviction_stay_exact() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "churn").await;
    for i in 0..6 {
        put(&c, &b, &format!("o{i}"), data(2 * MIB + 17, 100 + i)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = disk_config(dir.path(), 3 * MIB as u64);
    let shoal = Arc::new(Shoal::start(&cfg, s3_origin(&cfg).await).await);
    let tasks: Vec<_> = (0..12u64)
        .map(|t| {
            let (s, b) = (shoal.clone(), b.clone());
            tokio::spawn(async move {
                for round in 0..6u64 {
                    let i = (t + round * 5) % 6;
                    // No settling here: the point is reads racing fills and evictions.
                    let r = s.get(&format!("{b}/o{i}")).await;
                    assert_eq!(r.status(), 200);
                    let got = r.bytes().await.unwrap();
                    assert!(
                        got[..] == data(2 * MIB + 17, 100 + i)[..],
                        "task {t} object {i}"
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("no panic");
    }
    assert!(shoal.running.fills_settled(Duration::from_secs(10)).await);
    assert!(du(dir.path()) <= 3 * MIB as u64);
    Arc::try_unwrap(shoal).ok().unwrap().stop().await;
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "mounting a tmpfs needs root (CI runs as root)");
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_fails_commits_cleanly_and_keeps_serving() {
    let g = garage();
    let c = client(&g.endpoint);
    let b = bucket(&c, "full").await;
    let want = data(8 * MIB, 55);
    put(&c, &b, "big", want.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(dir.path().join("small"), "3m");
    // The config believes there is plenty of room; the file system knows better.
    let cfg = disk_config(&fs.0, 1 << 30);
    let origin = Faulty::new(s3_origin(&cfg).await);
    let shoal = Shoal::start(&cfg, origin.clone()).await;
    for _ in 0..2 {
        let (st, got) = get_all(&shoal, &format!("{b}/big")).await;
        assert_eq!(st, 200);
        assert!(got == want, "served from the origin with exact bytes");
    }
    let stats = shoal.running.store.stats();
    assert!(stats.failed_commits > 0, "{stats:?}");
    assert!(
        files(&fs.0)
            .iter()
            .all(|f| !f.to_str().unwrap().contains(".tmp-")),
        "failed commits leave no temp files"
    );
    // Chunks that did fit are still served as hits.
    assert!(stats.chunks >= 1);
    shoal.stop().await;
    drop(fs);
}
