//! Ejection: a peer that failed to acknowledge a fill is not asked again for a while.
//!
//! Without it, a replica that is alive on the network but does not answer (SIGSTOPped, frozen
//! in a GC-less but equally stuck way, its listener's backlog still accepting connections)
//! cost every chunk it owns a full wait before the asker filled locally, and nothing was
//! remembered, so the next chunk paid again: one stopped replica of three made the healthy
//! ones about 17 times slower (issue 21). A refused connection was always cheap; a silent
//! peer was not.
//!
//! The rule, as Envoy's outlier detection has it: a peer that fails — no acknowledgement
//! within `cluster.peer_timeout`, a connection error, a 5xx — is *ejected*. While ejected, the
//! chunks it owns are filled here without asking it (the route says "local"), so they cost
//! what a single replica's miss costs. After the backoff one request is let through as a
//! probe; if the peer acknowledges it, the peer is back at once, otherwise it is ejected again
//! for twice as long. The backoff starts at [`BACKOFF_INITIAL`] (1 s) and doubles per failed
//! probe up to [`BACKOFF_MAX`] (30 s), so a peer that is gone for good is probed twice a
//! minute, and one that comes back is used again within a second or two of its first answer.
//!
//! What does *not* eject: a 409 `not_owner` (the peer is fine; the views of membership
//! differ), any other answer below 500 (404, 412: statements about the object, not the peer),
//! and a body that fails after the acknowledgement (the owner is alive and answered; its own
//! origin failed, and the local fill that follows finds out the same). Only failures of the
//! peer itself count.
//!
//! `shoal_peer_ejected` exports how many peers are ejected right now.

use super::membership::Membership;
use super::rendezvous::Member;
use crate::telemetry::metrics::Metrics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

/// How long a peer is left alone after its first failure.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// The longest a peer is left alone between two probes.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// One ejected peer.
#[derive(Debug, Clone, Copy)]
struct Ejected {
    /// Not asked before this instant.
    until: Instant,
    /// The current backoff (doubled per failed probe).
    backoff: Duration,
    /// When it was ejected, or its latest probe let through: a failure of a request made
    /// before this instant was already counted (many chunks asked at once fail together).
    since: Instant,
}

/// The peers that are ejected now, shared by the route (which skips them) and the peer
/// client (which reports what each call showed). See the module docs.
#[derive(Clone)]
pub struct Ejections {
    inner: Arc<Mutex<HashMap<Member, Ejected>>>,
    /// How many peers the map holds (written under its lock): every chunk asks, and almost
    /// always nobody is ejected, so that answer must not take a lock.
    ejected: Arc<AtomicUsize>,
    /// How long a probe may take before another request may probe: the acknowledgement's
    /// bound plus the connect bound. A probe dropped unanswered (its client went away) thus
    /// never leaves the peer ejected for good.
    probe_window: Duration,
    membership: Membership,
    metrics: Metrics,
}

