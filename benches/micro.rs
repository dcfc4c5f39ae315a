//! Microbenchmarks of the per-request work a hit does before and around its bytes: Range
//! parsing, the range → chunk cut, the chunk path hash, and store reads and writes (memory and
//! disk). They are the floor under the small-object numbers of `benches/peers.rs`; `make bench`
//! runs them, and criterion's `--save-baseline`/`--baseline` compares two commits.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::StreamExt;
use shoal::model::{chunk_size_for, slices, ChunkKey, Tier};
use shoal::s3::range;
use shoal::store::{ChunkStore, DiskStore, MemoryStore};
use std::hint::black_box;
use std::sync::Arc;

const MIB: u64 = 1 << 20;

fn key(i: u64) -> ChunkKey {
    ChunkKey {
        origin_id: "bench".into(),
        bucket: "models".into(),
        key: format!("llama/weights-{i:05}.safetensors").into(),
        etag: "9b2cf535f27731c974343645a3985328-42".into(),
        chunk_size: 8 * MIB,
        index: i % 64,
    }
}

fn parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("request");
    for header in [
        "bytes=0-1023",
        "bytes=-65536",
        "bytes=1048576-",
        "bytes=5-1",
    ] {
        g.bench_with_input(
            BenchmarkId::new("range_parse_resolve", header),
            header,
            |b, h| b.iter(|| range::resolve(range::parse(black_box(h)), black_box(256 * MIB))),
        );
    }
    let tiers = [
        Tier {
            min_object_size: 1 << 30,
            chunk_size: 64 * MIB,
        },
        Tier {
            min_object_size: 10 << 30,
            chunk_size: 128 * MIB,
        },
    ];
    g.bench_function("chunk_cut_256MiB_whole", |b| {
        b.iter(|| {
            let size = black_box(256 * MIB);
            let cs = chunk_size_for(size, 8 * MIB, &tiers);
            slices(0, size - 1, cs, size)
        })
    });
    g.bench_function("chunk_cut_4KiB_range", |b| {
        b.iter(|| {
            let size = black_box(4096);
            let cs = chunk_size_for(size, 8 * MIB, &tiers);
            slices(100, 1123, cs, size)
        })
    });
    g.bench_function("chunk_path_hash", |b| {
        let k = key(7);
        b.iter(|| black_box(&k).path())
    });
    g.finish();
}

fn stores(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Writes and reads use separate stores: a million puts would evict (or, by TinyLFU,
    // refuse) the chunk the reads need.
    let fresh = |name: &str, sub: &str| -> Arc<dyn ChunkStore> {
        match name {
            "disk" => Arc::new(DiskStore::open(dir.path().join(sub), 4 << 30).unwrap()),
            // The disk store as Shoal runs it: small chunks also kept in memory once read.
            "disk+small_memory" => Arc::new(
                DiskStore::open_with(dir.path().join(format!("{sub}-s")), 4 << 30, 64 << 20)
                    .unwrap(),
            ),
            _ => Arc::new(MemoryStore::new(4 << 30)),
        }
    };
    type Contender<'a> = (&'a str, Arc<dyn ChunkStore>, Arc<dyn ChunkStore>);
    let contenders: Vec<Contender> = ["memory", "disk", "disk+small_memory"]
        .into_iter()
        .map(|n| (n, fresh(n, "w"), fresh(n, "r")))
        .collect();
    let chunk = Bytes::from(vec![7u8; MIB as usize]);
    let mut g = c.benchmark_group("store");
    g.sample_size(30);
    for (name, store, reads) in &contenders {
        // Write 1 MiB chunks under fresh keys.
        g.throughput(Throughput::Bytes(MIB));
        let mut n = 1_000_000u64;
        g.bench_function(BenchmarkId::new("put_1MiB", name), |b| {
            b.to_async(&rt).iter(|| {
                n += 1;
                let (store, chunk) = (store.clone(), chunk.clone());
                let k = key(n);
                async move {
                    let mut w = store.begin(&k, MIB).await.unwrap();
                    w.write(chunk).await.unwrap();
                    w.commit().await.unwrap()
                }
            })
        });
        // Read 4 KiB and 1 MiB of a stored 1 MiB chunk, and a whole 4 KiB object.
        let store = reads;
        rt.block_on(async {
            let mut w = store.begin(&key(1), MIB).await.unwrap();
            w.write(chunk.clone()).await.unwrap();
            w.commit().await.unwrap();
            let mut w = store.begin(&key(2), 4096).await.unwrap();
            w.write(chunk.slice(..4096)).await.unwrap();
            w.commit().await.unwrap();
        });
        for (label, k, len) in [
            ("get_4KiB", 1, 4096u64),
            ("get_1MiB", 1, MIB),
            ("get_4KiB_object", 2, 4096),
        ] {
            g.throughput(Throughput::Bytes(len));
            g.bench_function(BenchmarkId::new(label, name), |b| {
                b.to_async(&rt).iter(|| {
                    let store = store.clone();
                    async move {
                        let mut s = store.get(&key(k), 0..len).await.unwrap().unwrap();
                        let mut got = 0;
                        while let Some(p) = s.next().await {
                            got += p.unwrap().len();
                        }
                        got
                    }
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, parsing, stores);
criterion_main!(benches);
