//! `NegativeCacheLayer`: remember answers — including some failures — for a while.
//!
//! Successes are kept for `ttl`. Failures that say something lasting about the thing asked
//! for ([`Class::Negative`]: a 404, an object without an ETag) are kept for the shorter
//! `negative_ttl`, so a thousand clients asking for a missing key cost one origin request a
//! minute, not a thousand. Transient failures are never kept: the next caller tries again.
//!
//! Concurrent calls for the same key are coalesced into one inner call (moka's `get_with`), so
//! the layer is also the singleflight of the metadata path.
//!
//! What is kept, and for how long, is a [`Remember`] policy: by error class for services that
//! answer values ([`ByClass`], the plain constructor), by status for HTTP services
//! ([`NegativeCacheLayer::http`], in [`mod@http`]).

pub mod http;

use super::KeyOf;
use super::{Class, Classify};
use futures_util::future::BoxFuture;
use std::marker::PhantomData;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::{Layer, Service, ServiceExt};

/// Applies [`NegativeCache`].
///
/// ```
/// use shoal_layers::{Class, Classify};
/// use shoal_layers::NegativeCacheLayer;
/// use std::time::Duration;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// #[derive(Clone)]
/// struct Missing;
/// impl Classify<String> for Missing {
///     fn classify(&self, e: &String) -> Class {
///         if e == "404" { Class::Negative } else { Class::Transient }
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = NegativeCacheLayer::new(|k: &String| k.clone(), Missing)
///     .ttl(Duration::from_secs(300))
///     .negative_ttl(Duration::from_secs(60));
/// let svc = layer.layer(service_fn(|k: String| async move { Err::<u64, _>("404".to_string()) }));
/// assert!(svc.oneshot("key".into()).await.is_err());
/// # }
/// ```
pub struct NegativeCacheLayer<K, C, Req> {
    key_of: K,
    classify: C,
    ttl: Duration,
    negative_ttl: Duration,
    max_entries: u64,
    on_lookup: Option<OnLookup<Req>>,
    _req: PhantomData<fn(Req)>,
}

/// How a call was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A remembered success.
    Hit,
    /// A remembered failure (`Class::Negative`).
    NegativeHit,
    /// Not remembered: answered by the inner service (this call's, or a concurrent call's
    /// it was coalesced with).
    Miss,
}

type OnLookup<Req> = std::sync::Arc<dyn Fn(&Req, Lookup) + Send + Sync>;

impl<K, C, Req> NegativeCacheLayer<K, C, Req> {
    /// Caches by `key_of`; `classify` decides which failures are remembered.
    /// Defaults: ttl 5 min, negative ttl 60 s, 10 000 entries.
    pub fn new(key_of: K, classify: C) -> Self {
        NegativeCacheLayer {
            key_of,
            classify,
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(60),
            max_entries: 10_000,
            on_lookup: None,
            _req: PhantomData,
        }
    }

    /// Calls `f` with every request and how it was answered (for metrics).
    pub fn on_lookup(mut self, f: impl Fn(&Req, Lookup) + Send + Sync + 'static) -> Self {
        self.on_lookup = Some(std::sync::Arc::new(f));
        self
    }
    /// How long a success is kept.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
    /// How long a [`Class::Negative`] failure is kept.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }
    /// Entry bound (least recently/frequently used entries go first).
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n;
        self
    }
}

/// How long an answer is remembered; `Duration::ZERO` = not at all (it is still handed to
/// the calls that were coalesced with the one that got it).
pub trait Remember<R, E>: Send + Sync + 'static {
    /// How long to keep `answer`.
    fn keep_for(&self, answer: &Result<R, E>) -> Duration;
}

/// The plain face's policy: successes for `ttl`, failures classified [`Class::Negative`] for
/// `negative_ttl`, other failures not at all.
#[derive(Clone, Debug)]
pub struct ByClass<C> {
    /// Decides which failures are lasting.
    pub classify: C,
    /// How long a success is kept.
    pub ttl: Duration,
    /// How long a negative failure is kept.
    pub negative_ttl: Duration,
}

