//! The one place where errors become S3 status codes and error codes (SPEC §1.4).

use crate::error::{Error, OriginError};
use http::StatusCode;

/// An S3 error answer.
#[derive(Debug, Clone)]
pub struct S3Error {
    /// HTTP status.
    pub status: StatusCode,
    /// S3 error code (`NoSuchKey`, …).
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Extra elements (`Key`, `BucketName`, `ActualObjectSize`, …).
    pub extra: Vec<(&'static str, String)>,
    /// Extra headers (`Content-Range` on 416).
    pub headers: Vec<(&'static str, String)>,
}

impl S3Error {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        S3Error {
            status,
            code,
            message: message.into(),
            extra: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// Adds an extra element to the envelope.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.extra.push((name, value.into()));
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// 400 `InvalidArgument`.
    pub fn invalid_argument(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidArgument", msg)
    }

    /// 400 `InvalidRequest`.
    pub fn invalid_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidRequest", msg)
    }

    /// The S3 error for a request that failed authentication (SPEC §1.5).
    pub fn from_denied(d: &crate::s3::auth::Denied) -> Self {
        use crate::s3::auth::Denied as D;
        use StatusCode as S;
        match d {
            D::Anonymous => Self::new(S::FORBIDDEN, "AccessDenied", "Access Denied: this Shoal requires requests signed with AWS Signature Version 4."),
            D::SigV2 => Self::new(S::FORBIDDEN, "AccessDenied", "Access Denied: Signature Version 2 is not supported; sign with Signature Version 4."),
            D::UnknownKey => Self::new(S::FORBIDDEN, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."),
            D::BadSignature => Self::new(S::FORBIDDEN, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided. Check your key and signing method."),
            D::Skewed => Self::new(S::FORBIDDEN, "RequestTimeTooSkewed", "The difference between the request time and the current time is too large."),
            D::Expired => Self::new(S::FORBIDDEN, "AccessDenied", "Request has expired"),
            D::NotYetValid => Self::new(S::FORBIDDEN, "AccessDenied", "Request is not valid yet"),
            D::Malformed(why) => Self::new(S::BAD_REQUEST, "AuthorizationHeaderMalformed", format!("The authorization header is malformed: {why}")),
            D::BadQuery(why) => Self::new(S::BAD_REQUEST, "AuthorizationQueryParametersError", why.clone()),
            D::Bucket => Self::access_denied(),
            D::BadDate => Self::new(S::FORBIDDEN, "AccessDenied", "AWS authentication requires a valid Date or x-amz-date header"),
            D::Unsigned(names) => Self::new(S::FORBIDDEN, "AccessDenied", "There were headers present in the request which were not signed").with("HeadersNotSigned", names.clone()),
            D::TwoMechanisms => Self::invalid_argument("Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified"),
            D::BadContentSha256 => Self::invalid_argument("x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD, STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER or a valid sha256 value."),
            D::ContentSha256Mismatch => Self::new(S::BAD_REQUEST, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed."),
            D::SessionToken => Self::new(S::FORBIDDEN, "InvalidToken", "The provided token is malformed or otherwise invalid. Shoal does not accept session tokens."),
        }
    }

    /// 403 `AccessDenied` for a bucket outside the allowlist (or the user's buckets).
    pub fn access_denied() -> Self {
        Self::new(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied")
    }

    /// 405 `MethodNotAllowed`.
    pub fn method_not_allowed(method: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The specified method is not allowed against this resource.",
        )
        .with("Method", method)
        .with("ResourceType", "OBJECT")
    }

    /// 501 `NotImplemented`, naming the operation.
    pub fn not_implemented(op: &str) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            format!("{op} is not implemented by Shoal, a read-only cache."),
        )
    }

    /// 416 `InvalidRange` with `Content-Range: bytes */size`.
    pub fn invalid_range(size: u64) -> Self {
        Self::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "InvalidRange",
            "The requested range is not satisfiable",
        )
        .with("ActualObjectSize", size.to_string())
        .header("content-range", format!("bytes */{size}"))
    }

    /// 412 `PreconditionFailed`.
    pub fn precondition_failed(condition: &str) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold",
        )
        .with("Condition", condition)
    }

