//! The read path, in pipeline order.
//!
//! - [`object`]: a GET planned as chunks — the first before the headers, then readahead,
//!   streamed in order, every wait bounded by the reader's progress deadline.
//! - [`meta`]: what an object is (metadata lookups, one-trip with the first read's GET).
//! - [`lookup`]: the top of the chunk stack — a store hit streams from the store; a miss goes
//!   on down (and a reader that falls behind a committed chunk continues from the store).
//! - [`fill`]: the core service — one origin (or peer) stream per chunk, teed into the store
//!   and committed when its length is verified.
//! - [`budget`]: the byte budget every piece held outside the store is charged to.
//! - [`chunk`]: what the chunk stack is asked ([`chunk::ChunkRequest`]).
//!
//! Below it sit the origins (`crate::origin`) and the stores (`crate::store`); the plain
//! types all of them share are in `crate::model`. The chunk stack's order is stated once,
//! where it is built (`crate::app::chunk_stack`).

pub mod budget;
pub mod chunk;
pub mod fill;
pub mod lookup;
pub mod meta;
pub mod object;
