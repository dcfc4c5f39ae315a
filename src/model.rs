//! The chunk model: identity, store path, tier ladder and range→chunk math.
//!
//! A chunk is identified by everything that determines its bytes: the origin, the bucket, the
//! key, the object's ETag, the chunk size and the chunk's index. Putting the ETag into the
//! identity is what makes the cache safe without any invalidation protocol: a new version of an
//! object has a new ETag, so it hashes to new chunks and no byte of the old version can ever be
//! served for it. Putting the chunk size in means a config change orphans old chunks instead of
//! mis-slicing them.
//!
//! The store path is orca's, bit for bit (SPEC §2), so tools and test vectors carry over:
//! `origin_id/hex(sha256(LP(origin_id)‖LP(bucket)‖LP(key)‖LP(etag)‖LE64(chunk_size)))/index`.
//!
//! These are plain types every wing shares (the read path, the stores, the cluster, the
//! config): they depend on nothing above them.

use sha2::{Digest, Sha256};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// The smallest chunk size accepted anywhere (SPEC §2): smaller chunks would turn every large
/// object into a storm of tiny origin requests.
pub const MIN_CHUNK_SIZE: u64 = 1 << 20;

/// Identity of one chunk of one version of one object.
///
/// Cheap to clone: the strings are shared, because one GET of a large object creates a key per
/// chunk and every layer of the stack passes keys around.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    /// Names the origin, so two origins with the same bucket names never share chunks.
    pub origin_id: Arc<str>,
    /// Origin bucket.
    pub bucket: Arc<str>,
    /// Object key, exactly as stored at the origin (decoded).
    pub key: Arc<str>,
    /// Origin ETag without quotes; pins the object version.
    pub etag: Arc<str>,
    /// Chunk size used to cut this object (depends on tiers).
    pub chunk_size: u64,
    /// Zero-based chunk index.
    pub index: u64,
}

impl ChunkKey {
    /// The hash part of the store path (64 lowercase hex characters) — shared by every chunk of
    /// one object version.
    pub fn object_hash(&self) -> String {
        fn lp(h: &mut Sha256, s: &str) {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        let mut h = Sha256::new();
        lp(&mut h, &self.origin_id);
        lp(&mut h, &self.bucket);
        lp(&mut h, &self.key);
        lp(&mut h, &self.etag);
        h.update(self.chunk_size.to_le_bytes());
        let digest = h.finalize();
        let mut out = String::with_capacity(64);
        for b in digest {
            use std::fmt::Write;
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// The store path `origin_id/<hash>/<index>` of SPEC §2.
    pub fn path(&self) -> String {
        format!("{}/{}/{}", self.origin_id, self.object_hash(), self.index)
    }

    /// Byte offset of this chunk inside the object.
    pub fn offset(&self) -> u64 {
        self.index.saturating_mul(self.chunk_size)
    }

    /// Exact length of this chunk for an object of `object_size` bytes: the chunk size, or the
    /// remainder for the tail chunk, or 0 past the end.
    pub fn expected_len(&self, object_size: u64) -> u64 {
        let off = self.offset();
        if off >= object_size {
            0
        } else {
            self.chunk_size.min(object_size - off)
        }
    }
}

impl fmt::Debug for ChunkKey {
    // The ETag is deliberately not printed (it can be long and it is not useful in logs);
    // its length is, so two versions can still be told apart.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ChunkKey{{{}/{}/{}@{}#{}}}",
            self.origin_id,
            self.bucket,
            self.key,
            self.index,
            self.etag.len()
        )
    }
}

/// One step of the chunk-size ladder: objects of at least `min_object_size` bytes are cut into
/// `chunk_size` chunks. Large objects get large chunks so that a 100 GiB model file is not
/// twelve thousand origin requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tier {
    /// Inclusive lower bound on the object size.
    pub min_object_size: u64,
    /// Chunk size for objects at or above the bound.
    pub chunk_size: u64,
}

/// Picks the chunk size for an object: the last tier (ascending) whose bound the object
/// reaches, else `base`.
pub fn chunk_size_for(object_size: u64, base: u64, tiers: &[Tier]) -> u64 {
    tiers
        .iter()
        .rfind(|t| t.min_object_size <= object_size)
        .map_or(base, |t| t.chunk_size)
}

/// One chunk's share of a byte range: which chunk, and which bytes of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkSlice {
    /// Chunk index.
    pub index: u64,
    /// Byte range inside the chunk (relative to the chunk start).
    pub range: Range<u64>,
}

