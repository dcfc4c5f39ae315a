//! `Range` and `If-Range`, as S3 reads them (SPEC §1.2).
//!
//! S3 is looser than RFC 9110 in one important way: a Range it cannot parse is *ignored* and
//! the whole object comes back with 200. Being stricter than the origin breaks clients that
//! worked against S3, so this module copies S3, quirk for quirk.

/// A syntactically valid single byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=S-E` (`E` absent for `bytes=S-`).
    From(u64, Option<u64>),
    /// `bytes=-N`: the last N bytes.
    Suffix(u64),
}

/// What a Range asks of an object of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// No usable Range: the whole object, 200.
    Full,
    /// Bytes `start..=end`, 206.
    Partial(u64, u64),
    /// 416 `InvalidRange` with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Digits as a number; values beyond u64 saturate (a huge end simply means "to the end").
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().unwrap_or(u64::MAX))
}

/// Parses a Range header; `None` when it is malformed and must be ignored.
pub fn parse(header: &str) -> Option<ByteRange> {
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None; // multi-range: S3 ignores it
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return Some(ByteRange::Suffix(number(b)?));
    }
    let start = number(a)?;
    if b.is_empty() {
        return Some(ByteRange::From(start, None));
    }
    let end = number(b)?;
    if end < start {
        return None;
    }
    Some(ByteRange::From(start, Some(end)))
}

/// Applies a parsed range to an object of `size` bytes.
pub fn resolve(range: Option<ByteRange>, size: u64) -> Resolved {
    match range {
        None => Resolved::Full,
        Some(_) if size == 0 => Resolved::Unsatisfiable,
        Some(ByteRange::From(s, _)) if s >= size => Resolved::Unsatisfiable,
        Some(ByteRange::From(s, e)) => Resolved::Partial(s, e.unwrap_or(u64::MAX).min(size - 1)),
        Some(ByteRange::Suffix(0)) => Resolved::Unsatisfiable,
        Some(ByteRange::Suffix(n)) => Resolved::Partial(size - n.min(size), size - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Resolved::*;

    fn r(h: &str, size: u64) -> Resolved {
        resolve(parse(h), size)
    }

    /// The table of SPEC §1.2, plus the cases versitygw and ceph s3-tests check against S3.
    #[test]
    fn range_table() {
        let size = 1000;
        let cases: &[(&str, Resolved)] = &[
            ("bytes=0-0", Partial(0, 0)),
            ("bytes=0-99", Partial(0, 99)),
            ("bytes=100-199", Partial(100, 199)),
            ("bytes=999-999", Partial(999, 999)),
            ("bytes=0-999", Partial(0, 999)),
            ("bytes=0-1000", Partial(0, 999)),
            ("bytes=0-999999", Partial(0, 999)),
            ("bytes=500-", Partial(500, 999)),
            ("bytes=0-", Partial(0, 999)),
            ("bytes=999-", Partial(999, 999)),
            ("bytes=-1", Partial(999, 999)),
            ("bytes=-100", Partial(900, 999)),
            ("bytes=-1000", Partial(0, 999)),
            ("bytes=-1001", Partial(0, 999)),
            ("bytes=-99999999999999999999999", Partial(0, 999)),
            ("bytes=0-99999999999999999999999", Partial(0, 999)),
            ("bytes=1000-", Unsatisfiable),
            ("bytes=1000-1000", Unsatisfiable),
            ("bytes=5000-6000", Unsatisfiable),
            ("bytes=99999999999999999999999-", Unsatisfiable),
            ("bytes=-0", Unsatisfiable),
            ("bytes= 10-20", Partial(10, 20)),
            ("foo=1-2", Full),
            ("bytes=5-1", Full),
            ("bytes=", Full),
            ("bytes=-", Full),
            ("bytes=0-1,4-5", Full),
            ("bytes=,", Full),
            ("bytes=a-b", Full),
            ("bytes=1-b", Full),
            ("bytes=--1", Full),
            ("bytes=1--2", Full),
            ("bytes 0-1", Full),
            ("", Full),
            ("Bytes=0-1", Full),
            ("bytes=0x10-20", Full),
            ("bytes=+1-2", Full),
        ];
        for (h, want) in cases {
            assert_eq!(r(h, size), *want, "Range: {h}");
        }
        assert!(cases.len() >= 30);
    }

    #[test]
    fn any_range_on_an_empty_object_is_unsatisfiable() {
        assert_eq!(r("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(r("bytes=-5", 0), Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), Unsatisfiable);
        assert_eq!(r("garbage", 0), Full);
    }

    proptest! {
        #![proptest_config(crate::fuzz::config())]
        /// Fuzz: hostile `Range` values (overlong and overflowing numbers, stray separators,
        /// several ranges, non-ASCII) never panic, and a partial answer is inside the object.
        #[test]
        fn fuzz_range(
            h in proptest::collection::vec(prop_oneof![
                Just("bytes=".to_string()), Just("-".to_string()), Just(",".to_string()),
                Just(" ".to_string()), Just("18446744073709551615".to_string()),
                Just("99999999999999999999999".to_string()), "[0-9]{1,6}", ".{0,4}",
            ], 0..8).prop_map(|v| v.concat()),
            size in prop_oneof![0u64..10_000, Just(u64::MAX)],
        ) {
            if let Partial(s, e) = resolve(parse(&h), size) {
                prop_assert!(s <= e && e < size);
            }
        }

        #[test]
        fn parse_never_panics_and_partial_is_in_bounds(h in ".{0,40}", size in 0u64..10_000) {
            if let Partial(s, e) = resolve(parse(&h), size) {
                prop_assert!(s <= e && e < size);
            }
        }

        #[test]
        fn structured_ranges_are_in_bounds(a in 0u64..20_000, b in 0u64..20_000, size in 0u64..10_000) {
            for h in [format!("bytes={a}-{b}"), format!("bytes={a}-"), format!("bytes=-{b}")] {
                if let Partial(s, e) = resolve(parse(&h), size) {
                    prop_assert!(s <= e && e < size);
                }
            }
        }
    }
}
