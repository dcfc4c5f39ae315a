//! Origin answers are verified, not trusted (SPEC §2).

use super::{RangeAnswer, RangeRequest};
use crate::error::OriginError;

/// Checks an origin's answer against the request: the ETag must be the pinned one, and the
/// `Content-Range` start, end and total and the length must be exactly what was asked.
///
/// Any mismatch is reported as [`OriginError::EtagChanged`]: whatever the cause (an origin or a
/// proxy that ignores `If-Match`, an object overwritten with another size, a store that
/// ignores `Range`), these bytes are not the pinned version's bytes at this offset, and the
/// only safe move is to forget the cached metadata and read the object afresh. Trusting the
/// answer instead would commit another version's bytes under this version's key, forever.
pub fn verify(req: &RangeRequest, a: &RangeAnswer) -> Result<(), OriginError> {
    let changed = |why: String| {
        tracing::warn!(
            bucket = %req.bucket, key = %req.key, offset = req.offset, len = req.len,
            "origin answer does not match the pinned version: {why}"
        );
        Err(OriginError::EtagChanged)
    };
    let etag = a
        .etag
        .as_deref()
        .map(|e| e.trim().trim_start_matches("W/").trim_matches('"'));
    if etag != Some(&*req.etag) {
        return changed(format!("ETag {:?}, pinned {:?}", a.etag, req.etag));
    }
    let end = req.offset + req.len - 1;
    match a.content_range.as_deref() {
        Some(cr) => match crate::wire::parse_content_range(cr) {
            Some((s, e, Some(t))) if s == req.offset && e == end && t == req.object_size => {}
            _ => {
                return changed(format!(
                    "Content-Range {cr:?}, asked bytes {}-{end}/{}",
                    req.offset, req.object_size
                ))
            }
        },
        // A whole-object answer is acceptable only when the whole object is what was asked.
        None if req.offset == 0 && req.len == req.object_size => {}
        None => return changed("no Content-Range on a ranged read".into()),
    }
    if a.content_length != Some(req.len) {
        return changed(format!(
            "Content-Length {:?}, asked {}",
            a.content_length, req.len
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn req(offset: u64, len: u64, size: u64) -> RangeRequest {
        RangeRequest::new("b", "k", "abc", size, offset, len)
    }

    fn ans(etag: Option<&str>, cr: Option<&str>, len: Option<u64>) -> RangeAnswer {
        RangeAnswer {
            etag: etag.map(str::to_owned),
            content_range: cr.map(str::to_owned),
            content_length: len,
            body: futures_util::stream::empty().boxed(),
        }
    }

    #[test]
    fn answers_are_checked_field_by_field() {
        let r = req(10, 5, 100);
        assert!(verify(&r, &ans(Some("\"abc\""), Some("bytes 10-14/100"), Some(5))).is_ok());
        let bad = [
            ans(Some("\"other\""), Some("bytes 10-14/100"), Some(5)), // If-Match ignored
            ans(None, Some("bytes 10-14/100"), Some(5)),              // no ETag
            ans(Some("abc"), Some("bytes 10-14/200"), Some(5)),       // another size
            ans(Some("abc"), Some("bytes 0-4/100"), Some(5)),         // Range ignored
            ans(Some("abc"), Some("bytes 10-15/100"), Some(6)),       // wrong end
            ans(Some("abc"), Some("bytes 10-14/*"), Some(5)),         // unknown total
            ans(Some("abc"), None, Some(100)),                        // whole object
            ans(Some("abc"), Some("bytes 10-14/100"), Some(4)),       // wrong length
            ans(Some("abc"), Some("garbage"), Some(5)),
        ];
        for a in bad {
            assert_eq!(verify(&r, &a), Err(OriginError::EtagChanged), "{a:?}");
        }
        // The whole object, asked as such, may come without a Content-Range.
        assert!(verify(&req(0, 100, 100), &ans(Some("abc"), None, Some(100))).is_ok());
    }
}
