//! The shared S3 cachestore (`store.kind = "s3"`) against the real S3 server: replicas that
//! share one bucket, concurrent fills, chunks deleted behind Shoal's back, reads cut mid-way,
//! multipart chunks and the start-up self-test.

mod common;

use common::faulty::Faulty;
use common::moto::moto;
use common::proxy::Proxy;
use common::*;
use shoal::config::{Config, StoreKind};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// Shoal in front of Garage, keeping chunks in `store_bucket` at `store_endpoint`.
fn store_config(store_endpoint: &str, store_bucket: &str) -> Config {
    let mut c = config(garage());
    c.store.kind = StoreKind::S3;
    c.store.endpoint = Some(store_endpoint.to_owned());
    c.store.bucket = Some(store_bucket.to_owned());
    c.store.region = REGION.into();
    c.store.force_path_style = true;
    c.store.access_key_id = Some(ACCESS_KEY.into());
    c.store.secret_access_key = Some(SECRET_KEY.into());
    c.store.prefix = "chunks".into();
    c
}

/// The chunk objects in the store bucket.
async fn stored(c: &aws_sdk_s3::Client, bucket: &str) -> Vec<(String, i64, String)> {
    let out = c.list_objects_v2().bucket(bucket).send().await.unwrap();
    out.contents()
        .iter()
        .map(|o| {
            (
                o.key().unwrap_or_default().to_owned(),
                o.size().unwrap_or(0),
                o.e_tag().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Waits until the store bucket holds `n` chunk objects (commits finish after the response).
async fn wait_stored(c: &aws_sdk_s3::Client, bucket: &str, n: usize) -> Vec<(String, i64, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = stored(c, bucket).await;
        if s.len() >= n || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn replica(cfg: &Config) -> (Shoal, Arc<Faulty>) {
    let origin = Faulty::new(s3_origin(cfg).await);
    (Shoal::start(cfg, origin.clone()).await, origin)
}

#[tokio::test]
async fn a_chunk_filled_through_one_replica_is_a_hit_on_another() {
    let g = garage();
    let c = client(&g.endpoint);
    let (ob, sb) = (bucket(&c, "cs-origin").await, bucket(&c, "cs-store").await);
    let want = patterned(5 * MIB + 3, 11);
    put(&c, &ob, "obj", want.clone()).await;
    let cfg = store_config(&g.endpoint, &sb);
    let (a, oa) = replica(&cfg).await;
    let (b, ob_origin) = replica(&cfg).await;
    let r = a.get(&format!("{ob}/obj")).await;
    assert_eq!(r.bytes().await.unwrap()[..], want[..]);
    assert_eq!(
        oa.gets_for("obj").len(),
        6,
        "A filled every chunk from the origin"
    );
    let objects = wait_stored(&c, &sb, 6).await;
    assert_eq!(objects.len(), 6, "{objects:?}");
    assert!(objects
        .iter()
        .all(|(k, _, _)| k.starts_with("chunks/itest/")));
    // B has never seen the object: every chunk comes from the shared bucket.
    let r = b.get(&format!("{ob}/obj")).await;
    // The header says what B knew when it was sent: its first chunk was found in the bucket,
    // the others B had not seen yet (they are found as they are read).
    let cache = r.headers()["x-shoal-cache"].to_str().unwrap().to_owned();
    assert!(cache == "hit" || cache == "mixed", "{cache}");
    assert_eq!(r.bytes().await.unwrap()[..], want[..]);
    assert!(
        ob_origin.gets_for("obj").is_empty(),
        "B asked the origin for {:?}",
        ob_origin.gets_for("obj")
    );
    // A range across a chunk boundary, from B's catalog now.
    let r = b
        .get_range(&format!("{ob}/obj"), "bytes=1048000-3146000")
        .await;
    assert_eq!(r.bytes().await.unwrap()[..], want[1048000..=3146000]);
    assert!(ob_origin.gets_for("obj").is_empty());
    // /readyz says what the replica runs on.
    let ready = reqwest::get(format!("http://{}/readyz", b.running.ops_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(ready.starts_with("ready\n"), "{ready}");
    assert!(ready.contains("store.kind = s3"), "{ready}");
    assert!(ready.contains(&format!("store.bucket = {sb}")), "{ready}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn two_replicas_filling_the_same_chunks_at_once_store_each_once() {
    let g = garage();
    let c = client(&g.endpoint);
    let (ob, sb) = (
        bucket(&c, "cs2-origin").await,
        bucket(&c, "cs2-store").await,
    );
    let want = patterned(4 * MIB, 12);
    put(&c, &ob, "obj", want.clone()).await;
    let cfg = store_config(&g.endpoint, &sb);
    let ((a, _), (b, _)) = (replica(&cfg).await, replica(&cfg).await);
    let path = format!("{ob}/obj");
    let (ra, rb) = tokio::join!(a.get(&path), b.get(&path));
    let (ba, bb) = tokio::join!(ra.bytes(), rb.bytes());
    assert_eq!(ba.unwrap()[..], want[..]);
    assert_eq!(bb.unwrap()[..], want[..]);
    let objects = wait_stored(&c, &sb, 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let objects_later = stored(&c, &sb).await;
    assert_eq!(objects.len(), 4, "{objects:?}");
    assert_eq!(
        objects_later.len(),
        4,
        "one object per chunk: {objects_later:?}"
    );
    for (k, size, _) in &objects_later {
        assert_eq!(*size, MIB as i64, "{k}");
    }
    // And either replica reads them back exactly.
    for s in [&a, &b] {
        let r = s.get(&path).await;
        assert_eq!(r.bytes().await.unwrap()[..], want[..]);
    }
    a.stop().await;
    b.stop().await;
}

/// The same race with a cachestore that honours `If-None-Match: *` on PUT (moto; Garage 2.5
/// does not, so against Garage commits stat first): every commit is conditional, the loser's
/// 412 is not an error, and both replicas still answer exact bytes.
#[tokio::test]
async fn with_conditional_puts_a_lost_commit_race_is_not_an_error() {
    let g = garage();
    let c = client(&g.endpoint);
    let ob = bucket(&c, "cs7-origin").await;
    let m = aws_sdk_s3::Client::from_conf(
        client(&moto().endpoint)
            .config()
            .to_builder()
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .build(),
    );
    let sb = bucket(&m, "cs7-store").await;
    let want = patterned(4 * MIB, 17);
    put(&c, &ob, "obj", want.clone()).await;
    let mut cfg = store_config(&moto().endpoint, &sb);
    cfg.store.region = "us-east-1".into();
    let store = shoal::store::S3Store::open(&cfg.store).await.unwrap();
    assert!(
        format!("{store:?}").contains("conditional_put: true"),
        "moto refuses a second If-None-Match PUT: {store:?}"
    );
    drop(store);
    let ((a, _), (b, _)) = (replica(&cfg).await, replica(&cfg).await);
    let path = format!("{ob}/obj");
    let (ra, rb) = tokio::join!(a.get(&path), b.get(&path));
    let (ba, bb) = tokio::join!(ra.bytes(), rb.bytes());
    for (who, got) in [("A", ba), ("B", bb)] {
        let got = got.unwrap_or_else(|e| panic!("{who}'s body failed: {e:?}"));
        assert_eq!(got.len(), want.len(), "{who}");
        let first_wrong = got.iter().zip(&want).position(|(x, y)| x != y);
        assert_eq!(first_wrong, None, "{who}: wrong byte");
    }
    let objects = wait_stored(&m, &sb, 4).await;
    assert_eq!(objects.len(), 4, "{objects:?}");
    assert!(objects.iter().all(|(_, size, _)| *size == MIB as i64));
    // Nothing failed to commit: both replicas know all four chunks.
    for s in [&a, &b] {
        let stats = s.running.store.stats();
        assert_eq!(stats.failed_commits, 0);
    }
    let (c2, o2) = replica(&cfg).await;
    assert_eq!(c2.get(&path).await.bytes().await.unwrap()[..], want[..]);
    assert!(o2.gets_for("obj").is_empty());
    for s in [a, b, c2] {
        s.stop().await;
    }
}

/// A shared store whose presence check always finds the chunk (as if another replica had
/// stored it) while its read finds only what was committed through it (an inconsistent or
/// racing store — moto did this now and then with two replicas committing at once).
struct Inconsistent {
    inner: shoal::store::MemoryStore,
}

#[async_trait::async_trait]
impl shoal::store::ChunkStore for Inconsistent {
    async fn get(
        &self,
        key: &shoal::model::ChunkKey,
        range: std::ops::Range<u64>,
    ) -> Result<Option<shoal::origin::ByteStream>, shoal::store::StoreError> {
        self.inner.get(key, range).await
    }
    async fn begin(
        &self,
        key: &shoal::model::ChunkKey,
        len: u64,
    ) -> Result<Box<dyn shoal::store::ChunkWriter>, shoal::store::StoreError> {
        self.inner.begin(key, len).await
    }
    fn contains(&self, key: &shoal::model::ChunkKey) -> bool {
        self.inner.contains(key)
    }
    async fn present(&self, _key: &shoal::model::ChunkKey) -> bool {
        true
    }
    fn is_shared(&self) -> bool {
        true
    }
    fn stats(&self) -> shoal::store::StoreStats {
        self.inner.stats()
    }
}

/// When the store says it has a chunk and then cannot deliver it, the reader gets the bytes
/// from the origin — not a 500 after going round store → fill → store. (Regression: it did.)
#[tokio::test]
async fn a_store_that_claims_a_chunk_it_cannot_deliver_costs_an_origin_read_not_an_error() {
    let g = garage();
    let c = client(&g.endpoint);
    let ob = bucket(&c, "cs8-origin").await;
    let want = patterned(3 * MIB + 1, 18);
    put(&c, &ob, "obj", want.clone()).await;
    let cfg = config(g);
    let origin = Faulty::new(s3_origin(&cfg).await);
    let store = Arc::new(Inconsistent {
        inner: shoal::store::MemoryStore::new(64 << 20),
    });
    let s = Shoal::start_with(&cfg, origin.clone(), store).await;
    for _ in 0..2 {
        let r = s.get(&format!("{ob}/obj")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap()[..], want[..]);
    }
    let r = s
        .get_range(&format!("{ob}/obj"), "bytes=1048570-2097160")
        .await;
    assert_eq!(r.bytes().await.unwrap()[..], want[1048570..=2097160]);
    assert!(!origin.gets_for("obj").is_empty());
    s.stop().await;
}

#[tokio::test]
async fn a_chunk_deleted_behind_shoals_back_is_refilled() {
    let g = garage();
    let c = client(&g.endpoint);
    let (ob, sb) = (
        bucket(&c, "cs3-origin").await,
        bucket(&c, "cs3-store").await,
    );
    let want = patterned(3 * MIB + 100, 13);
    put(&c, &ob, "obj", want.clone()).await;
    let cfg = store_config(&g.endpoint, &sb);
    let (a, oa) = replica(&cfg).await;
    let path = format!("{ob}/obj");
    assert_eq!(a.get(&path).await.bytes().await.unwrap()[..], want[..]);
    let objects = wait_stored(&c, &sb, 4).await;
    assert_eq!(objects.len(), 4);
    let before = oa.gets_for("obj").len();
    // The bucket's lifecycle rules (here: the test) delete two chunks.
    for (k, _, _) in objects.iter().take(2) {
        c.delete_object().bucket(&sb).key(k).send().await.unwrap();
    }
    // A's catalog still says present: the GET finds nothing, and it is a miss, not an error.
    let r = a.get(&path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap()[..], want[..]);
    assert_eq!(
        oa.gets_for("obj").len(),
        before + 2,
        "the two deleted chunks"
    );
    let again = wait_stored(&c, &sb, 4).await;
    assert_eq!(again.len(), 4, "refilled chunks are stored again");
    a.stop().await;
}

#[tokio::test]
async fn a_read_cut_mid_chunk_from_the_store_still_gives_exact_bytes() {
    let g = garage();
    let c = client(&g.endpoint);
    let (ob, sb) = (
        bucket(&c, "cs4-origin").await,
        bucket(&c, "cs4-store").await,
    );
    let want = patterned(2 * MIB + 7, 14);
    put(&c, &ob, "obj", want.clone()).await;
    let proxy = Proxy::start(&g.endpoint).await;
    let cfg = store_config(&proxy.endpoint, &sb);
    let (a, _) = replica(&cfg).await;
    let path = format!("{ob}/obj");
    assert_eq!(a.get(&path).await.bytes().await.unwrap()[..], want[..]);
    assert_eq!(wait_stored(&c, &sb, 3).await.len(), 3);
    a.stop().await;
    // A fresh replica reads the first chunk from the store; the connection is cut 300 kB in.
    let (b, ob_origin) = replica(&cfg).await;
    let etag = c
        .head_object()
        .bucket(&ob)
        .key("obj")
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let first = shoal::model::ChunkKey {
        origin_id: "itest".into(),
        bucket: ob.as_str().into(),
        key: "obj".into(),
        etag: etag.into(),
        chunk_size: MIB as u64,
        index: 0,
    };
    proxy.cut_next(&format!("{}/0", first.object_hash()), 300_000);
    let r = b.get(&path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap()[..], want[..], "exact bytes");
    // The rest of chunk 0 came from the origin; chunks 1 and 2 from the store.
    let gets = ob_origin.gets_for("obj");
    assert!(
        !gets.is_empty(),
        "the cut read was continued from the origin"
    );
    assert!(gets.iter().all(|(off, _)| *off < MIB as u64), "{gets:?}");
    b.stop().await;
}

#[tokio::test]
async fn chunks_of_64_mib_and_more_go_up_as_multipart() {
    let g = garage();
    let c = client(&g.endpoint);
    let (ob, sb) = (
        bucket(&c, "cs5-origin").await,
        bucket(&c, "cs5-store").await,
    );
    let want = patterned(64 * MIB + 5, 15);
    put(&c, &ob, "big", want.clone()).await;
    let mut cfg = store_config(&g.endpoint, &sb);
    cfg.chunk.tiers = vec![shoal::config::TierConfig {
        min_object_size: shoal::config::ByteSize(64 << 20),
        chunk_size: shoal::config::ByteSize(64 << 20),
    }];
    let (a, _) = replica(&cfg).await;
    let path = format!("{ob}/big");
    assert_eq!(a.get(&path).await.bytes().await.unwrap()[..], want[..]);
    let objects = wait_stored(&c, &sb, 2).await;
    assert_eq!(objects.len(), 2, "{objects:?}");
    let big = objects
        .iter()
        .find(|(_, size, _)| *size == 64 * MIB as i64)
        .expect("the 64 MiB chunk is stored");
    assert!(
        big.2.trim_matches('"').ends_with("-4"),
        "uploaded in four 16 MiB parts: {big:?}"
    );
    a.stop().await;
    let (b, ob_origin) = replica(&cfg).await;
    assert_eq!(b.get(&path).await.bytes().await.unwrap()[..], want[..]);
    assert!(ob_origin.gets_for("big").is_empty());
    b.stop().await;
}

#[tokio::test]
async fn the_self_test_refuses_a_bad_bucket_with_a_clear_reason() {
    let g = garage();
    let c = client(&g.endpoint);
    let sb = bucket(&c, "cs6-store").await;
    let refusal = |cfg: Config| async move {
        match shoal::app::build_store(&cfg).await {
            Ok(_) => panic!("a bad store was accepted"),
            Err(e) => e.to_string(),
        }
    };
    // A wrong secret.
    let mut cfg = store_config(&g.endpoint, &sb);
    cfg.store.secret_access_key = Some("not-the-secret".into());
    let why = refusal(cfg).await;
    assert!(why.contains(&format!("`{sb}`")), "{why}");
    assert!(why.contains("credentials"), "{why}");
    assert!(!why.contains("not-the-secret"), "{why}");
    // A bucket that does not exist.
    let why = refusal(store_config(&g.endpoint, "no-such-store-bucket")).await;
    assert!(why.contains("`no-such-store-bucket`"), "{why}");
    assert!(why.contains("does not exist"), "{why}");
    // A versioned bucket (Garage has no versioning: moto does).
    let m = aws_sdk_s3::Client::from_conf(
        client(&moto().endpoint)
            .config()
            .to_builder()
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .build(),
    );
    let vb = bucket(&m, "cs6-versioned").await;
    m.put_bucket_versioning()
        .bucket(&vb)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let mut cfg = store_config(&moto().endpoint, &vb);
    cfg.store.region = "us-east-1".into();
    let why = refusal(cfg).await;
    assert!(why.contains(&format!("`{vb}`")), "{why}");
    assert!(why.contains("versioning Enabled"), "{why}");
    // And a good bucket passes, leaving no probe behind.
    let cfg = store_config(&g.endpoint, &sb);
    let store = shoal::store::S3Store::open(&cfg.store)
        .await
        .expect("a good bucket");
    let described = format!("{store:?}");
    println!("{described}");
    assert!(!described.contains(SECRET_KEY), "{described}");
    drop(store);
    assert!(stored(&c, &sb).await.is_empty(), "the probe was deleted");
}
