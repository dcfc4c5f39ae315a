//! [`Singleflight`]: the service — who leads a flight, who joins it, and the detached call.

use super::*;

pub(super) type Flights<Q, H, E> = Arc<Mutex<HashMap<Q, Arc<Flight<H, E>>>>>;

pub(super) use crate::lock;

/// Deduplicates concurrent calls by key and shares one streamed answer. See the module docs.
pub struct Singleflight<S, K, Req, D = NotDurable, Sh = Streams>
where
    S: Service<Req>,
    K: KeyOf<Req>,
    Sh: Share<S::Response, S::Error>,
{
    pub(super) inner: S,
    pub(super) key_of: K,
    pub(super) durable: D,
    pub(super) share: Sh,
    pub(super) tasks: TaskTracker,
    pub(super) observe: Option<Observe<Req>>,
    pub(super) flights: Flights<K::Key, Sh::Head, Sh::Error>,
}

impl<S, K, Req, D, Sh> Clone for Singleflight<S, K, Req, D, Sh>
where
    S: Service<Req> + Clone,
    K: KeyOf<Req> + Clone,
    D: Clone,
    Sh: Share<S::Response, S::Error> + Clone,
{
    fn clone(&self) -> Self {
        Singleflight {
            inner: self.inner.clone(),
            key_of: self.key_of.clone(),
            durable: self.durable.clone(),
            share: self.share.clone(),
            tasks: self.tasks.clone(),
            observe: self.observe.clone(),
            flights: self.flights.clone(),
        }
    }
}

impl<S, K, Req, D, Sh> Singleflight<S, K, Req, D, Sh>
where
    S: Service<Req>,
    K: KeyOf<Req>,
    Sh: Share<S::Response, S::Error>,
{
    /// Number of keys with a call in flight (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        lock(&self.flights).len()
    }

    /// A cheap, cloneable view that tells how many bytes a running call for a key has
    /// received (`None` when no call runs).
    pub fn progress(&self) -> Progress<K::Key> {
        let flights = self.flights.clone();
        Progress(Arc::new(move |k: &K::Key| {
            let f = lock(&flights).get(k).cloned()?;
            let st = lock(&f.state);
            st.end.is_none().then_some(st.published)
        }))
    }
}

pub(super) type ProgressFn<Q> = dyn Fn(&Q) -> Option<u64> + Send + Sync;

/// How far a running call for a key has got; see [`Singleflight::progress`].
pub struct Progress<Q>(Arc<ProgressFn<Q>>);

impl<Q> Clone for Progress<Q> {
    fn clone(&self) -> Self {
        Progress(self.0.clone())
    }
}

impl<Q> Progress<Q> {
    /// Bytes received so far by the running call for `key`, if one runs.
    pub fn of(&self, key: &Q) -> Option<u64> {
        (self.0)(key)
    }
}

