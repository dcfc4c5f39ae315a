//! The LIST cache (`list.ttl`, off by default): identical LISTs — same bucket and every
//! parameter — are answered from one origin page for `list.ttl`, and concurrent identical
//! LISTs make one origin request.
//!
//! Why it is off by default: a LIST answered from the cache does not show objects written or
//! deleted at the origin since, for up to `list.ttl`. Object *bytes* are never affected (GET
//! and HEAD pin versions by ETag); only what a listing shows. For datasets and model
//! repositories that are written once and listed by thousands of readers at start-up, a few
//! seconds of staleness buys one origin LIST instead of thousands. Errors are never cached.
//!
//! **Retries.** Every origin LIST goes through [`ListCache::list`], cached or not, and is
//! retried here within `fill.retry` (attempts and backoff, as a chunk fill's) when it fails in
//! a way that may pass: a reset or stalled body, a 5xx, throttling, or an answer the origin
//! verified as malformed (a document cut short, an entry without `Key`, `Size` or `ETag`, a
//! `KeyCount` that does not match; see the origins' `list`). A LIST is small and idempotent, so
//! a plain retry is safe. Retrying here, once for every origin kind, and not in the S3 SDK,
//! is what lets a verified-bad answer be retried at all: the SDK only retries failures it
//! recognises, and its retries under these would multiply the attempts. When the budget is
//! spent the client gets the origin's retryable 5xx (502 `OriginUnreachable`, 503 `SlowDown`),
//! never a 400 and never a page that looks complete but is not.

use crate::error::{OriginError, ShoalClassify};
use crate::layer::{Class, Classify, RetryPolicy};
use crate::origin::{ListPage, ListRequest, Origin};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// See the module docs.
#[derive(Clone)]
pub struct ListCache {
    /// `None` when `list.ttl` is 0.
    pages: Option<moka::future::Cache<(String, ListRequest), Arc<ListPage>>>,
    /// How hard an origin LIST is tried (`fill.retry`).
    retry: RetryPolicy,
}

/// Where a LIST answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// This request asked the origin.
    Origin,
    /// A page cached earlier, or one asked for by a concurrent identical LIST.
    Cache,
}

impl ListCache {
    /// Pages kept for `ttl` (0 = no cache), at most `max_entries` of them.
    pub fn new(ttl: Duration, max_entries: u64) -> Self {
        ListCache {
            pages: (!ttl.is_zero()).then(|| {
                moka::future::Cache::builder()
                    .time_to_live(ttl)
                    .max_capacity(max_entries)
                    .build()
            }),
            retry: RetryPolicy::default(),
        }
    }

    /// Tries each origin LIST within `policy` (see the module docs).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Whether LIST pages are cached (`list.ttl` > 0).
    pub fn enabled(&self) -> bool {
        self.pages.is_some()
    }

    /// The page `req` asks for, from the cache when it is on.
    pub async fn list(
        &self,
        origin: &dyn Origin,
        bucket: &str,
        req: &ListRequest,
    ) -> Result<(Arc<ListPage>, Listed), OriginError> {
        let Some(pages) = &self.pages else {
            return Ok((
                Arc::new(self.ask_origin(origin, bucket, req).await?),
                Listed::Origin,
            ));
        };
        let entry = pages
            .entry((bucket.to_owned(), req.clone()))
            .or_try_insert_with(async { self.ask_origin(origin, bucket, req).await.map(Arc::new) })
            .await
            .map_err(|e| (*e).clone())?;
        let from = if entry.is_fresh() {
            Listed::Origin
        } else {
            Listed::Cache
        };
        Ok((entry.into_value(), from))
    }

    /// One origin LIST, retried while its failure is transient and the budget lasts. Every
    /// failure is logged: a LIST that failed quietly once answered 200 with a wrong page.
    async fn ask_origin(
        &self,
        origin: &dyn Origin,
        bucket: &str,
        req: &ListRequest,
    ) -> Result<ListPage, OriginError> {
        let started = Instant::now();
        let mut backoff = self.retry.backoff_initial;
        let mut attempt = 1u32;
        loop {
            let e = match origin.list(bucket, req).await {
                Ok(page) => return Ok(page),
                Err(e) => e,
            };
            let transient = ShoalClassify.classify(&e) == Class::Transient;
            let again = transient
                && attempt < self.retry.attempts
                && started.elapsed() + backoff <= self.retry.max_total;
            if !again {
                if transient {
                    tracing::warn!(%bucket, attempt, error = %e, "origin LIST failed; retry budget spent");
                }
                return Err(e);
            }
            tracing::warn!(%bucket, attempt, error = %e, "origin LIST failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.retry.backoff_max);
            attempt += 1;
        }
    }
}
