//! One conformance suite for the `ChunkStore` trait, run against every store.

use bytes::Bytes;
use futures_util::StreamExt;
use shoal::model::ChunkKey;
use shoal::store::{ChunkStore, Committed, DiskStore, MemoryStore, StoreError};
use std::sync::Arc;

fn key(name: &str, index: u64) -> ChunkKey {
    ChunkKey {
        origin_id: "conf".into(),
        bucket: "b".into(),
        key: name.into(),
        etag: "e1".into(),
        chunk_size: 1 << 20,
        index,
    }
}

fn bytes_for(k: &ChunkKey, len: usize) -> Vec<u8> {
    let seed = k
        .path()
        .bytes()
        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
    (0..len)
        .map(|i| (seed.wrapping_add((i as u32).wrapping_mul(2654435761)) >> 13) as u8)
        .collect()
}

async fn read(s: &dyn ChunkStore, k: &ChunkKey, r: std::ops::Range<u64>) -> Option<Vec<u8>> {
    let mut st = s.get(k, r).await.expect("get")?;
    let mut out = Vec::new();
    while let Some(b) = st.next().await {
        out.extend_from_slice(&b.expect("read"));
    }
    Some(out)
}

async fn put(s: &dyn ChunkStore, k: &ChunkKey, data: &[u8]) -> Result<Committed, StoreError> {
    let mut w = s.begin(k, data.len() as u64).await?;
    for piece in data.chunks(7919) {
        w.write(Bytes::copy_from_slice(piece)).await?;
    }
    w.commit().await
}

