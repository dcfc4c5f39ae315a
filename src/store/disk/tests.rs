use super::*;
use futures_util::StreamExt;
use std::ops::Range;

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