impl<S, K, Req, D, Sh> Service<Req> for Singleflight<S, K, Req, D, Sh>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    K: KeyOf<Req>,
    Sh: Share<S::Response, S::Error> + Clone + Send + 'static,
    D: Durability<Sh::Body> + Clone + Send + 'static,
    Req: Queued + Send + 'static,
{
    type Response = Joined<Sh::Head, Sh::Error>;
    type Error = S::Error;
    /// The reader is ready at once: the call itself runs detached.
    type Future = Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = self.key_of.key_of(&req);
        let urgent = req.priority().is_none_or(Priority::is_urgent);
        let (flight, joined) = {
            let mut map = lock(&self.flights);
            if let Some(f) = map.get(&key) {
                // Registered under the map lock, so a speculative flight cannot be cancelled
                // between this lookup and the new reader.
                let joined = Joined::new(f.clone());
                match (&f.priority, req.priority()) {
                    (Some(fp), _) if urgent => fp.raise(),
                    (Some(fp), Some(mine)) => mine.link(fp),
                    _ => {}
                }
                if let Some(o) = &self.observe {
                    o(&req, true);
                }
                return ready(Ok(joined));
            }
            let flights = self.flights.clone();
            let k2 = key.clone();
            let flight = Arc::new(Flight {
                state: Mutex::new(FlightState {
                    head: None,
                    pieces: VecDeque::new(),
                    base: 0,
                    published: 0,
                    end: None,
                    abandoned: false,
                    slots: Vec::new(),
                    free: Vec::new(),
                    live: 0,
                    cursors: BTreeMap::new(),
                    waiting: Vec::new(),
                }),
                priority: req.priority().cloned(),
                cancel: CancellationToken::new(),
                unlink: Box::new(move |me: &Arc<Flight<Sh::Head, Sh::Error>>| {
                    let mut map = lock(&flights);
                    if map.get(&k2).is_some_and(|f| Arc::ptr_eq(f, me)) && me.unwanted() {
                        map.remove(&k2);
                        return true;
                    }
                    false
                }),
            });
            map.insert(key.clone(), flight.clone());
            let joined = Joined::new(flight.clone());
            (flight, joined)
        };
        if let Some(o) = &self.observe {
            o(&req, false);
        }
        // Take the service that was driven to readiness; leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let fut = inner.call(req);
        let leader = Leader {
            flight: flight.clone(),
            entry: Some((self.flights.clone(), key)),
        };
        let durable = self.durable.clone();
        let share = self.share.clone();
        let cancel = flight.cancel.clone();
        // The detached leader stays in the span of the request that started it.
        let task = async move {
            let work = async move {
                match fut.await {
                    Ok(answer) => {
                        let (head, body) = share.split(answer);
                        leader.flight.update(|st| st.head = Some(head));
                        drive(body, leader, durable).await
                    }
                    Err(e) => leader.finish(Err(share.failed(e))),
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {
                    tracing::debug!("speculative call cancelled: no reader wants it");
                }
                _ = work => {}
            }
        };
        self.tasks.spawn(tracing::Instrument::in_current_span(task));
        ready(Ok(joined))
    }
}

/// The leader's hold on its flight and its map entry; finishing (or dropping) releases both.
pub(super) struct Leader<Q: std::hash::Hash + Eq, H, E> {
    pub(super) flight: Arc<Flight<H, E>>,
    pub(super) entry: Option<(Flights<Q, H, E>, Q)>,
}

impl<Q: std::hash::Hash + Eq, H, E> Leader<Q, H, E> {
    pub(super) fn forget(&mut self) {
        if let Some((flights, key)) = self.entry.take() {
            let mut map = lock(&flights);
            if map.get(&key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
                map.remove(&key);
            }
        }
    }

    pub(super) fn finish(mut self, end: Result<bool, E>) {
        match end {
            Err(e) => {
                // Leave the map first: nobody may join a flight that is known to have failed.
                self.forget();
                self.flight.update(|st| st.end = Some(End::Failed(e)));
            }
            Ok(durable) => {
                self.flight.update(|st| {
                    st.end = Some(End::Done { durable });
                    if durable {
                        // Everyone continues from the durable copy.
                        st.base = st.total();
                        st.pieces.clear();
                    } else {
                        st.trim();
                    }
                });
                self.forget();
            }
        }
    }
}

impl<Q: std::hash::Hash + Eq, H, E> Drop for Leader<Q, H, E> {
    fn drop(&mut self) {
        if self.entry.is_some() {
            self.forget();
            self.flight.update(|st| st.abandoned = true);
        }
    }
}

pub(super) async fn drive<B, H, E, Q, D>(mut body: B, leader: Leader<Q, H, E>, durable: D)
where
    B: Stream<Item = Result<Bytes, E>> + Unpin,
    Q: std::hash::Hash + Eq,
    D: Durability<B>,
{
    let end = loop {
        match body.next().await {
            Some(Ok(b)) if b.is_empty() => {}
            Some(Ok(b)) => leader.flight.update(|st| {
                st.published += b.len() as u64;
                st.pieces.push_back(b);
            }),
            Some(Err(e)) => break Err(e),
            None => break Ok(durable.is_durable(&body)),
        }
    };
    leader.finish(end);
}
