//! Singleflight join cost: does a crowd of joiners slow the fill they read?
//!
//! One fill of an 8 MiB chunk arrives from a paced "origin" (a 256 KiB piece every
//! millisecond, ≈256 MB/s) and is read by 1 reader, and by 1,000 joiners at once. Criterion
//! measures the time until the *fill* has finished (the origin's last piece taken and the end
//! published) — the leader's time, which joiners must not stretch: the target is ≤ 1.5× the
//! single reader's. `make bench` runs it; the closing notes quote the two medians.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use futures_util::{stream, StreamExt};
use shoal::layer::{Queued, Released, SingleflightLayer};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower::{service_fn, Layer, ServiceExt};

const PIECES: usize = 32;
const PIECE: usize = 256 << 10;

#[derive(Debug, Clone)]
struct E;
impl From<Released> for E {
    fn from(_: Released) -> Self {
        E
    }
}

#[derive(Clone)]
struct Req(u64);
impl Queued for Req {}

type Body = Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, E>> + Send>>;

/// Runs one fill read by `readers` joiners; returns how long the fill itself took.
async fn one_fill(key: u64, readers: usize, piece: &Bytes) -> Duration {
    let piece = piece.clone();
    let finished: Arc<Mutex<Option<Instant>>> = Arc::default();
    let f2 = finished.clone();
    let inner = service_fn(move |_r: Req| {
        let (piece, finished) = (piece.clone(), f2.clone());
        async move {
            let pieces = stream::iter(0..PIECES).then(move |_| {
                let p = piece.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    Ok::<_, E>(p)
                }
            });
            let end = stream::once(async move {
                *finished.lock().unwrap() = Some(Instant::now());
                None
            })
            .filter_map(std::future::ready);
            let s: Body = Box::pin(pieces.chain(end));
            Ok::<_, E>(s)
        }
    });
    let svc = SingleflightLayer::new(|r: &Req| r.0).layer(inner);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(readers);
    for _ in 0..readers {
        let mut j = svc.clone().oneshot(Req(key)).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while let Some(b) = j.next().await {
                n += b.map(|b| b.len()).unwrap_or(0);
            }
            n
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), PIECES * PIECE, "a reader lost bytes");
    }
    let end = finished.lock().unwrap().expect("the fill finished");
    end - started
}

fn joiners(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let piece = Bytes::from(vec![7u8; PIECE]);
    let mut g = c.benchmark_group("singleflight_8MiB_fill_time");
    g.sample_size(20);
    let mut key = 0u64;
    for readers in [1usize, 1000] {
        g.bench_with_input(BenchmarkId::from_parameter(readers), &readers, |b, &n| {
            b.to_async(&rt).iter_custom(|iters| {
                let piece = piece.clone();
                key += 1;
                let base = key * 1_000_000;
                async move {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        total += one_fill(base + i, n, &piece).await;
                    }
                    total
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, joiners);
criterion_main!(benches);
