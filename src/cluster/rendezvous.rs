//! Rendezvous (highest-random-weight) hashing: which replica owns a chunk.
//!
//! Every replica scores every member for a chunk path and the highest score wins, so all
//! replicas that see the same members agree on the owner without talking to each other, and a
//! membership change moves only the chunks whose winner joined or left — about 1/N of them —
//! instead of reshuffling everything as `hash mod N` would.
//!
//! The score is orca's, bit for bit (SPEC §3), so its test vectors carry over:
//! `BE64(sha256(ip ‖ 0x00 ‖ [BE32(port) ‖ 0x00 if port ≠ 0] ‖ path)[0..8])`, where `ip` is the
//! textual address and `port` is 0 for members found by DNS (they all use the cluster port).

use sha2::{Digest, Sha256};
use std::fmt;
use std::net::IpAddr;

/// A replica as the others know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    /// Its address.
    pub ip: IpAddr,
    /// Its internal port; 0 means "the cluster port" (DNS membership).
    pub port: u16,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip, self.port) {
            (ip, 0) => write!(f, "{ip}"),
            (IpAddr::V6(ip), p) => write!(f, "[{ip}]:{p}"),
            (ip, p) => write!(f, "{ip}:{p}"),
        }
    }
}

impl Member {
    /// This member's score for a chunk path.
    pub fn score(&self, path: &str) -> u64 {
        let mut h = Sha256::new();
        h.update(self.ip.to_string().as_bytes());
        h.update([0u8]);
        if self.port != 0 {
            h.update(u32::from(self.port).to_be_bytes());
            h.update([0u8]);
        }
        h.update(path.as_bytes());
        let d = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&d[..8]);
        u64::from_be_bytes(first)
    }
}

/// The owner of `path` among `members`: the highest score, ties to the earlier member.
pub fn owner<'a>(members: &'a [Member], path: &str) -> Option<&'a Member> {
    let mut best: Option<(&Member, u64)> = None;
    for m in members {
        let s = m.score(path);
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((m, s));
        }
    }
    best.map(|(m, _)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str =
        "origin-a/cc0e4b455e06eb99a21504f612a81a6668b63886990b32c1b3758aae4a33a7ad/7";

    fn m(ip: &str, port: u16) -> Member {
        Member {
            ip: ip.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn scores_match_orca_test_vectors() {
        assert_eq!(m("10.0.0.1", 0).score(PATH), 13389372138514238441);
        assert_eq!(m("10.0.0.2", 0).score(PATH), 8012594057186588609);
        assert_eq!(m("10.0.0.3", 0).score(PATH), 12427758295231267947);
        assert_eq!(m("127.0.0.1", 40001).score(PATH), 11341969000193031152);
        let all = [m("10.0.0.1", 0), m("10.0.0.2", 0), m("10.0.0.3", 0)];
        assert_eq!(owner(&all, PATH), Some(&all[0]));
    }

    #[test]
    fn a_membership_change_moves_only_the_chunks_it_must() {
        let three: Vec<Member> = (1..=3).map(|i| m(&format!("10.0.0.{i}"), 0)).collect();
        let four: Vec<Member> = (1..=4).map(|i| m(&format!("10.0.0.{i}"), 0)).collect();
        let paths: Vec<String> = (0..10_000).map(|i| format!("o/h/{i}")).collect();
        let mut moved = 0;
        for p in &paths {
            let before = owner(&three, p).unwrap();
            let after = owner(&four, p).unwrap();
            if before != after {
                moved += 1;
                assert_eq!(after, &four[3], "a chunk moved between two old members");
            }
        }
        // About a quarter move, all to the new member.
        assert!((2_000..3_000).contains(&moved), "{moved} of 10000 moved");
    }
}
