//! Error types of the read path.
//!
//! Errors are plain enums. They are mapped to S3 status codes and error codes in exactly one
//! place, `s3::error`, so the wire contract of SPEC §1.4 has one home. They are `Clone` because
//! one fill can fail for many waiting clients at once (singleflight hands the leader's error to
//! every joiner).

use std::sync::Arc;
use std::time::Duration;

/// What went wrong talking to the origin.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OriginError {
    /// The key does not exist (origin 404 on an object).
    #[error("object not found at origin")]
    NotFound,
    /// The bucket does not exist at the origin.
    #[error("bucket not found at origin")]
    NoSuchBucket,
    /// The origin refused Shoal's credentials (401/403).
    #[error("origin rejected the credentials: {0}")]
    Unauthorized(String),
    /// `If-Match` failed: the object changed since its metadata was read.
    #[error("object changed at origin (ETag no longer matches)")]
    EtagChanged,
    /// The origin gave no ETag, so a version cannot be pinned and nothing can be cached.
    #[error("origin object has no ETag")]
    MissingEtag,
    /// The origin asked us to slow down (503 SlowDown, 429).
    #[error("origin throttled the request: {0}")]
    Throttled(String),
    /// Network errors, timeouts, 5xx: worth another try.
    #[error("origin request failed: {0}")]
    Transient(String),
    /// The origin answered, but not what was asked for (wrong range, wrong length).
    #[error("origin answered out of contract: {0}")]
    Protocol(String),
    /// A request the origin rejected as invalid (4xx other than the above).
    #[error("origin rejected the request: {0}")]
    Rejected(String),
    /// The origin cannot serve this kind of request at all (an origin without versions,
    /// say): 501, never retried.
    #[error("not supported by the origin: {0}")]
    Unsupported(String),
}

/// An error of the chunk stack or of object planning.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The origin failed (after the retry budget, where retrying applies).
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// No origin slot became free within `fill.queue_timeout`.
    #[error("no origin slot free within {0:?}")]
    SlowDown(Duration),
    /// The store failed in a way that cannot be hidden by refilling.
    #[error("store: {0}")]
    Store(Arc<str>),
    /// A bug; reported as 500, never as a panic.
    #[error("internal error: {0}")]
    Internal(Arc<str>),
    /// Another replica did not serve a chunk (refused, unreachable, broke off). Handled inside
    /// the read path by serving locally; never shown to a client.
    #[error("peer: {0}")]
    Peer(Arc<str>),
    /// A chunk fill released its buffer because the chunk is now in the store; the reader
    /// continues from the store at this byte of the chunk. Handled inside the read path
    /// (`StoreLookup`); never shown to a client.
    #[error("chunk buffer released at byte {0}; continue from the store")]
    Released(u64),
}

impl From<crate::layer::singleflight::Released> for Error {
    fn from(r: crate::layer::singleflight::Released) -> Self {
        Error::Released(r.at)
    }
}

impl From<crate::layer::gate::GateTimeout> for Error {
    fn from(t: crate::layer::gate::GateTimeout) -> Self {
        Error::SlowDown(t.0)
    }
}

impl Error {
    /// Shorthand for an internal error.
    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into().into())
    }
}

pub use crate::layer::{Class, Classify};

/// The classification of Shoal's own errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShoalClassify;

impl Classify<OriginError> for ShoalClassify {
    fn classify(&self, e: &OriginError) -> Class {
        match e {
            // A request the origin can never serve (a Page blob) is remembered like a 404.
            OriginError::NotFound
            | OriginError::NoSuchBucket
            | OriginError::MissingEtag
            | OriginError::Unsupported(_) => Class::Negative,
            OriginError::Transient(_) | OriginError::Throttled(_) | OriginError::Protocol(_) => {
                Class::Transient
            }
            OriginError::Unauthorized(_) | OriginError::EtagChanged | OriginError::Rejected(_) => {
                Class::Final
            }
        }
    }
}

impl Classify<Error> for ShoalClassify {
    fn classify(&self, e: &Error) -> Class {
        match e {
            Error::Origin(o) => self.classify(o),
            Error::SlowDown(_) => Class::Final,
            Error::Store(_) | Error::Internal(_) | Error::Released(_) => Class::Final,
            Error::Peer(_) => Class::Transient,
        }
    }
}
