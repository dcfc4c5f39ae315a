//! [`SingleflightLayer`]: how a [`Singleflight`] is configured and built.

use super::*;

/// Applies [`Singleflight`] to a service.
///
/// ```
/// use bytes::Bytes;
/// use futures_util::{stream, StreamExt};
/// use shoal_layers::{Queued, Released, SingleflightLayer};
/// use tower::{service_fn, Layer, ServiceExt};
///
/// #[derive(Clone)]
/// struct Get(String);
/// impl Queued for Get {} // urgent, default wait
///
/// // The error every reader of a shared call sees; it must be cloneable and able to say
/// // "the flight was released".
/// #[derive(Clone, Debug)]
/// struct E(String);
/// impl From<Released> for E { fn from(r: Released) -> Self { E(r.to_string()) } }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let inner = service_fn(|r: Get| async move {
///     Ok::<_, E>(stream::iter(vec![Ok(Bytes::from(r.0))]))
/// });
/// let svc = SingleflightLayer::new(|r: &Get| r.0.clone()).layer(inner);
/// let body = svc.oneshot(Get("hello".into())).await.unwrap();
/// let parts: Vec<_> = body.collect().await;
/// assert_eq!(parts.len(), 1);
/// # }
/// ```
///
/// Errors must be able to say [`Released`] (`E: From<Released>`), which readers see only when
/// a [`Durability`] other than the default is configured.
pub struct SingleflightLayer<K, Req, D = NotDurable, Sh = Streams> {
    pub(super) key_of: K,
    pub(super) durable: D,
    pub(super) share: Sh,
    pub(super) tasks: TaskTracker,
    pub(super) observe: Option<Observe<Req>>,
    pub(super) _req: PhantomData<fn(Req)>,
}

/// A hook told of every call: the request, and whether it joined a call already in flight.
pub(super) type Observe<Req> = Arc<dyn Fn(&Req, bool) + Send + Sync>;

impl<K: Clone, Req, D: Clone, Sh: Clone> Clone for SingleflightLayer<K, Req, D, Sh> {
    fn clone(&self) -> Self {
        SingleflightLayer {
            key_of: self.key_of.clone(),
            durable: self.durable.clone(),
            share: self.share.clone(),
            tasks: self.tasks.clone(),
            observe: self.observe.clone(),
            _req: PhantomData,
        }
    }
}

impl<K, Req> SingleflightLayer<K, Req, NotDurable> {
    /// Deduplicates by the key `key_of` extracts.
    pub fn new(key_of: K) -> Self {
        SingleflightLayer {
            key_of,
            durable: NotDurable,
            share: Streams,
            tasks: TaskTracker::new(),
            observe: None,
            _req: PhantomData,
        }
    }
}

impl<K, Req, D, Sh> SingleflightLayer<K, Req, D, Sh> {
    /// Calls `f` for every request with whether it joined a call already in flight (`true`) or
    /// started one (`false`) — for metrics.
    pub fn on_call(mut self, f: impl Fn(&Req, bool) + Send + Sync + 'static) -> Self {
        self.observe = Some(Arc::new(f));
        self
    }

    /// Uses `tasks` to own the leader tasks, so that shutdown can wait for running calls.
    pub fn with_tracker(mut self, tasks: TaskTracker) -> Self {
        self.tasks = tasks;
        self
    }

    /// Releases a finished flight's buffer when `durable` says the answer is kept elsewhere;
    /// readers then get [`Released`] and continue from that copy.
    pub fn durable_when<D2>(self, durable: D2) -> SingleflightLayer<K, Req, D2, Sh> {
        SingleflightLayer {
            key_of: self.key_of,
            durable,
            share: self.share,
            tasks: self.tasks,
            observe: self.observe,
            _req: PhantomData,
        }
    }

    /// Shares answers as `share` says (see [`Share`]; the HTTP face uses this).
    pub fn share<Sh2>(self, share: Sh2) -> SingleflightLayer<K, Req, D, Sh2> {
        SingleflightLayer {
            key_of: self.key_of,
            durable: self.durable,
            share,
            tasks: self.tasks,
            observe: self.observe,
            _req: PhantomData,
        }
    }
}

impl<S, K, Req, D, Sh> Layer<S> for SingleflightLayer<K, Req, D, Sh>
where
    S: Service<Req>,
    K: KeyOf<Req> + Clone,
    D: Clone,
    Sh: Share<S::Response, S::Error> + Clone,
{
    type Service = Singleflight<S, K, Req, D, Sh>;
    fn layer(&self, inner: S) -> Self::Service {
        Singleflight {
            inner,
            key_of: self.key_of.clone(),
            durable: self.durable.clone(),
            share: self.share.clone(),
            tasks: self.tasks.clone(),
            observe: self.observe.clone(),
            flights: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}