    /// Maps a read-path error; `bucket`/`key` name the resource in 404s.
    pub fn from_error(e: &Error, bucket: &str, key: &str) -> Self {
        use StatusCode as S;
        match e {
            Error::Origin(o) => match o {
                OriginError::NotFound => {
                    Self::new(S::NOT_FOUND, "NoSuchKey", "The specified key does not exist.")
                        .with("Key", key)
                        .with("BucketName", bucket)
                }
                OriginError::NoSuchBucket => {
                    Self::new(S::NOT_FOUND, "NoSuchBucket", "The specified bucket does not exist")
                        .with("BucketName", bucket)
                }
                OriginError::Unauthorized(_) => Self::new(
                    S::BAD_GATEWAY,
                    "OriginUnauthorized",
                    "The origin rejected Shoal's credentials. This is a Shoal/origin configuration issue, not a client problem.",
                ),
                OriginError::MissingEtag => Self::new(
                    S::BAD_GATEWAY,
                    "OriginMissingETag",
                    "The origin returned no ETag for this object, so Shoal cannot cache it safely.",
                ),
                OriginError::EtagChanged => Self::new(
                    S::BAD_GATEWAY,
                    "OriginETagChanged",
                    "The object kept changing at the origin while it was being read.",
                ),
                OriginError::Throttled(_) => Self::new(
                    S::SERVICE_UNAVAILABLE,
                    "SlowDown",
                    "The origin is throttling requests; please reduce your request rate.",
                ),
                // The origin refused the request itself (say, a key it considers invalid):
                // the client's request is what it objected to.
                OriginError::Rejected(why) => Self::new(
                    S::BAD_REQUEST,
                    "InvalidRequest",
                    format!("The origin rejected the request: {why}"),
                ),
                OriginError::Unsupported(what) => Self::new(
                    S::NOT_IMPLEMENTED,
                    "NotImplemented",
                    format!("A header or query you provided implies functionality that is not implemented: {what}"),
                ),
                OriginError::Transient(_) | OriginError::Protocol(_) => {
                    Self::new(
                        S::BAD_GATEWAY,
                        "OriginUnreachable",
                        "The origin request failed; see Shoal's logs for details.",
                    )
                }
            },
            Error::Peer(_) => Self::new(
                S::BAD_GATEWAY,
                "OriginUnreachable",
                "The chunk could not be read from the replica that owns it or the origin.",
            ),
            Error::SlowDown(_) => Self::new(

                S::SERVICE_UNAVAILABLE,
                "SlowDown",
                "Please reduce your request rate.",
            ),
            Error::Store(_) | Error::Internal(_) | Error::Released(_) => Self::new(
                S::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of SPEC §1.4, row by row.
    #[test]
    fn errors_map_to_the_spec_table() {
        let o = |e: OriginError| S3Error::from_error(&Error::Origin(e), "b", "k");
        let cases = [
            (o(OriginError::NotFound), 404, "NoSuchKey"),
            (o(OriginError::NoSuchBucket), 404, "NoSuchBucket"),
            (
                o(OriginError::Unauthorized("x".into())),
                502,
                "OriginUnauthorized",
            ),
            (o(OriginError::MissingEtag), 502, "OriginMissingETag"),
            (
                o(OriginError::Transient("x".into())),
                502,
                "OriginUnreachable",
            ),
            (
                o(OriginError::Protocol("x".into())),
                502,
                "OriginUnreachable",
            ),
            (o(OriginError::Throttled("x".into())), 503, "SlowDown"),
            // The origin objected to the request itself: a client error, not a gateway one.
            (
                o(OriginError::Rejected("bad key".into())),
                400,
                "InvalidRequest",
            ),
            (
                S3Error::from_error(
                    &Error::SlowDown(std::time::Duration::from_secs(5)),
                    "b",
                    "k",
                ),
                503,
                "SlowDown",
            ),
            (
                S3Error::from_error(&Error::internal("bug"), "b", "k"),
                500,
                "InternalError",
            ),
            (S3Error::invalid_range(10), 416, "InvalidRange"),
            (
                S3Error::precondition_failed("If-Match"),
                412,
                "PreconditionFailed",
            ),
            (S3Error::method_not_allowed("PUT"), 405, "MethodNotAllowed"),
            (S3Error::not_implemented("x"), 501, "NotImplemented"),
            (S3Error::access_denied(), 403, "AccessDenied"),
        ];
        for (e, status, code) in cases {
            assert_eq!((e.status.as_u16(), e.code), (status, code), "{e:?}");
        }
        let r = S3Error::invalid_range(10);
        assert!(r
            .headers
            .contains(&("content-range", "bytes */10".to_string())));
    }
}
