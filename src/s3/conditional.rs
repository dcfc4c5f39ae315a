//! Conditional requests (SPEC §1.3), evaluated in RFC 9110 §13.2.2 order against cached
//! metadata — a hit never needs the origin to answer a conditional GET.

pub use crate::wire::{format_date, parse_date};
use http::HeaderMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the preconditions decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Serve the object.
    Proceed,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed, naming the header that failed (`If-Match` or
    /// `If-Unmodified-Since`), as S3's error body does.
    Failed(&'static str),
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether an `If-Match`/`If-None-Match` list names `etag` (`*` names any). `weak` allows
/// `W/` tags to match (If-None-Match uses weak comparison, If-Match strong).
fn etag_listed(header: &str, etag: &str, weak: bool) -> bool {
    header.split(',').map(str::trim).any(|t| {
        if t == "*" {
            return true;
        }
        let (is_weak, t) = match t.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        (weak || !is_weak) && t.trim_matches('"') == etag
    })
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Evaluates the preconditions of a GET/HEAD against an object version.
pub fn evaluate(h: &HeaderMap, etag: &str, last_modified: Option<SystemTime>) -> Outcome {
    if let Some(im) = header(h, "if-match") {
        if !etag_listed(im, etag, false) {
            return Outcome::Failed("If-Match");
        }
    } else if let (Some(d), Some(lm)) = (
        header(h, "if-unmodified-since").and_then(parse_date),
        last_modified,
    ) {
        if secs(lm) > secs(d) {
            return Outcome::Failed("If-Unmodified-Since");
        }
    }
    if let Some(inm) = header(h, "if-none-match") {
        if etag_listed(inm, etag, true) {
            return Outcome::NotModified;
        }
    } else if let (Some(d), Some(lm)) = (
        header(h, "if-modified-since").and_then(parse_date),
        last_modified,
    ) {
        if secs(lm) <= secs(d) {
            return Outcome::NotModified;
        }
    }
    Outcome::Proceed
}

/// Whether `If-Range` lets the Range apply: an ETag must match strongly, a date exactly.
/// No `If-Range` always lets it apply.
pub fn if_range_holds(h: &HeaderMap, etag: &str, last_modified: Option<SystemTime>) -> bool {
    let Some(v) = header(h, "if-range") else {
        return true;
    };
    let v = v.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        return !v.starts_with("W/") && v.trim_matches('"') == etag;
    }
    match (parse_date(v), last_modified) {
        (Some(d), Some(lm)) => secs(d) == secs(lm),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    const ETAG: &str = "abc123";

    fn lm() -> SystemTime {
        parse_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap()
    }

    fn hm(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// If-Match × If-None-Match × If-Modified-Since × If-Unmodified-Since, each absent, true or
    /// false, checked against an independent statement of the RFC 9110 rules.
    #[test]
    fn conditional_matrix() {
        let before = "Tue, 20 Oct 2015 07:28:00 GMT";
        let after = "Thu, 22 Oct 2015 07:28:00 GMT";
        // (header value, whether the condition "holds" in the sense of letting the request through)
        let im = [None, Some(("\"abc123\"", true)), Some(("\"nope\"", false))];
        let inm = [None, Some(("\"nope\"", true)), Some(("\"abc123\"", false))];
        let ims = [None, Some((before, true)), Some((after, false))];
        let ius = [None, Some((after, true)), Some((before, false))];
        let mut n = 0;
        for a in im {
            for b in inm {
                for c in ims {
                    for d in ius {
                        let mut pairs = vec![];
                        if let Some((v, _)) = a {
                            pairs.push(("if-match", v));
                        }
                        if let Some((v, _)) = b {
                            pairs.push(("if-none-match", v));
                        }
                        if let Some((v, _)) = c {
                            pairs.push(("if-modified-since", v));
                        }
                        if let Some((v, _)) = d {
                            pairs.push(("if-unmodified-since", v));
                        }
                        let want = {
                            let fail412 = match a {
                                Some((_, ok)) => (!ok).then_some("If-Match"),
                                None => d
                                    .is_some_and(|(_, ok)| !ok)
                                    .then_some("If-Unmodified-Since"),
                            };
                            let not_mod = match b {
                                Some((_, ok)) => !ok,
                                None => c.is_some_and(|(_, ok)| !ok),
                            };
                            if let Some(c) = fail412 {
                                Outcome::Failed(c)
                            } else if not_mod {
                                Outcome::NotModified
                            } else {
                                Outcome::Proceed
                            }
                        };
                        assert_eq!(evaluate(&hm(&pairs), ETAG, Some(lm())), want, "{pairs:?}");
                        n += 1;
                    }
                }
            }
        }
        assert_eq!(n, 81);
    }

    #[test]
    fn etag_lists_and_wildcards() {
        assert_eq!(
            evaluate(&hm(&[("if-match", "*")]), ETAG, None),
            Outcome::Proceed
        );
        assert_eq!(
            evaluate(&hm(&[("if-match", "\"x\", \"abc123\"")]), ETAG, None),
            Outcome::Proceed
        );
        assert_eq!(
            evaluate(&hm(&[("if-match", "abc123")]), ETAG, None),
            Outcome::Proceed
        );
        assert_eq!(
            evaluate(&hm(&[("if-match", "W/\"abc123\"")]), ETAG, None),
            Outcome::Failed("If-Match")
        );
        assert_eq!(
            evaluate(&hm(&[("if-none-match", "W/\"abc123\"")]), ETAG, None),
            Outcome::NotModified
        );
        assert_eq!(
            evaluate(&hm(&[("if-none-match", "*")]), ETAG, None),
            Outcome::NotModified
        );
        // Invalid dates are ignored.
        assert_eq!(
            evaluate(&hm(&[("if-modified-since", "yesterday")]), ETAG, Some(lm())),
            Outcome::Proceed
        );
    }

    #[test]
    fn if_range() {
        assert!(if_range_holds(&hm(&[]), ETAG, None));
        assert!(if_range_holds(
            &hm(&[("if-range", "\"abc123\"")]),
            ETAG,
            None
        ));
        assert!(!if_range_holds(&hm(&[("if-range", "\"old\"")]), ETAG, None));
        assert!(!if_range_holds(
            &hm(&[("if-range", "W/\"abc123\"")]),
            ETAG,
            None
        ));
        assert!(if_range_holds(
            &hm(&[("if-range", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            ETAG,
            Some(lm())
        ));
        assert!(!if_range_holds(
            &hm(&[("if-range", "Thu, 22 Oct 2015 07:28:00 GMT")]),
            ETAG,
            Some(lm())
        ));
        assert_eq!(format_date(lm()), "Wed, 21 Oct 2015 07:28:00 GMT");
    }

    proptest! {
        #![proptest_config(crate::fuzz::config())]
        /// Fuzz: hostile conditional headers (dates out of every range, ETag lists with stray
        /// quotes, commas and `W/`) never panic.
        #[test]
        fn fuzz_conditional_headers(
            v in proptest::collection::vec(prop_oneof![
                Just("\"".to_string()), Just(",".to_string()), Just("W/".to_string()), Just("*".to_string()),
                Just("Sun, 06 Nov 1994 08:49:37 GMT".to_string()),
                Just("Fri, 31 Dec 9999 23:59:59 GMT".to_string()),
                Just("Thu, 01 Jan 1970 00:00:00 GMT".to_string()),
                Just("Mon, 01 Jan 0001 00:00:00 GMT".to_string()),
                Just("Sunday, 06-Nov-94 08:49:37 GMT".to_string()),
                Just("Sun Nov  6 08:49:37 1994".to_string()),
                "[0-9]{1,30}", ".{0,6}",
            ], 0..6).prop_map(|v| v.concat()),
            which in 0usize..5,
        ) {
            let mut h = HeaderMap::new();
            let name = ["if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range"][which];
            if let Ok(v) = HeaderValue::from_str(&v) { h.insert(name, v); }
            let _ = evaluate(&h, ETAG, Some(lm()));
            let _ = evaluate(&h, ETAG, None);
            let _ = if_range_holds(&h, ETAG, Some(lm()));
            let _ = parse_date(&v);
        }

        #[test]
        fn never_panics(a in ".{0,30}", b in ".{0,30}", c in ".{0,30}") {
            let mut h = HeaderMap::new();
            for (k, v) in [("if-match", &a), ("if-none-match", &b), ("if-modified-since", &c), ("if-range", &c)] {
                if let Ok(v) = HeaderValue::from_str(v) { h.insert(k, v); }
            }
            let _ = evaluate(&h, ETAG, Some(lm()));
            let _ = if_range_holds(&h, ETAG, Some(lm()));
        }
    }
}
