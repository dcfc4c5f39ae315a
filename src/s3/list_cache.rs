//! The LIST cache (`list.ttl`, off by default): identical LISTs — same bucket and every
//! parameter — are answered from one origin page for `list.ttl`, and concurrent identical
//! LISTs make one origin request.
//!
//! Why it is off by default: a LIST answered from the cache does not show objects written or
//! deleted at the origin since, for up to `list.ttl`. Object *bytes* are never affected (GET
//! and HEAD pin versions by ETag); only what a listing shows. For datasets and model
//! repositories that are written once and listed by thousands of readers at start-up, a few
//! seconds of staleness buys one origin LIST instead of thousands. Errors are never cached.

use crate::error::OriginError;
use crate::origin::{ListPage, ListRequest, Origin};
use std::sync::Arc;
use std::time::Duration;

/// See the module docs.
#[derive(Clone)]
pub struct ListCache {
    /// `None` when `list.ttl` is 0.
    pages: Option<moka::future::Cache<(String, ListRequest), Arc<ListPage>>>,
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
        }
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
            return Ok((Arc::new(origin.list(bucket, req).await?), Listed::Origin));
        };
        let entry = pages
            .entry((bucket.to_owned(), req.clone()))
            .or_try_insert_with(async { origin.list(bucket, req).await.map(Arc::new) })
            .await
            .map_err(|e| (*e).clone())?;
        let from = if entry.is_fresh() {
            Listed::Origin
        } else {
            Listed::Cache
        };
        Ok((entry.into_value(), from))
    }
}
