//! S3 XML documents: error envelopes, LIST results, bucket lists, bucket location.
//!
//! Written by hand rather than through a serializer: the documents are small and fixed, and
//! S3 clients are picky about element order, which a hand-written writer keeps obvious.

use crate::model::{ListPage, ListRequest, ListVersion};
use crate::wire::format_date;
use std::fmt::Write;
use std::time::SystemTime;

const DECL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
const NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// Escapes text for an XML element; characters XML 1.0 cannot carry are written as numeric
/// references so the document always parses.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {
                let _ = write!(out, "&#x{:X};", c as u32);
            }
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
    out
}

fn elem(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, "<{name}>{}</{name}>", escape(value));
}

/// ISO 8601 with milliseconds, as S3 writes `LastModified` in listings.
pub fn iso8601(t: SystemTime) -> String {
    let millis = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let dt = aws_smithy_types::DateTime::from_millis(millis);
    if millis % 1000 == 0 {
        // Whole seconds still carry ".000Z", as S3 writes them.
        let s = dt
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .unwrap_or_default();
        return s.replace('Z', ".000Z");
    }
    dt.fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default()
}

/// The `<Error>` envelope.
pub fn error(
    code: &str,
    message: &str,
    resource: &str,
    request_id: &str,
    extra: &[(&str, &str)],
) -> String {
    let mut out = String::from(DECL);
    out.push_str("<Error>");
    elem(&mut out, "Code", code);
    elem(&mut out, "Message", message);
    for (k, v) in extra {
        if !v.is_empty() {
            elem(&mut out, k, v);
        }
    }
    elem(&mut out, "Resource", resource);
    elem(&mut out, "RequestId", request_id);
    out.push_str("</Error>");
    out
}

/// A `ListBucketResult` (V1 or V2) for `page`, echoing the request's parameters.
pub fn list_result(bucket: &str, req: &ListRequest, page: &ListPage) -> String {
    let mut out = String::from(DECL);
    let _ = write!(out, "<ListBucketResult xmlns=\"{NS}\">");
    elem(&mut out, "Name", bucket);
    elem(&mut out, "Prefix", page.prefix.as_deref().unwrap_or(""));
    match req.version {
        ListVersion::V2 => {
            if let Some(t) = &req.continuation_token {
                elem(&mut out, "ContinuationToken", t);
            }
            if let Some(t) = &page.next_continuation_token {
                elem(&mut out, "NextContinuationToken", t);
            }
            if let Some(s) = &page.start_after {
                elem(&mut out, "StartAfter", s);
            }
            let count = page.contents.len() + page.common_prefixes.len();
            elem(&mut out, "KeyCount", &count.to_string());
        }
        ListVersion::V1 => {
            if let Some(m) = &page.marker {
                elem(&mut out, "Marker", m);
            }
            if let Some(m) = &page.next_marker {
                elem(&mut out, "NextMarker", m);
            }
        }
    }
    let max_keys = page.max_keys.unwrap_or(req.max_keys);
    elem(&mut out, "MaxKeys", &max_keys.to_string());
    if let Some(d) = &page.delimiter {
        elem(&mut out, "Delimiter", d);
    }
    if page.url_encoded {
        elem(&mut out, "EncodingType", "url");
    }
    elem(
        &mut out,
        "IsTruncated",
        if page.is_truncated { "true" } else { "false" },
    );
    for o in &page.contents {
        out.push_str("<Contents>");
        elem(&mut out, "Key", &o.key);
        if let Some(t) = o.last_modified {
            elem(&mut out, "LastModified", &iso8601(t));
        }
        if let Some(e) = &o.etag {
            elem(&mut out, "ETag", e);
        }
        elem(&mut out, "Size", &o.size.to_string());
        if let Some((id, name)) = &o.owner {
            out.push_str("<Owner>");
            elem(&mut out, "ID", id);
            if let Some(n) = name {
                elem(&mut out, "DisplayName", n);
            }
            out.push_str("</Owner>");
        }
        if let Some(sc) = &o.storage_class {
            elem(&mut out, "StorageClass", sc);
        }
        out.push_str("</Contents>");
    }
    for p in &page.common_prefixes {
        out.push_str("<CommonPrefixes>");
        elem(&mut out, "Prefix", p);
        out.push_str("</CommonPrefixes>");
    }
    out.push_str("</ListBucketResult>");
    out
}

/// `ListAllMyBucketsResult` naming `buckets`.
pub fn bucket_list(list: &crate::model::BucketList) -> String {
    let mut out = String::from(DECL);
    let _ = write!(out, "<ListAllMyBucketsResult xmlns=\"{NS}\">");
    // The origin's owner when it named one; else Shoal (an origin without owners).
    let (id, name) = match &list.owner {
        Some((id, name)) => (id.as_str(), name.as_deref()),
        None => ("shoal", Some("shoal")),
    };
    out.push_str("<Owner>");
    elem(&mut out, "ID", id);
    if let Some(n) = name {
        elem(&mut out, "DisplayName", n);
    }
    out.push_str("</Owner><Buckets>");
    for b in &list.buckets {
        out.push_str("<Bucket>");
        elem(&mut out, "Name", &b.name);
        elem(
            &mut out,
            "CreationDate",
            &iso8601(b.created.unwrap_or(SystemTime::UNIX_EPOCH)),
        );
        out.push_str("</Bucket>");
    }
    out.push_str("</Buckets></ListAllMyBucketsResult>");
    out
}

/// `LocationConstraint` for GetBucketLocation (empty for us-east-1, as S3 does).
pub fn location(region: &str) -> String {
    let mut out = String::from(DECL);
    let _ = write!(out, "<LocationConstraint xmlns=\"{NS}\">");
    if region != "us-east-1" {
        out.push_str(&escape(region));
    }
    out.push_str("</LocationConstraint>");
    out
}

/// Writes `Last-Modified` in HTTP form (re-exported for handlers).
pub fn http_date(t: SystemTime) -> String {
    format_date(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_documents_parseable() {
        assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
        assert_eq!(escape("x\u{1}y"), "x&#x1;y");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(iso8601(t), "2023-11-14T22:13:20.123Z");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(iso8601(t), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn error_envelope_has_request_id() {
        let x = error(
            "NoSuchKey",
            "The specified key does not exist.",
            "/b/k",
            "RID",
            &[("Key", "k"), ("BucketName", "")],
        );
        assert!(x.starts_with("<?xml"));
        assert!(x.contains("<Code>NoSuchKey</Code>"));
        assert!(x.contains("<RequestId>RID</RequestId>"));
        assert!(x.contains("<Key>k</Key>"));
        assert!(!x.contains("BucketName"));
    }
}
