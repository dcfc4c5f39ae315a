//! `RetryUntilCommitLayer`: retry a byte-stream request, and resume it from the exact offset
//! when the stream breaks.
//!
//! Before the first byte, a failed call is simply retried with exponential backoff. After it,
//! a plain retry would resend bytes the reader already has, so the layer instead re-issues the
//! request for the remainder ([`Resumable::resume_from`]) and splices the new stream on: the
//! reader sees one unbroken stream. This is only safe because the request pins the content
//! (Shoal's origin requests carry `If-Match`), which is what the `Resumable` contract asks.
//!
//! The budget (`attempts`, `max_total`) counts attempts *without progress*: every received
//! byte resets it. A long transfer over a flaky link therefore completes as long as it keeps
//! moving, while a dead origin is given up on after the configured attempts and time. Only
//! errors classified [`Class::Transient`] are retried; a 404 or an ETag change is final.

pub mod http;

use super::Resumable;
use super::{Class, Classify};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// The stream ended before the length the request promised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stream ended after {got} of {expected} bytes")]
pub struct Truncated {
    /// Bytes received in all.
    pub got: u64,
    /// Bytes the request promised.
    pub expected: u64,
}

/// How hard to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls without progress, the first included.
    pub attempts: u32,
    /// First backoff; doubles each time.
    pub backoff_initial: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
    /// Time allowed without progress.
    pub max_total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            max_total: Duration::from_secs(5),
        }
    }
}

/// Applies [`RetryUntilCommit`].
///
/// ```
/// use shoal_layers::{Class, RetryPolicy, RetryUntilCommitLayer};
///
/// #[derive(Debug)]
/// enum FetchError { Reset, NotFound }
/// // Only what might succeed if asked again is retried.
/// let classify = |e: &FetchError| match e {
///     FetchError::Reset => Class::Transient,
///     FetchError::NotFound => Class::Negative,
/// };
/// let layer = RetryUntilCommitLayer::new(RetryPolicy::default(), classify);
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct RetryUntilCommitLayer<C> {
    policy: RetryPolicy,
    classify: C,
    on_retry: Option<OnRetry>,
}

/// A hook told of every repeated or resumed attempt.
type OnRetry = std::sync::Arc<dyn Fn() + Send + Sync>;

impl<C> RetryUntilCommitLayer<C> {
    /// Retries what `classify` calls transient, within `policy`.
    pub fn new(policy: RetryPolicy, classify: C) -> Self {
        RetryUntilCommitLayer {
            policy,
            classify,
            on_retry: None,
        }
    }

    /// Calls `f` for every attempt repeated or resumed after a failure (for metrics).
    pub fn on_retry(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_retry = Some(std::sync::Arc::new(f));
        self
    }
}

impl<S, C: Clone> Layer<S> for RetryUntilCommitLayer<C> {
    type Service = RetryUntilCommit<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        RetryUntilCommit {
            inner,
            policy: self.policy,
            classify: self.classify.clone(),
            on_retry: self.on_retry.clone(),
        }
    }
}

/// Retries and resumes a byte-stream service. See the module docs.
#[derive(Clone)]
pub struct RetryUntilCommit<S, C> {
    inner: S,
    policy: RetryPolicy,
    classify: C,
    on_retry: Option<OnRetry>,
}

struct Attempt<S, Req, C> {
    inner: S,
    req: Req,
    classify: C,
    policy: RetryPolicy,
    /// Calls since the last progress.
    tries: u32,
    backoff: Duration,
    deadline: Instant,
    delivered: u64,
    on_retry: Option<OnRetry>,
    /// Calls made so far, for the span of each.
    number: u32,
}

