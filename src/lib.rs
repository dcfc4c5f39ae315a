//! # Shoal
//!
//! A read-through chunk cache that speaks the S3 API. Clients point any S3 SDK or tool at it;
//! it answers GET, HEAD and LIST from its own store and fills misses from the origin, once per
//! chunk however many clients ask at the same time.
//!
//! ## Two crates in one: the server, and the layers
//!
//! The read path is a tower stack. Its generic concerns are reusable layers in [`layer`] —
//! [`SingleflightLayer`], [`NegativeCacheLayer`], [`ConcurrencyLimitLayer`],
//! [`RetryUntilCommitLayer`] and [`PeerRoutingLayer`] — each with one implementation and two
//! faces: Shoal's chunk byte streams, and plain HTTP services, so they go on any axum `Router`
//! (`Router::new().route(..).layer(SingleflightLayer::http())`). A user of the layers alone
//! compiles only them:
//!
//! ```toml
//! shoal = { version = "0.1", default-features = false }   # tower, http, tokio, moka; no AWS
//! ```
//!
//! The default `server` feature adds the S3 front, the stores, the origin clients, the
//! cluster and the binary. Those parts are Shoal's own, not reusable layers: `StoreLookup`
//! (`shoal::lookup`) and `Fill` (`shoal::fill`) know Shoal's chunk keys, stores and byte
//! budget.
//!
//! ```text
//! s3 front (axum) → ObjectService (plan, first chunk before headers, readahead)
//!   metadata: NegativeCache ▸ origin HEAD
//!   chunks:   StoreLookup ▸ Singleflight ▸ Fill ▸ PeerRouting ▸ ConcurrencyLimit ▸
//!             RetryUntilCommit ▸ origin GET
//! ```
//!
//! In a cluster (`shoal::cluster`) `PeerRouting` asks each chunk's owner first, so the origin
//! is asked once per chunk across all replicas. Memory is a resource like origin slots: every
//! byte held outside the store is charged to one process-wide budget (`shoal::budget`), and
//! both are queued for through a [`layer::Gate`] that serves a client's current chunk before
//! anybody's readahead.
//!
//! See `SPEC.md` for the behaviour contract and `DESIGN.md` for the shape of the code.

#![warn(missing_docs)]

pub mod layer;

#[cfg(feature = "server")]
pub mod app;
#[cfg(feature = "server")]
pub mod cluster;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod error;
#[cfg(all(test, feature = "server"))]
mod fuzz;
#[cfg(feature = "server")]
pub mod model;
#[cfg(feature = "server")]
pub mod origin;
#[cfg(feature = "server")]
pub mod read;
#[cfg(feature = "server")]
pub mod s3;
#[cfg(feature = "server")]
pub mod sdk;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod telemetry;
#[cfg(feature = "server")]
pub mod wire;

pub use layer::{
    ConcurrencyLimitLayer, NegativeCacheLayer, PeerRoutingLayer, RetryUntilCommitLayer,
    SingleflightLayer,
};
