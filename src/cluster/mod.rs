//! The cluster: replicas that fill each chunk once between them.
//!
//! Each chunk has one owner among the replicas ([`rendezvous`] hashing over its path, under
//! the current [`membership`]). A replica that gets a request for a chunk it does not own asks
//! the owner over `/internal/fill` ([`internal`]); the owner serves it from its store or from
//! the same fill its own clients join, so the origin is asked once per chunk however many
//! clients on however many replicas want it.
//!
//! In the chunk stack the peer call sits under the singleflight, as the fill's source
//! (`StoreLookup ▸ Singleflight ▸ Fill ▸ PeerRouting ▸ origin`): a replica asks the owner once
//! per chunk however many of its own clients want it, and the bytes it receives are buffered
//! and charged to its byte budget exactly like origin bytes.
//!
//! **A silent peer costs one short wait, not one per chunk.** The owner acknowledges a fill at
//! once and streams when it has bytes, so the asker waits `cluster.peer_timeout` for the
//! acknowledgement and the origin's deadlines for the bytes ([`internal`]); a peer that does
//! not acknowledge (or cannot be reached, or answers 5xx) is [`ejection`]-ed: its chunks are
//! filled locally without asking it until a probe after a backoff shows it is back.
//!
//! **One copy per cluster.** A chunk is kept by its owner only, so the cluster's capacity is the
//! sum of the replicas' stores, not one replica's. The exception is a small [`HotCache`] per
//! replica (`cluster.hot_cache`): a chunk this replica had to ask its owner for more than once
//! recently is kept here too, as groupcache does, so a single very hot chunk does not pin the
//! owner's network for every reader in the cluster.

pub mod ejection;
pub mod internal;
pub mod membership;
pub mod rendezvous;

pub use membership::Membership;
pub use rendezvous::Member;

// The hot cache is a store (kept beside the others); the cluster decides what goes in it.
pub use crate::store::hot::{HotCache, Tiered};