impl<R, E, C> Remember<R, E> for ByClass<C>
where
    C: Classify<E> + Send + Sync + 'static,
{
    fn keep_for(&self, answer: &Result<R, E>) -> Duration {
        match answer {
            Ok(_) => self.ttl,
            Err(e) => match self.classify.classify(e) {
                Class::Negative => self.negative_ttl,
                // Handed to the callers that were waiting for this very call, then gone.
                Class::Transient | Class::Final => Duration::ZERO,
            },
        }
    }
}

/// A cache of answers that expire as `policy` says.
fn cache<Q, R, E>(
    policy: impl Remember<R, E>,
    max_entries: u64,
) -> moka::future::Cache<Q, Result<R, E>>
where
    Q: std::hash::Hash + Eq + Send + Sync + 'static,
    R: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    moka::future::Cache::builder()
        .max_capacity(max_entries)
        .expire_after(Expire(policy))
        .build()
}

struct Expire<P>(P);

impl<Q, R, E, P> moka::Expiry<Q, Result<R, E>> for Expire<P>
where
    P: Remember<R, E>,
{
    fn expire_after_create(&self, _k: &Q, v: &Result<R, E>, _at: Instant) -> Option<Duration> {
        Some(self.0.keep_for(v))
    }
}

impl<S, K, C, Req> Layer<S> for NegativeCacheLayer<K, C, Req>
where
    S: Service<Req>,
    S::Response: Clone + Send + Sync + 'static,
    S::Error: Clone + Send + Sync + 'static,
    K: KeyOf<Req> + Clone,
    C: Classify<S::Error> + Clone + Send + Sync + 'static,
{
    type Service = NegativeCache<S, K, Req>;
    fn layer(&self, inner: S) -> Self::Service {
        let policy = ByClass {
            classify: self.classify.clone(),
            ttl: self.ttl,
            negative_ttl: self.negative_ttl,
        };
        NegativeCache::remembering(inner, self.key_of.clone(), policy, self.max_entries)
            .observed(self.on_lookup.clone())
    }
}

/// Caches successes and classified failures. See the module docs.
pub struct NegativeCache<S, K, Req>
where
    S: Service<Req>,
    K: KeyOf<Req>,
{
    inner: S,
    key_of: K,
    cache: moka::future::Cache<K::Key, Result<S::Response, S::Error>>,
    on_lookup: Option<OnLookup<Req>>,
}

impl<S, K, Req> Clone for NegativeCache<S, K, Req>
where
    S: Service<Req> + Clone,
    K: KeyOf<Req> + Clone,
{
    fn clone(&self) -> Self {
        NegativeCache {
            inner: self.inner.clone(),
            key_of: self.key_of.clone(),
            cache: self.cache.clone(),
            on_lookup: self.on_lookup.clone(),
        }
    }
}

