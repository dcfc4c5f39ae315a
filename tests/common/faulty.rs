//! An `Origin` wrapper that counts what reaches the real origin and injects faults there.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use shoal::error::{Error, OriginError};
use shoal::origin::{
    ByteStream, ListPage, ListRequest, ObjectMeta, Origin, RangeAnswer, RangeRequest,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
pub struct Rules {
    /// (key, offset) → how many more calls fail with a transient error.
    pub fail_first: HashMap<(String, u64), u32>,
    /// key → the next body of this key breaks after this many bytes (once).
    pub cut_after: HashMap<String, u64>,
    /// key → delay before every piece of the body.
    pub slow: HashMap<String, Duration>,
    /// keys whose HEAD answers without an ETag.
    pub strip_etag: HashSet<String>,
    /// key → delay before every range GET is sent (origin latency).
    pub latency: HashMap<String, Duration>,
    /// (key, offset) → the next range GET there waits this long before it is sent (once).
    pub delay_next: HashMap<(String, u64), Duration>,
}

pub struct Faulty {
    inner: Arc<dyn Origin>,
    pub heads: AtomicUsize,
    pub lists: AtomicUsize,
    /// Range GETs dropped while they waited (see `delay_next`).
    pub cancelled: AtomicUsize,
    /// Whether a cold GET's first-chunk GET (`Origin::get_first`) reaches the origin as one
    /// request (counted as a GET at offset 0). Off: it fails here unseen, and Shoal asks HEAD
    /// then GET as before, so the fault rules above apply to every chunk as they always did.
    pub one_trip: std::sync::atomic::AtomicBool,
    pub gets: Mutex<Vec<(String, u64, u64)>>,
    /// Every range GET in order: (key, offset, urgent when issued).
    pub issued: Mutex<Vec<(String, u64, bool)>>,
    /// Body bytes the origin delivered, per (key, offset) of the request.
    pub delivered: Arc<Mutex<HashMap<(String, u64), u64>>>,
    pub rules: Mutex<Rules>,
}

impl Faulty {
    pub fn new(inner: Arc<dyn Origin>) -> Arc<Self> {
        Arc::new(Faulty {
            inner,
            heads: AtomicUsize::new(0),
            lists: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
            one_trip: Default::default(),
            gets: Mutex::new(Vec::new()),
            issued: Mutex::new(Vec::new()),
            delivered: Arc::default(),
            rules: Mutex::new(Rules::default()),
        })
    }

    /// `get_first` and `get_suffix` answer only when the test turned `one_trip` on; else they
    /// fail as a transient error would, and Shoal asks HEAD.
    fn one_trip_allowed(&self) -> Result<(), OriginError> {
        if self.one_trip.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(OriginError::Transient(
                "one round trip is off in this test".into(),
            ))
        }
    }

    /// Origin range GETs made for `key`, as (offset, len).
    pub fn gets_for(&self, key: &str) -> Vec<(u64, u64)> {
        self.gets
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _, _)| k == key)
            .map(|(_, o, l)| (*o, *l))
            .collect()
    }

    /// Delay every piece of `key`'s bodies by `d` (`None` to stop).
    pub fn slow(&self, key: &str, d: Option<Duration>) {
        let mut r = self.rules.lock().unwrap();
        match d {
            Some(d) => r.slow.insert(key.into(), d),
            None => r.slow.remove(key),
        };
    }

    /// The next body of `key` breaks after `n` bytes.
    pub fn cut_after(&self, key: &str, n: u64) {
        self.rules.lock().unwrap().cut_after.insert(key.into(), n);
    }

    /// Every range GET of `key` waits `d` before it reaches the origin.
    /// The next range GET of `key` at `offset` waits `d` before it is sent; a GET dropped
    /// while it waits (a hedge won) is counted in `cancelled`.
    pub fn delay_next(&self, key: &str, offset: u64, d: Duration) {
        self.rules
            .lock()
            .unwrap()
            .delay_next
            .insert((key.into(), offset), d);
    }

    pub fn latency(&self, key: &str, d: Duration) {
        self.rules.lock().unwrap().latency.insert(key.into(), d);
    }

    /// `key`'s HEAD answers without an ETag.
    pub fn strip_etag(&self, key: &str) {
        self.rules.lock().unwrap().strip_etag.insert(key.into());
    }

    /// The next `n` range GETs of `key` at `offset` fail (transiently).
    pub fn fail_first(&self, key: &str, offset: u64, n: u32) {
        self.rules
            .lock()
            .unwrap()
            .fail_first
            .insert((key.into(), offset), n);
    }

    pub fn heads(&self) -> usize {
        self.heads.load(Ordering::SeqCst)
    }

    /// Body bytes delivered for the GET of `key` at `offset` (all such GETs together).
    pub fn delivered(&self, key: &str, offset: u64) -> u64 {
        self.delivered
            .lock()
            .unwrap()
            .get(&(key.to_owned(), offset))
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl Origin for Faulty {
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, OriginError> {
        self.heads.fetch_add(1, Ordering::SeqCst);
        let mut m = self.inner.head(bucket, key).await?;
        if self.rules.lock().unwrap().strip_etag.contains(key) {
            m.etag.clear();
        }
        Ok(m)
    }

    async fn get_range(&self, req: &RangeRequest) -> Result<RangeAnswer, OriginError> {
        let (key, offset, len) = (&*req.key, req.offset, req.len);
        self.gets
            .lock()
            .unwrap()
            .push((key.to_owned(), offset, len));
        let urgent = req.priority.as_ref().is_none_or(|p| p.is_urgent());
        self.issued
            .lock()
            .unwrap()
            .push((key.to_owned(), offset, urgent));

        let delay = self
            .rules
            .lock()
            .unwrap()
            .delay_next
            .remove(&(key.to_owned(), offset));
        if let Some(d) = delay {
            struct Counted<'a>(&'a AtomicUsize, bool);
            impl Drop for Counted<'_> {
                fn drop(&mut self) {
                    if !self.1 {
                        self.0.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            let mut guard = Counted(&self.cancelled, false);
            tokio::time::sleep(d).await;
            guard.1 = true;
        }
        let latency = self.rules.lock().unwrap().latency.get(key).copied();
        if let Some(d) = latency {
            tokio::time::sleep(d).await;
        }
        let (cut, slow) = {
            let mut r = self.rules.lock().unwrap();

            if let Some(n) = r.fail_first.get_mut(&(key.to_owned(), offset)) {
                if *n > 0 {
                    *n -= 1;
                    return Err(OriginError::Transient("injected failure".into()));
                }
            }
            (r.cut_after.remove(key), r.slow.get(key).copied())
        };
        let mut answer = self.inner.get_range(req).await?;
        let body = std::mem::replace(&mut answer.body, futures_util::stream::empty().boxed());
        enum St {
            Go(ByteStream, u64),
            Fail,
            Done,
        }
        let cut_err = || Error::Origin(OriginError::Transient("injected cut".into()));
        let (tally, tally_key) = (self.delivered.clone(), (key.to_owned(), offset));
        let body = body
            .inspect(move |r| {
                if let Ok(b) = r {
                    *tally.lock().unwrap().entry(tally_key.clone()).or_insert(0) += b.len() as u64;
                }
            })
            .boxed();

        let s = futures_util::stream::unfold(St::Go(body, 0), move |st| async move {
            match st {
                St::Done => None,
                St::Fail => Some((Err(cut_err()), St::Done)),
                St::Go(mut body, sent) => {
                    if let Some(d) = slow {
                        tokio::time::sleep(d).await;
                    }
                    match body.next().await {
                        Some(Ok(b)) => match cut {
                            Some(limit) if sent + b.len() as u64 > limit => {
                                let keep = (limit - sent) as usize;
                                if keep > 0 {
                                    Some((Ok::<Bytes, Error>(b.slice(..keep)), St::Fail))
                                } else {
                                    Some((Err(cut_err()), St::Done))
                                }
                            }
                            _ => {
                                let n = b.len() as u64;
                                Some((Ok(b), St::Go(body, sent + n)))
                            }
                        },
                        Some(Err(e)) => Some((Err(e), St::Done)),
                        None => None,
                    }
                }
            }
        });
        answer.body = s.boxed();
        Ok(answer)
    }

    async fn get_first(
        &self,
        bucket: &str,
        key: &str,
        len: u64,
    ) -> Result<(ObjectMeta, RangeAnswer), OriginError> {
        self.one_trip_allowed()?;
        self.gets.lock().unwrap().push((key.to_owned(), 0, len));
        self.issued.lock().unwrap().push((key.to_owned(), 0, true));
        self.inner.get_first(bucket, key, len).await
    }

    async fn get_suffix(
        &self,
        bucket: &str,
        key: &str,
        len: u64,
    ) -> Result<(ObjectMeta, RangeAnswer), OriginError> {
        self.one_trip_allowed()?;
        let (meta, answer) = self.inner.get_suffix(bucket, key, len).await?;
        let n = len.min(meta.size);
        let start = meta.size - n;
        self.gets.lock().unwrap().push((key.to_owned(), start, n));
        self.issued
            .lock()
            .unwrap()
            .push((key.to_owned(), start, true));
        Ok((meta, answer))
    }

    async fn list(&self, bucket: &str, req: &ListRequest) -> Result<ListPage, OriginError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        // A little latency, so that concurrent identical LISTs overlap.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.inner.list(bucket, req).await
    }

    async fn head_bucket(&self, bucket: &str) -> Result<(), OriginError> {
        self.inner.head_bucket(bucket).await
    }

    async fn list_buckets(&self) -> Result<shoal::origin::BucketList, OriginError> {
        self.inner.list_buckets().await
    }

    async fn head_selected(
        &self,
        bucket: &str,
        key: &str,
        sel: &shoal::origin::Selector,
    ) -> Result<ObjectMeta, OriginError> {
        if sel.is_current() {
            return self.head(bucket, key).await;
        }
        self.heads.fetch_add(1, Ordering::SeqCst);
        self.inner.head_selected(bucket, key, sel).await
    }

    async fn passthrough(
        &self,
        req: shoal::origin::RawRequest,
    ) -> Result<shoal::origin::RawAnswer, OriginError> {
        self.inner.passthrough(req).await
    }

    fn region(&self) -> &str {
        self.inner.region()
    }
}
