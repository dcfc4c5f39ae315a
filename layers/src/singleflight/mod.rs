//! `SingleflightLayer`: one in-flight call per key, with streaming joiners.
//!
//! The first request for a key becomes the *leader*: its call to the inner service runs in a
//! detached task that appends every received piece to a shared buffer. Every request for the
//! same key while that runs — the leader's own client included — reads that buffer from the
//! start and then follows it as it grows. So a joiner sees its first byte as soon as the leader
//! does, not when the whole answer has arrived (orca buffered the full chunk first). Pieces are
//! `Bytes`: every reader shares the same memory; nothing is copied per joiner.
//!
//! **Memory.** While the call runs, its pieces are kept so that a late joiner can still read
//! from the start. When it ends, what happens to them depends on whether the answer is now
//! *durable* somewhere else (for Shoal: committed to the chunk store), as the layer's
//! [`Durability`] says:
//! - durable: every piece is dropped at once, and each reader that had not finished gets
//!   [`Released`] with its byte offset, meaning "continue from the durable copy". A slow or
//!   stalled reader therefore never pins a finished answer in memory;
//! - not durable: readers keep the pieces they still need, and each piece is dropped as soon
//!   as every reader is past it.
//!
//! **Detached, except speculation.** When the leader's client disconnects, the call goes on
//! and the other readers still get their bytes. The exception is *speculative* work
//! ([`Queued::priority`] not urgent, e.g. readahead): when its last reader goes away before any
//! urgent request joined, the call is cancelled, because nobody wants the bytes any more. An
//! urgent joiner promotes the flight (raises the leader's [`Priority`]), which also moves it
//! ahead in the queues below; a speculative joiner's priority is linked to the flight's, so
//! raising it later promotes the flight too.
//!
//! **Wake-ups** cost O(readers waiting) per published piece: each reader owns a slot for its
//! waker, so registering is O(1) however many readers there are.
//!
//! The key leaves the in-flight map when the inner stream ends. On failure it leaves *before*
//! the error is published, so a request arriving afterwards starts a fresh attempt instead of
//! being handed a stale transient error.
//!
//! **Two faces, one flight.** How an answer is shared is a [`Share`]: for a byte-stream
//! service ([`Streams`], the default) the answer *is* the stream; for an HTTP service
//! ([`SingleflightLayer::http`], in [`mod@http`]) it is a head — status and headers, which every
//! joiner gets a copy of — and a body streamed to all of them.

mod flight;
pub mod http;
mod layer;
mod service;
#[cfg(test)]
mod tests;

pub use flight::Joined;
use flight::*;
use layer::Observe;
pub use layer::SingleflightLayer;
use service::*;
pub use service::{Progress, Singleflight};

use super::gate::{Priority, Queued};
use super::KeyOf;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::{ready, Ready};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Layer, Service};

/// Ends a reader whose bytes were released because the answer became durable elsewhere:
/// continue reading from that copy at byte `at` (relative to the start of the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("flight released; continue from the durable copy at byte {at}")]
pub struct Released {
    /// Bytes this reader had received.
    pub at: u64,
}

/// Says whether a finished inner answer is durable elsewhere, so its buffer can be released.
pub trait Durability<R> {
    /// Called once the inner stream has ended successfully.
    fn is_durable(&self, body: &R) -> bool;
}

/// The default: answers are never durable elsewhere; buffers live until readers pass them.
#[derive(Clone, Copy, Debug, Default)]
pub struct NotDurable;

impl<R> Durability<R> for NotDurable {
    fn is_durable(&self, _body: &R) -> bool {
        false
    }
}

impl<R, F: Fn(&R) -> bool> Durability<R> for F {
    fn is_durable(&self, body: &R) -> bool {
        self(body)
    }
}

/// How the answers of the inner service are shared among a flight's readers: split into what
/// every reader gets a copy of (the head) and the bytes they all stream, and how a call that
/// failed is told to them.
pub trait Share<R, E> {
    /// Copied to every reader (`()` for plain streams; status and headers for HTTP).
    type Head: Clone + Send + Sync + 'static;
    /// What readers see when the call or its body fails.
    type Error: Clone + From<Released> + Send + 'static;
    /// The bytes.
    type Body: Stream<Item = Result<Bytes, Self::Error>> + Send + Unpin + 'static;
    /// Splits an answer.
    fn split(&self, answer: R) -> (Self::Head, Self::Body);
    /// The error readers see for a failed call.
    fn failed(&self, e: E) -> Self::Error;
}

/// The default [`Share`]: the answer is a byte stream, shared as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct Streams;

impl<R, E> Share<R, E> for Streams
where
    R: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: Clone + From<Released> + Send + 'static,
{
    type Head = ();
    type Error = E;
    type Body = R;
    fn split(&self, answer: R) -> ((), R) {
        ((), answer)
    }
    fn failed(&self, e: E) -> E {
        e
    }
}
