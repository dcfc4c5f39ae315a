//! # Shoal
//!
//! A read-through chunk cache that speaks the S3 API. Clients point any S3 SDK or tool at it;
//! it answers GET, HEAD and LIST from its own store and fills misses from the origin, once per
//! chunk however many clients ask at the same time.
//!
//! ## Two crates: the server, and the layers
//!
//! The read path is a tower stack. Its generic concerns are reusable layers in the
//! `shoal-layers` crate (`layers/` in this workspace, re-exported here as [`layer`]) —
//! [`SingleflightLayer`], [`NegativeCacheLayer`], [`ConcurrencyLimitLayer`],
//! [`RetryUntilCommitLayer`] and [`PeerRoutingLayer`] — each with one implementation and two
//! faces: Shoal's chunk byte streams, and plain HTTP services, so they go on any axum `Router`
//! (`Router::new().route(..).layer(SingleflightLayer::http())`). A user of the layers alone
//! depends on that crate, which has no feature flags and none of the server's dependencies:
//!
//! ```toml
//! shoal-layers = "0.1"   # tower, http, tokio, moka; no AWS
//! ```
//!
//! This crate is the server: the S3 front, the read path, the stores, the origin clients, the
//! cluster and the binary. Those parts are Shoal's own, not reusable layers: `StoreLookup`
//! (`shoal::read::lookup`) and `Fill` (`shoal::read::fill`) know Shoal's chunk keys, stores
//! and byte budget.
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
//! byte held outside the store is charged to one process-wide budget (`shoal::read::budget`), and
//! both are queued for through a [`layer::Gate`] that serves a client's current chunk before
//! anybody's readahead.
//!
//! See `SPEC.md` for the behaviour contract and `DESIGN.md` for the shape of the code.

#![warn(missing_docs)]

/// The tower layers (the `shoal-layers` crate), under the name Shoal's own code uses.
pub use shoal_layers as layer;

pub mod app;
pub mod cluster;
pub mod config;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod model;
pub mod origin;
pub mod read;
pub mod s3;
pub mod sdk;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod wire;

pub use layer::{
    ConcurrencyLimitLayer, NegativeCacheLayer, PeerRoutingLayer, RetryUntilCommitLayer,
    SingleflightLayer,
};
