//! The tower layers of the read path, each usable on its own.
//!
//! The generic layers here are public `tower::Layer`s that do not know what S3 is: they
//! depend only on the small traits below ([`KeyOf`], [`Resumable`], [`Queued`]) and on
//! [`Classify`](crate::error::Classify), so another axum app can put, say, the
//! [`SingleflightLayer`] in front of its own byte-streaming service. [`Gate`] is the fair,
//! prioritised queue they share. [`StoreLookupLayer`] is the exception: it is Shoal's chunk
//! reader and knows Shoal's store and requests.
//!
//! Shoal's chunk stack, top to bottom:
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
pub mod limit;
pub mod negative_cache;
pub mod peer;
pub mod retry;
pub mod singleflight;
pub mod store_lookup;

pub use gate::{Gate, Priority, Queued, Wait};
pub use limit::{ConcurrencyLimit, ConcurrencyLimitLayer, Permitted, QueueTimeout};
pub use negative_cache::{NegativeCache, NegativeCacheLayer};
pub use peer::{PeerRouting, PeerRoutingLayer, Route, Routed};
pub use retry::{RetryPolicy, RetryUntilCommit, RetryUntilCommitLayer, Truncated};

pub use singleflight::{Durability, Released, Singleflight, SingleflightLayer};
pub use store_lookup::{StoreLookup, StoreLookupLayer};

use std::hash::Hash;

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
