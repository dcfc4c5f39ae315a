//! The tower layers of Shoal's read path, each usable on its own — in Shoal's chunk stack, and
//! on any axum `Router` or hyper service.
//!
//! Each layer has one implementation and two faces:
//!
//! - **byte streams**: a service whose response is a `Stream<Item = Result<Bytes, E>>`, as in
//!   Shoal's chunk stack (the layer's plain constructor, e.g. [`SingleflightLayer::new`]);
//! - **HTTP**: `http::Request<B>` → `http::Response<impl http_body::Body>` with streaming
//!   bodies, so `Router::new().route(…).layer(SingleflightLayer::http())` just works (the
//!   `http` constructors; adapters in [`mod@http`]).
//!
//! | layer | what it does | HTTP face |
//! |---|---|---|
//! | [`SingleflightLayer`] | one in-flight call per key; joiners stream the leader's bytes as they arrive | identical concurrent GET/HEADs (method, URI, chosen headers) make one call |
//! | [`NegativeCacheLayer`] | remembers answers, failures it is told are lasting (404) included, and coalesces concurrent misses | 404s (and optionally small successes) answered from memory for a TTL |
//! | [`ConcurrencyLimitLayer`] | bounds in-flight calls until the response *body* ends; fair, prioritised, with a queue timeout | `poll_ready` reports capacity honestly (for `LoadShed`, `Buffer`); a bounded queue, then 503 + `Retry-After` |
//! | [`RetryUntilCommitLayer`] | retries before the first byte, resumes a broken stream from the exact byte | over an HTTP client: a GET whose body breaks is resumed with `Range` + `If-Match` |
//! | [`PeerRoutingLayer`] | sends a request to the peer that owns it, falls back (or resumes) locally | GET/HEAD forwarded to a peer by a route function |
//!
//! They depend only on the small traits below ([`KeyOf`], [`Resumable`], [`Classify`],
//! [`Queued`]), never on S3. This crate has no feature flags and depends on no AWS, config or
//! server crates: the `shoal` server depends on it, not the other way round.
//! [`Gate`] is the fair, prioritised queue they share.
//!
//! Shoal's chunk stack, top to bottom (`StoreLookup` and `Fill` are Shoal's own services, in
//! `shoal::read::lookup` and `shoal::read::fill`, not reusable layers):
//!
//! ```text
//! StoreLookup      hit → stream from the store; follow the fill; continue from either at the byte
//! Singleflight     one fill per chunk key; joiners read the leader's buffer as it grows
//! Fill (core)      reserve budget, cut charged pieces, feed a store writer, commit on completion
//! PeerRouting      in a cluster: ask the chunk's owner; on failure fall through / resume locally
//! ConcurrencyLimit origin permit held until the body ends; urgent first; deadline → SlowDown
//! RetryUntilCommit retry before the first byte, resume by offset after it
//! Origin           ranged GET pinned by If-Match; every answer verified
//! ```

pub mod gate;
pub mod http;
pub mod limit;
pub mod negative_cache;
pub mod peer;
mod resume;
pub mod retry;
pub mod singleflight;

pub use gate::{Gate, Priority, Queued, Wait};
pub use limit::{ConcurrencyLimit, ConcurrencyLimitLayer, Permitted, QueueTimeout};
pub use negative_cache::{NegativeCache, NegativeCacheLayer};
pub use peer::{PeerRouting, PeerRoutingLayer, Route, Routed};
pub use retry::{RetryPolicy, RetryUntilCommit, RetryUntilCommitLayer, Truncated};
pub use singleflight::{Durability, Released, Singleflight, SingleflightLayer};

use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking a poisoned value as it is: nothing in the layers panics while holding
/// these locks, so the value is still consistent, and a layer must not fail every later call
/// because one caller's task panicked elsewhere.
///
/// Public for the `shoal` server, whose own locks follow the same rule.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Extracts the deduplication or cache key of a request.
///
/// Implemented for any `Fn(&Req) -> K`, so a closure is enough:
/// `SingleflightLayer::new(|r: &MyReq| r.path.clone())`.
pub trait KeyOf<Req> {
    /// The key type.
    type Key: Hash + Eq + Clone + Send + Sync + 'static;
    /// The key of `req`.
    fn key_of(&self, req: &Req) -> Self::Key;
}

impl<Req, K, F> KeyOf<Req> for F
where
    F: Fn(&Req) -> K,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = K;
    fn key_of(&self, req: &Req) -> K {
        self(req)
    }
}

/// How a layer should treat an error: retry it, remember it, or pass it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Might succeed if asked again (5xx, reset, timeout, throttling).
    Transient,
    /// An answer about the thing asked for that holds for a while (404, no ETag): worth
    /// caching negatively so a stampede of clients does not each ask again.
    Negative,
    /// Final for this request but not worth remembering (auth, ETag changed, bad request).
    Final,
}

/// Classifies errors for the layers that retry ([`RetryUntilCommitLayer`]) or remember
/// ([`NegativeCacheLayer`]) them, which must not know what the errors mean.
///
/// Implemented for any `Fn(&E) -> Class`.
pub trait Classify<E> {
    /// The class of `e`.
    fn classify(&self, e: &E) -> Class;
}

impl<E, F: Fn(&E) -> Class> Classify<E> for F {
    fn classify(&self, e: &E) -> Class {
        self(e)
    }
}

/// A request for a byte stream that can be re-issued for the part not yet received.
///
/// This is what makes resuming safe: the request must pin the content (Shoal's origin requests
/// carry `If-Match`), so the bytes after `delivered` are the same bytes the broken stream would
/// have sent.
pub trait Resumable: Sized {
    /// How many bytes the complete answer has, if known; a stream that ends early is then
    /// treated as broken rather than finished.
    fn expected_len(&self) -> Option<u64>;
    /// The request for everything after the first `delivered` bytes.
    fn resume_from(&self, delivered: u64) -> Self;
}
