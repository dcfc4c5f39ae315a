//! Warm GET throughput: the same object served from the memory store and from the disk store,
//! over real HTTP on loopback, in one run so the two are compared as a ratio.
//!
//! `make bench` runs it. The origin is a local directory; after the first (cold) GET every
//! request is a store hit, so this measures Shoal's hit path, not the origin.

#[path = "../tests/common/fixture.rs"]
mod fixture;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shoal::config::{ByteSize, OriginKind, StoreKind};
use std::sync::Arc;

const SIZE: usize = 64 << 20;

struct Fixture {
    _dirs: Vec<tempfile::TempDir>,
    url: String,
    running: Option<shoal::app::Running>,
}

async fn fixture(kind: StoreKind) -> Fixture {
    let origin_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(origin_dir.path().join("bench")).unwrap();
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(origin_dir.path().join("bench/obj"), &data).unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    // The tests' fixture, with Shoal's default chunks and retries.
    let mut cfg = fixture::base_config();
    cfg.chunk = Default::default();
    cfg.fill.retry = Default::default();
    cfg.origin.kind = OriginKind::Local;
    cfg.origin.root = Some(origin_dir.path().to_owned());
    cfg.store.kind = kind;
    cfg.store.capacity = ByteSize(1 << 30);
    cfg.store.path = Some(store_dir.path().to_owned());
    let origin = shoal::app::build_origin(&cfg).await.unwrap();
    let running = shoal::app::start(&cfg, origin).await.unwrap();
    let url = format!("http://{}/bench/obj", running.s3_addr);
    // Warm it.
    let got = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.len(), SIZE);
    Fixture {
        _dirs: vec![origin_dir, store_dir],
        url,
        running: Some(running),
    }
}

fn warm_get(c: &mut Criterion) {
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let mut group = c.benchmark_group("warm_get_64MiB");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(20);
    for (name, kind) in [("memory", StoreKind::Memory), ("disk", StoreKind::Disk)] {
        let mut f = match rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(60), fixture(kind)).await
        }) {
            Ok(f) => f,
            Err(_) => panic!("fixture for {name} timed out"),
        };
        group.bench_with_input(BenchmarkId::from_parameter(name), &f.url, |b, url| {
            b.to_async(&*rt).iter(|| async {
                let body = client.get(url).send().await.unwrap().bytes().await.unwrap();
                assert_eq!(body.len(), SIZE);
            })
        });
        if let Some(r) = f.running.take() {
            rt.block_on(r.shutdown());
        }
    }
    group.finish();
}

criterion_group!(benches, warm_get);
criterion_main!(benches);