impl Ejections {
    /// Ejections among `membership`'s peers; a probe is given `probe_window` to answer.
    pub fn new(membership: Membership, probe_window: Duration, metrics: Metrics) -> Self {
        Ejections {
            inner: Arc::default(),
            ejected: Arc::default(),
            probe_window,
            membership,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Member, Ejected>> {
        crate::layer::lock(&self.inner)
    }

    /// Whether `peer` may be asked now: it is not ejected, or its backoff is over and this
    /// request is let through as the probe (other requests keep filling locally until the
    /// probe has answered, or its window has passed).
    pub fn admits(&self, peer: &Member) -> bool {
        self.admits_at(peer, Instant::now())
    }

    fn admits_at(&self, peer: &Member, now: Instant) -> bool {
        if self.ejected.load(Ordering::Acquire) == 0 {
            return true;
        }
        let mut map = self.lock();
        let Some(e) = map.get_mut(peer) else {
            return true;
        };
        if now < e.until {
            return false;
        }
        e.since = now;
        e.until = now + self.probe_window;
        tracing::info!(%peer, "probing an ejected peer");
        true
    }

    /// `peer` acknowledged a request: if it was ejected, it is back.
    pub fn succeeded(&self, peer: &Member) {
        if self.ejected.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut map = self.lock();
        if map.remove(peer).is_some() {
            tracing::info!(%peer, "peer answered again; no longer ejected");
            self.publish(map.len());
        }
    }

    /// Records how many peers are ejected (under the map's lock).
    fn publish(&self, n: usize) {
        self.ejected.store(n, Ordering::Release);
        self.metrics.peers_ejected(n);
    }

    /// `peer` failed a request made at `asked` (no acknowledgement in time, a connection
    /// error, a 5xx): it is ejected, or — if this was its probe — ejected again for twice as
    /// long.
    pub fn failed(&self, peer: &Member, asked: Instant, why: &str) {
        self.failed_at(peer, asked, Instant::now(), why);
    }

    fn failed_at(&self, peer: &Member, asked: Instant, now: Instant, why: &str) {
        let mut map = self.lock();
        match map.get_mut(peer) {
            None => {
                map.insert(
                    *peer,
                    Ejected {
                        until: now + BACKOFF_INITIAL,
                        backoff: BACKOFF_INITIAL,
                        since: now,
                    },
                );
                tracing::warn!(
                    %peer,
                    %why,
                    backoff = ?BACKOFF_INITIAL,
                    "peer ejected: its chunks are filled here until a probe succeeds"
                );
                // Members that left the cluster are forgotten, so the map (and the gauge)
                // stays bounded by the current membership.
                let members = self.membership.members();
                map.retain(|m, _| members.contains(m));
            }
            Some(e) if asked >= e.since => {
                e.backoff = (e.backoff * 2).min(BACKOFF_MAX);
                e.until = now + e.backoff;
                e.since = now;
                tracing::warn!(%peer, %why, backoff = ?e.backoff, "ejected peer failed its probe");
            }
            // Asked before the ejection (or before the probe): already counted.
            Some(_) => {}
        }
        self.publish(map.len());
    }

    /// How many peers are ejected now.
    pub fn count(&self) -> usize {
        self.ejected.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn member(port: u16) -> Member {
        Member {
            ip: IpAddr::from([127, 0, 0, 1]),
            port,
        }
    }

    fn ejections() -> Ejections {
        let m = Membership::fixed(member(1), vec![member(1), member(2), member(3)]);
        Ejections::new(m, Duration::from_millis(500), Metrics::new())
    }

    #[test]
    fn a_failed_peer_is_skipped_then_probed_then_back() {
        let e = ejections();
        let p = member(2);
        let t0 = Instant::now();
        assert!(e.admits_at(&p, t0));
        e.failed_at(&p, t0, t0 + ms(100), "timeout");
        assert_eq!(e.count(), 1);
        assert!(!e.admits_at(&p, t0 + ms(200)), "ejected");
        // Other chunks asked at the same moment fail too: counted once, no longer backoff.
        e.failed_at(&p, t0, t0 + ms(150), "timeout");
        assert!(!e.admits_at(&p, t0 + ms(1099)));
        assert!(
            e.admits_at(&p, t0 + ms(1100)),
            "the probe, after the backoff"
        );
        assert!(!e.admits_at(&p, t0 + ms(1101)), "one probe at a time");
        e.succeeded(&p);
        assert_eq!(e.count(), 0);
        assert!(e.admits_at(&p, t0 + ms(1102)));
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_failed_probe_doubles_the_backoff_up_to_the_cap() {
        let e = ejections();
        let p = member(3);
        let mut now = Instant::now();
        e.failed_at(&p, now, now, "refused");
        let mut backoff = BACKOFF_INITIAL;
        let mut seen = Vec::new();
        for _ in 0..7 {
            assert!(
                !e.admits_at(&p, now + backoff - ms(1)),
                "ejected until {backoff:?}"
            );
            now += backoff;
            assert!(e.admits_at(&p, now), "probed after {backoff:?}");
            seen.push(backoff.as_secs());
            e.failed_at(&p, now, now + ms(1), "refused");
            now += ms(1);
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(e.count(), 1);
    }

    #[test]
    fn an_abandoned_probe_lets_another_request_probe() {
        let e = ejections();
        let p = member(2);
        let t0 = Instant::now();
        e.failed_at(&p, t0, t0, "timeout");
        assert!(
            e.admits_at(&p, t0 + ms(1000)),
            "the probe, whose caller goes away"
        );
        assert!(!e.admits_at(&p, t0 + ms(1499)));
        assert!(
            e.admits_at(&p, t0 + ms(1500)),
            "a new probe once its window passed"
        );
    }

    #[test]
    fn members_that_left_are_forgotten() {
        let e = ejections();
        let gone = member(9);
        e.failed_at(&gone, Instant::now(), Instant::now(), "refused");
        assert_eq!(e.count(), 0, "not a member: not kept");
    }
}
