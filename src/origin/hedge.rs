//! Hedged origin GETs: a second identical GET for a first one that is slow to answer.

use super::{Origin, RangeAnswer, RangeRequest};
use crate::error::OriginError;
use std::sync::Arc;

/// The last [`LatencyWindow::SIZE`] first-byte times of origin GETs, and their 95th
/// percentile. A hedge at the p95 is sent for about one GET in twenty — those in the tail —
/// whatever the origin's normal latency is, so it needs no tuning per origin.
#[derive(Debug, Default)]
pub struct LatencyWindow {
    ring: std::sync::Mutex<(Vec<u32>, usize, usize)>,
    /// The p95 in microseconds, recomputed every [`LatencyWindow::EVERY`] samples; 0 = not
    /// known yet.
    p95_micros: std::sync::atomic::AtomicU64,
}

impl LatencyWindow {
    /// Samples kept.
    pub const SIZE: usize = 256;
    /// Samples needed before a percentile is trusted.
    pub const MIN: usize = 32;
    /// The percentile is recomputed after this many new samples (a sort of 256 numbers).
    const EVERY: usize = 16;

    /// Records one first-byte time.
    pub fn record(&self, d: std::time::Duration) {
        let micros = u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1);
        let sorted = {
            let mut g = crate::layer::lock(&self.ring);
            let (ring, next, fresh) = &mut *g;
            if ring.len() < Self::SIZE {
                ring.push(micros);
            } else {
                ring[*next] = micros;
            }
            *next = (*next + 1) % Self::SIZE;
            *fresh += 1;
            if ring.len() < Self::MIN || *fresh < Self::EVERY {
                return;
            }
            *fresh = 0;
            ring.clone()
        };
        let mut v = sorted;
        v.sort_unstable();
        let p = v[(v.len() * 95 / 100).min(v.len() - 1)];
        self.p95_micros
            .store(u64::from(p), std::sync::atomic::Ordering::Relaxed);
    }

    /// The 95th percentile, once at least [`LatencyWindow::MIN`] GETs have been seen.
    pub fn p95(&self) -> Option<std::time::Duration> {
        match self.p95_micros.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            m => Some(std::time::Duration::from_micros(m)),
        }
    }
}

/// `origin.get_range(r)`, with a second identical GET sent if the first has not answered
/// within `after` and `slots` has a free slot (taken without waiting, held only while both
/// run). The first to answer wins — a failed answer waits for the other — and dropping the
/// other cancels it.
pub(super) async fn hedged(
    origin: &Arc<dyn Origin>,
    r: &RangeRequest,
    after: std::time::Duration,
    slots: &crate::layer::Gate,
) -> Result<RangeAnswer, OriginError> {
    let mut first = origin.get_range(r);
    let permit = tokio::select! {
        a = &mut first => return a,
        () = tokio::time::sleep(after) => slots.try_acquire(1, r.priority.as_ref()),
    };
    let Some(_permit) = permit else {
        // Every origin slot is busy: a hedge would only queue behind other chunks.
        return first.await;
    };
    tracing::debug!(bucket = %r.bucket, key = %r.key, offset = r.offset, "hedging a slow origin GET");
    let second = origin.get_range(r);
    let (a, other) = match futures_util::future::select(first, second).await {
        futures_util::future::Either::Left((a, other)) => (a, other),
        futures_util::future::Either::Right((a, other)) => (a, other),
    };
    match a {
        Ok(a) => Ok(a),
        Err(_) => other.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latency_window_knows_its_p95_only_after_enough_gets() {
        use std::time::Duration;
        let w = LatencyWindow::default();
        for ms in 1..LatencyWindow::MIN as u64 {
            w.record(Duration::from_millis(ms));
        }
        assert_eq!(w.p95(), None, "31 samples are not enough");
        // 1..=160 ms (recomputed every 16 samples, so exactly at the last one): the 95th
        // percentile is about 152 ms.
        let w = LatencyWindow::default();
        for ms in 1..=160u64 {
            w.record(Duration::from_millis(ms));
        }
        let p = w.p95().expect("a p95 after 160 samples");
        assert!(
            p >= Duration::from_millis(150) && p <= Duration::from_millis(154),
            "{p:?}"
        );
        // The window follows the origin: 256 fast GETs later the slow past is forgotten.
        for _ in 0..LatencyWindow::SIZE {
            w.record(Duration::from_millis(2));
        }
        assert_eq!(w.p95(), Some(Duration::from_millis(2)));
    }
}