impl<S, Req, C> Attempt<S, Req, C>
where
    S: Service<Req> + Clone,
    Req: Resumable,
    C: Classify<S::Error>,
{
    fn progress(&mut self) {
        self.tries = 1;
        self.backoff = self.policy.backoff_initial;
        self.deadline = Instant::now() + self.policy.max_total;
    }

    /// Whether `e` deserves another call within the budget.
    fn allows(&self, e: &S::Error) -> bool {
        self.classify.classify(e) == Class::Transient
            && self.tries < self.policy.attempts
            && Instant::now() + self.backoff <= self.deadline
    }

    /// Sleeps the backoff before the next call and counts it.
    async fn back_off(&mut self) {
        tracing::debug!(tries = self.tries, delivered = self.delivered, "retrying");
        if let Some(f) = &self.on_retry {
            f();
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(self.policy.backoff_max);
        self.tries += 1;
    }

    async fn open(&mut self) -> Result<S::Response, S::Error> {
        loop {
            let req = self.req.resume_from(self.delivered);
            self.number += 1;
            let span = tracing::debug_span!("attempt", number = self.number, from = self.delivered);
            match tracing::Instrument::instrument(self.inner.clone().oneshot(req), span).await {
                Ok(b) => return Ok(b),
                Err(e) => {
                    if !self.allows(&e) {
                        return Err(e);
                    }
                    self.back_off().await;
                }
            }
        }
    }
}

impl<S, C, Req> Service<Req> for RetryUntilCommit<S, C>
where
    Req: Resumable + Send + Sync + 'static,
    S: Service<Req> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Response: Stream<Item = Result<Bytes, S::Error>> + Send + Unpin + 'static,
    S::Error: From<Truncated> + Send + 'static,
    C: Classify<S::Error> + Clone + Send + Sync + 'static,
{
    type Response = BoxStream<'static, Result<Bytes, S::Error>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Every attempt drives a fresh clone to readiness with `oneshot`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let mut at = Attempt {
            inner: self.inner.clone(),
            req,
            classify: self.classify.clone(),
            policy: self.policy,
            tries: 1,
            backoff: self.policy.backoff_initial,
            deadline: Instant::now() + self.policy.max_total,
            delivered: 0,
            on_retry: self.on_retry.clone(),
            number: 0,
        };
        Box::pin(async move {
            let first = at.open().await?;
            let stream = futures_util::stream::unfold(
                (at, Some(first), false),
                |(mut at, mut body, done)| async move {
                    if done {
                        return None;
                    }
                    loop {
                        let b = match body.as_mut() {
                            Some(b) => b,
                            None => match at.open().await {
                                Ok(b) => body.insert(b),
                                Err(e) => return Some((Err(e), (at, None, true))),
                            },
                        };
                        let err = match b.next().await {
                            Some(Ok(bytes)) => {
                                at.delivered += bytes.len() as u64;
                                at.progress();
                                return Some((Ok(bytes), (at, body, false)));
                            }
                            Some(Err(e)) => e,
                            None => match at.req.expected_len() {
                                Some(n) if at.delivered < n => Truncated {
                                    got: at.delivered,
                                    expected: n,
                                }
                                .into(),
                                _ => return None,
                            },
                        };
                        body = None;
                        if !at.allows(&err) {
                            return Some((Err(err), (at, None, true)));
                        }
                        at.back_off().await;
                    }
                },
            );
            Ok(stream.boxed())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};
    use tower::service_fn;

    #[derive(Debug, Clone, PartialEq)]
    enum E {
        Flaky,
        Gone,
        Short,
    }
    impl From<Truncated> for E {
        fn from(_: Truncated) -> Self {
            E::Short
        }
    }
    #[derive(Clone)]
    struct C;
    impl Classify<E> for C {
        fn classify(&self, e: &E) -> Class {
            match e {
                E::Gone => Class::Final,
                _ => Class::Transient,
            }
        }
    }

    /// Serves `data[off..]`, failing according to a script of outcomes.
    #[derive(Clone, Debug)]
    struct Req {
        off: u64,
        len: u64,
    }
    impl Resumable for Req {
        fn expected_len(&self) -> Option<u64> {
            Some(self.len)
        }
        fn resume_from(&self, d: u64) -> Self {
            Req {
                off: self.off + d,
                len: self.len - d,
            }
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(4),
            max_total: Duration::from_secs(5),
        }
    }

    type Body = BoxStream<'static, Result<Bytes, E>>;

    /// `script[i]`: what call i does — `None` fails the call, `Some(n)` streams n bytes then
    /// breaks (or ends, if that reaches the end).
    fn scripted(
        data: &'static [u8],
        script: Vec<Option<usize>>,
        offs: Arc<Mutex<Vec<u64>>>,
    ) -> impl Service<Req, Response = Body, Error = E, Future = impl Send> + Clone + Send + Sync
    {
        let n = Arc::new(AtomicU32::new(0));
        let script = Arc::new(script);
        service_fn(move |r: Req| {
            let i = n.fetch_add(1, Ordering::SeqCst) as usize;
            offs.lock().unwrap().push(r.off);
            let step = script.get(i).cloned().unwrap_or(Some(usize::MAX));
            async move {
                let Some(k) = step else { return Err(E::Flaky) };
                let rest = &data[r.off as usize..];
                let k = k.min(rest.len());
                let mut items: Vec<Result<Bytes, E>> = rest[..k]
                    .chunks(3)
                    .map(|c| Ok(Bytes::copy_from_slice(c)))
                    .collect();
                if k < rest.len() {
                    items.push(Err(E::Flaky));
                }
                Ok(stream::iter(items).boxed())
            }
        })
    }

    async fn collect(b: Body) -> Result<Vec<u8>, E> {
        let mut out = Vec::new();
        let mut b = b;
        while let Some(x) = b.next().await {
            out.extend_from_slice(&x?);
        }
        Ok(out)
    }

    const DATA: &[u8] = b"0123456789abcdefghij";

    #[tokio::test]
    async fn failures_before_the_first_byte_are_retried() {
        let offs = Arc::default();
        let s =
            RetryUntilCommitLayer::new(policy(), C).layer(scripted(DATA, vec![None, None], offs));
        let b = s.oneshot(Req { off: 0, len: 20 }).await.unwrap();
        assert_eq!(collect(b).await.unwrap(), DATA);
    }

    #[tokio::test]
    async fn a_broken_stream_resumes_at_the_exact_offset() {
        let offs: Arc<Mutex<Vec<u64>>> = Arc::default();
        let s = RetryUntilCommitLayer::new(policy(), C).layer(scripted(
            DATA,
            vec![Some(7), Some(5)],
            offs.clone(),
        ));
        let b = s.oneshot(Req { off: 0, len: 20 }).await.unwrap();
        assert_eq!(collect(b).await.unwrap(), DATA);
        assert_eq!(*offs.lock().unwrap(), vec![0, 7, 12]);
    }

    #[tokio::test]
    async fn the_budget_ends_retries() {
        let offs = Arc::default();
        let s = RetryUntilCommitLayer::new(policy(), C).layer(scripted(
            DATA,
            vec![None, None, None, None],
            offs,
        ));
        assert_eq!(
            s.oneshot(Req { off: 0, len: 20 }).await.err(),
            Some(E::Flaky)
        );
    }

    #[tokio::test]
    async fn final_errors_are_not_retried() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let inner = service_fn(move |_r: Req| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<Body, E>(E::Gone) }
        });
        let s = RetryUntilCommitLayer::new(policy(), C).layer(inner);
        assert_eq!(s.oneshot(Req { off: 0, len: 1 }).await.err(), Some(E::Gone));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_stream_that_ends_early_is_resumed() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let inner = service_fn(move |r: Req| {
            let i = c.fetch_add(1, Ordering::SeqCst);
            async move {
                // First call ends cleanly after 4 bytes: a silent truncation.
                let end = if i == 0 { r.off + 4 } else { r.off + r.len };
                let v: Vec<Result<Bytes, E>> = vec![Ok(Bytes::copy_from_slice(
                    &DATA[r.off as usize..end as usize],
                ))];
                Ok::<Body, E>(stream::iter(v).boxed())
            }
        });
        let s = RetryUntilCommitLayer::new(policy(), C).layer(inner);
        let b = s.oneshot(Req { off: 0, len: 20 }).await.unwrap();
        assert_eq!(collect(b).await.unwrap(), DATA);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