impl<S, K, Req> NegativeCache<S, K, Req>
where
    S: Service<Req>,
    S::Response: Clone + Send + Sync + 'static,
    S::Error: Clone + Send + Sync + 'static,
    K: KeyOf<Req>,
{
    /// Caches `inner`'s answers by `key_of` for as long as `policy` says, at most
    /// `max_entries` of them.
    pub fn remembering(
        inner: S,
        key_of: K,
        policy: impl Remember<S::Response, S::Error>,
        max_entries: u64,
    ) -> Self {
        NegativeCache {
            inner,
            key_of,
            cache: cache(policy, max_entries),
            on_lookup: None,
        }
    }

    fn observed(mut self, on_lookup: Option<OnLookup<Req>>) -> Self {
        self.on_lookup = on_lookup;
        self
    }

    /// Forgets `key`, so the next call asks the inner service (used when a newer version of
    /// an object has been seen).
    pub async fn invalidate(&self, key: &K::Key) {
        self.cache.invalidate(key).await;
    }

    /// Forgets `key` only if its cached answer satisfies `stale`, atomically with respect to
    /// other writers of the key. Used to drop the metadata of one object version without
    /// dropping a newer answer another request has stored meanwhile.
    pub async fn invalidate_if(
        &self,
        key: K::Key,
        stale: impl FnOnce(&Result<S::Response, S::Error>) -> bool,
    ) {
        use moka::ops::compute::Op;
        self.cache
            .entry(key)
            .and_compute_with(|e| {
                let op = match e {
                    Some(entry) if stale(entry.value()) => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }
}

impl<S, K, Req> Service<Req> for NegativeCache<S, K, Req>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Clone + Send + Sync + 'static,
    S::Error: Clone + Send + Sync + 'static,
    K: KeyOf<Req>,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Hits never touch the inner service; misses drive a clone with `oneshot`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = self.key_of.key_of(&req);
        let cache = self.cache.clone();
        let inner = self.inner.clone();
        let Some(observe) = self.on_lookup.clone() else {
            return Box::pin(async move { cache.get_with(key, inner.oneshot(req)).await });
        };
        Box::pin(async move {
            if let Some(v) = cache.get(&key).await {
                let how = if v.is_ok() {
                    Lookup::Hit
                } else {
                    Lookup::NegativeHit
                };
                observe(&req, how);
                return v;
            }
            // Counted as a miss even when it ends up coalesced with a concurrent one.
            observe(&req, Lookup::Miss);
            cache.get_with(key, inner.oneshot(req)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use tower::service_fn;

    #[derive(Clone)]
    struct C;
    impl Classify<String> for C {
        fn classify(&self, e: &String) -> Class {
            if e == "missing" {
                Class::Negative
            } else {
                Class::Transient
            }
        }
    }

    fn counting(
        answers: Vec<Result<u32, String>>,
    ) -> (
        Arc<AtomicU32>,
        impl Service<u8, Response = u32, Error = String, Future = impl Send> + Clone + Send,
    ) {
        let n = Arc::new(AtomicU32::new(0));
        let n2 = n.clone();
        let answers = Arc::new(answers);
        let svc = service_fn(move |_k: u8| {
            let i = n2.fetch_add(1, Ordering::SeqCst) as usize;
            let a = answers.get(i).cloned().unwrap_or(Ok(99));
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                a
            }
        });
        (n, svc)
    }

    #[tokio::test]
    async fn negative_answers_are_kept_transient_ones_are_not() {
        let (n, inner) = counting(vec![Err("missing".into())]);
        let svc = NegativeCacheLayer::new(|k: &u8| *k, C).layer(inner);
        assert_eq!(svc.clone().oneshot(1).await, Err("missing".into()));
        assert_eq!(svc.clone().oneshot(1).await, Err("missing".into()));
        assert_eq!(n.load(Ordering::SeqCst), 1);

        let (n, inner) = counting(vec![Err("reset".into())]);
        let svc = NegativeCacheLayer::new(|k: &u8| *k, C).layer(inner);
        assert_eq!(svc.clone().oneshot(1).await, Err("reset".into()));
        assert_eq!(svc.clone().oneshot(1).await, Ok(99));
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn negative_ttl_expires() {
        let (n, inner) = counting(vec![Err("missing".into())]);
        let svc = NegativeCacheLayer::new(|k: &u8| *k, C)
            .negative_ttl(Duration::from_millis(30))
            .layer(inner);
        assert!(svc.clone().oneshot(1).await.is_err());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(svc.clone().oneshot(1).await, Ok(99));
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_lookups_make_one_call_and_invalidate_forgets() {
        let (n, inner) = counting(vec![Ok(1), Ok(2)]);
        let svc = NegativeCacheLayer::new(|k: &u8| *k, C).layer(inner);
        let all = futures_util::future::join_all((0..16).map(|_| svc.clone().oneshot(5))).await;
        assert!(all.iter().all(|r| *r == Ok(1)));
        assert_eq!(n.load(Ordering::SeqCst), 1);
        svc.invalidate(&5).await;
        assert_eq!(svc.clone().oneshot(5).await, Ok(2));
        // Conditional: only an entry that still holds the stale answer goes.
        svc.invalidate_if(5, |v| *v == Ok(1)).await;
        assert_eq!(svc.clone().oneshot(5).await, Ok(2), "a newer answer stays");
        svc.invalidate_if(5, |v| *v == Ok(2)).await;
        assert_eq!(svc.clone().oneshot(5).await, Ok(99));
    }
}
