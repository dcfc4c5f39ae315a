//! What Shoal reads and writes on the wire in more than one place: HTTP dates (the S3 front's
//! `Last-Modified` and conditional headers, the Azure origin's `x-ms-date` and answers) and
//! `Content-Range` (every origin's and the `s3` store's ranged answers). A neutral home, so
//! that neither the front nor the origins import the other for them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses an HTTP-date (IMF-fixdate, RFC 850 or asctime); `None` if invalid, and an invalid
/// date makes its header be ignored, as RFC 9110 says.
pub fn parse_date(s: &str) -> Option<SystemTime> {
    let dt = aws_smithy_types::DateTime::from_str(
        s.trim(),
        aws_smithy_types::date_time::Format::HttpDate,
    )
    .ok()?;
    let secs = dt.secs();
    if secs < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_secs(secs as u64))
}

/// Formats a time as IMF-fixdate (`Last-Modified`).
pub fn format_date(t: SystemTime) -> String {
    aws_smithy_types::DateTime::from(t)
        .fmt(aws_smithy_types::date_time::Format::HttpDate)
        .unwrap_or_default()
}

/// Parses `bytes S-E/T` (T may be `*`, returned as `None`).
pub fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (s, e) = span.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((s.trim().parse().ok()?, e.trim().parse().ok()?, total))
}
