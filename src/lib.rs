//! # Shoal
//!
//! A read-through chunk cache that speaks the S3 API. Clients point any S3 SDK or tool at it;
//! it answers GET, HEAD and LIST from its own store and fills misses from the origin, once per
//! chunk however many clients ask at the same time.
//!
//! The read path is a tower stack; each concern is a reusable, generic layer in [`layer`]:
//!
//! ```text
//! s3 front (axum) → ObjectService (plan, first chunk before headers, readahead)
//!   metadata: NegativeCache ▸ origin HEAD
//!   chunks:   StoreLookup ▸ Singleflight ▸ Fill ▸ PeerRouting ▸ ConcurrencyLimit ▸
//!             RetryUntilCommit ▸ origin GET
//! ```
//!
//! In a cluster ([`cluster`]) `PeerRouting` asks each chunk's owner first, so the origin is
//! asked once per chunk across all replicas.
//!
//! ```text

//! ```
//!
//! Memory is a resource like origin slots: every byte held outside the store is charged to one
//! process-wide [`budget::Budget`], and both are queued for through a [`layer::Gate`] that
//! serves a client's current chunk before anybody's readahead.

//!
//! See `SPEC.md` for the behaviour contract and `DESIGN.md` for the shape of the code.

#![warn(missing_docs)]

pub mod app;
pub mod budget;
pub mod chunk;
pub mod cluster;
pub mod config;
pub mod error;
pub mod fill;
pub mod layer;
pub mod object;
pub mod origin;
pub mod s3;
pub mod server;
pub mod store;
pub mod telemetry;

pub use layer::{
    ConcurrencyLimitLayer, NegativeCacheLayer, RetryUntilCommitLayer, SingleflightLayer,
    StoreLookupLayer,
};