async fn conformance(s: Arc<dyn ChunkStore>, capacity: u64) {
    let k = key("obj", 0);
    assert!(
        read(&*s, &k, 0..10).await.is_none(),
        "absent chunk is a miss"
    );
    assert!(!s.contains(&k));

    // Commit, then full and ranged reads.
    let data = bytes_for(&k, 300_000);
    assert_eq!(put(&*s, &k, &data).await.unwrap(), Committed::Kept);
    assert!(s.contains(&k));
    assert_eq!(read(&*s, &k, 0..300_000).await.unwrap(), data);
    for r in [
        0..1,
        65_535..65_537,
        131_072..200_000,
        299_999..300_000,
        5..5,
    ] {
        assert_eq!(
            read(&*s, &k, r.clone()).await.unwrap(),
            &data[r.start as usize..r.end as usize],
            "{r:?}"
        );
    }
    assert!(
        read(&*s, &k, 0..300_001).await.is_none(),
        "a range past the chunk is a miss"
    );

    // An uncommitted writer leaves nothing visible.
    let k2 = key("uncommitted", 0);
    let mut w = s.begin(&k2, 1000).await.unwrap();
    w.write(Bytes::from(vec![1u8; 500])).await.unwrap();
    drop(w);
    assert!(read(&*s, &k2, 0..500).await.is_none());

    // A short chunk cannot be committed; an overlong write is refused.
    let mut w = s.begin(&k2, 1000).await.unwrap();
    w.write(Bytes::from(vec![1u8; 999])).await.unwrap();
    assert!(matches!(w.commit().await, Err(StoreError::Length { .. })));
    assert!(read(&*s, &k2, 0..1).await.is_none());
    let mut w = s.begin(&k2, 10).await.unwrap();
    assert!(w.write(Bytes::from(vec![1u8; 11])).await.is_err());

    // The same chunk committed twice (two racing fills) stays correct.
    put(&*s, &k, &data).await.unwrap();
    assert_eq!(read(&*s, &k, 0..300_000).await.unwrap(), data);

    // Capacity holds under a workload larger than it, and what is there is exact.
    let n = (capacity / 200_000) * 3;
    for i in 0..n {
        let k = key("fill", i);
        put(&*s, &k, &bytes_for(&k, 200_000)).await.unwrap();
        assert!(s.stats().used_bytes <= capacity, "over capacity after {i}");
    }
    let mut present = 0;
    for i in 0..n {
        let k = key("fill", i);
        if let Some(got) = read(&*s, &k, 0..200_000).await {
            assert_eq!(got, bytes_for(&k, 200_000));
            present += 1;
        }
    }
    assert!(present > 0 && present < n, "present {present} of {n}");
    // Chunks asked for more often than the residents displace them: every chunk that leaves
    // is evicted and counted (`shoal_store_evictions_total`) — what was there, plus what was
    // kept, minus what is there now.
    let before = s.stats();
    let mut kept = 0;
    for i in 0..4 {
        let k = key("wanted", i);
        for _ in 0..4 {
            assert!(read(&*s, &k, 0..1).await.is_none());
        }
        if put(&*s, &k, &bytes_for(&k, 200_000)).await.unwrap() == Committed::Kept {
            kept += 1;
        }
        assert!(s.stats().used_bytes <= capacity);
    }
    let after = s.stats();
    let gone = before.chunks + kept - after.chunks;
    assert!(
        gone > 0,
        "nothing was evicted: {before:?} → {after:?}, {kept} kept"
    );
    assert_eq!(
        after.evictions - before.evictions,
        gone,
        "{before:?} → {after:?}"
    );

    // Concurrent readers and writers with eviction running: never wrong bytes, never a panic.
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move {
                for round in 0..20u64 {
                    let k = key("race", (t * 7 + round) % 24);
                    let want = bytes_for(&k, 150_000);
                    if let Some(got) = read(&*s, &k, 0..150_000).await {
                        assert_eq!(got, want, "wrong bytes for {k:?}");
                    } else {
                        let _ = put(&*s, &k, &want).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("no panic");
    }
    assert!(s.stats().used_bytes <= capacity);
}

/// A full store of chunks that are read often declines a chunk nobody has read (W-TinyLFU
/// admission), says so, and does not serve it; the hot chunks stay.
async fn admission(s: Arc<dyn ChunkStore>, per_chunk: u64) {
    let hot: Vec<ChunkKey> = (0..5).map(|i| key("hot", i)).collect();
    for k in &hot {
        assert_eq!(
            put(&*s, k, &bytes_for(k, per_chunk as usize))
                .await
                .unwrap(),
            Committed::Kept
        );
    }
    for _ in 0..4 {
        for k in &hot {
            assert!(read(&*s, k, 0..10).await.is_some());
        }
    }
    let cold = key("cold", 0);
    let got = put(&*s, &cold, &bytes_for(&cold, per_chunk as usize))
        .await
        .unwrap();
    assert_eq!(
        got,
        Committed::Refused,
        "a one-off chunk must not evict hot ones"
    );
    assert!(!s.contains(&cold));
    assert!(read(&*s, &cold, 0..10).await.is_none());
    assert_eq!(s.stats().refused, 1);
    for k in &hot {
        assert!(s.contains(k), "hot chunk {k:?} was evicted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_decline_one_off_chunks_when_full_of_hot_ones() {
    admission(Arc::new(MemoryStore::new(1_000_000)), 200_000).await;
    let dir = tempfile::tempdir().unwrap();
    // A disk chunk of 200 000 bytes is a 200 048-byte file (checksums and footer).
    let s = DiskStore::open(dir.path(), 5 * 200_048).unwrap();
    admission(Arc::new(s), 200_000).await;
    // The refused chunk's file is unlinked (by the unlink thread): only the hot ones remain.
    let mut on_disk = u64::MAX;
    for _ in 0..200 {
        on_disk = du(dir.path());
        if on_disk <= 5 * 200_048 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(on_disk, 5 * 200_048);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conforms() {
    let cap = 2_000_000;
    conformance(Arc::new(MemoryStore::new(cap)), cap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 2_000_000;
    let s = DiskStore::open(dir.path(), cap).unwrap();
    conformance(Arc::new(s.clone()), cap).await;
    // What the index counts is what is on disk.
    let on_disk = du(dir.path());
    assert!(on_disk <= cap, "{on_disk} bytes on disk > {cap}");
}

fn du(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => du(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