/// Splits the inclusive byte range `[start, end]` of an object of `object_size` bytes into the
/// chunks that hold it, in order. `end` is clamped to the object; an empty or out-of-bounds
/// range yields nothing.
pub fn slices(start: u64, end: u64, chunk_size: u64, object_size: u64) -> Vec<ChunkSlice> {
    if object_size == 0 || start >= object_size || chunk_size == 0 {
        return Vec::new();
    }
    let end = end.min(object_size - 1);
    if start > end {
        return Vec::new();
    }
    let first = start / chunk_size;
    let last = end / chunk_size;
    (first..=last)
        .map(|index| {
            let chunk_start = index * chunk_size;
            let chunk_end = (chunk_start + chunk_size - 1).min(object_size - 1);
            let lo = start.max(chunk_start) - chunk_start;
            let hi = end.min(chunk_end) - chunk_start + 1;
            ChunkSlice {
                index,
                range: lo..hi,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(o: &str, b: &str, k: &str, e: &str, cs: u64, i: u64) -> ChunkKey {
        ChunkKey {
            origin_id: o.into(),
            bucket: b.into(),
            key: k.into(),
            etag: e.into(),
            chunk_size: cs,
            index: i,
        }
    }

    #[test]
    fn path_matches_orca_test_vectors() {
        assert_eq!(
            key("origin-a", "b", "k", "e", 1024, 7).path(),
            "origin-a/cc0e4b455e06eb99a21504f612a81a6668b63886990b32c1b3758aae4a33a7ad/7"
        );
        assert_eq!(
            key(
                "inttest-origin",
                "bucket",
                "sample-1k",
                "d41d8cd98f00b204e9800998ecf8427e",
                1048576,
                0
            )
            .path(),
            "inttest-origin/42b86e03f4a83070da71a7ab05104fe4820f27a4e5f709b70bfeb13c2b2f6b37/0"
        );
    }

    #[test]
    fn every_field_changes_the_path() {
        let base = key("o", "b", "k", "e", 1 << 20, 0);
        let variants = [
            key("o2", "b", "k", "e", 1 << 20, 0),
            key("o", "b2", "k", "e", 1 << 20, 0),
            key("o", "b", "k2", "e", 1 << 20, 0),
            key("o", "b", "k", "e2", 1 << 20, 0),
            key("o", "b", "k", "e", 2 << 20, 0),
            key("o", "b", "k", "e", 1 << 20, 1),
            // Length prefixes keep field boundaries: "ab"+"c" differs from "a"+"bc".
            key("o", "bk", "", "e", 1 << 20, 0),
        ];
        for v in variants {
            assert_ne!(base.path(), v.path(), "{v:?}");
        }
    }

    #[test]
    fn expected_len_handles_tail_and_past_end() {
        let k = |i| key("o", "b", "k", "e", 100, i);
        assert_eq!(k(0).expected_len(250), 100);
        assert_eq!(k(2).expected_len(250), 50);
        assert_eq!(k(3).expected_len(250), 0);
        assert_eq!(k(0).expected_len(0), 0);
    }

    #[test]
    fn tiers_pick_last_reached_bound() {
        let tiers = [
            Tier {
                min_object_size: 1 << 30,
                chunk_size: 64 << 20,
            },
            Tier {
                min_object_size: 10 << 30,
                chunk_size: 128 << 20,
            },
        ];
        assert_eq!(chunk_size_for(100 << 20, 8 << 20, &tiers), 8 << 20);
        assert_eq!(chunk_size_for(1 << 30, 8 << 20, &tiers), 64 << 20);
        assert_eq!(chunk_size_for((10 << 30) - 1, 8 << 20, &tiers), 64 << 20);
        assert_eq!(chunk_size_for(700 << 30, 8 << 20, &tiers), 128 << 20);
        assert_eq!(chunk_size_for(0, 8 << 20, &[]), 8 << 20);
    }

    #[test]
    fn slices_cover_boundaries() {
        assert_eq!(
            slices(90, 210, 100, 250),
            vec![
                ChunkSlice {
                    index: 0,
                    range: 90..100
                },
                ChunkSlice {
                    index: 1,
                    range: 0..100
                },
                ChunkSlice {
                    index: 2,
                    range: 0..11
                },
            ]
        );
        assert_eq!(
            slices(240, 9999, 100, 250),
            vec![ChunkSlice {
                index: 2,
                range: 40..50
            }]
        );
        assert!(slices(250, 260, 100, 250).is_empty());
        assert!(slices(0, 0, 100, 0).is_empty());
    }

    proptest! {
        #[test]
        fn slices_reassemble_the_range(size in 1u64..5000, cs in 1u64..700, a in 0u64..6000, b in 0u64..6000) {
            let (start, end) = (a.min(b), a.max(b));
            let got = slices(start, end, cs, size);
            if start >= size {
                prop_assert!(got.is_empty());
            } else {
                let end = end.min(size - 1);
                let mut pos = start;
                for s in &got {
                    prop_assert_eq!(s.index * cs + s.range.start, pos);
                    prop_assert!(s.range.end <= cs);
                    prop_assert!(s.range.start < s.range.end);
                    pos = s.index * cs + s.range.end;
                }
                prop_assert_eq!(pos, end + 1);
            }
        }
    }
}
