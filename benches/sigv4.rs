//! The cost of verifying one SigV4 request (header auth and a presigned URL), to keep client
//! authentication cheap next to a warm small GET (the herd bench's `auth` scenario measures the
//! end-to-end ratio).

use aws_sigv4::http_request::{
    sign, PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    UriPathNormalizationMode,
};
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, Method, Uri};
use shoal::config::{AuthConfig, AuthMode, Dur, UserConfig};
use shoal::s3::auth::Authenticator;
use std::time::{Duration, SystemTime};

/// The host the bench requests are signed for.
const HOST: &str = "shoal.internal:9000";

fn signed(presign: bool) -> (Uri, HeaderMap) {
    let identity =
        aws_credential_types::Credentials::new("bench", "bench-secret", None, None, "b").into();
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    if presign {
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(Duration::from_secs(3600));
    } else {
        settings.payload_checksum_kind = aws_sigv4::http_request::PayloadChecksumKind::XAmzSha256;
    }
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let uri = "/models/llama/weights-00001-of-00008.safetensors?x-id=GetObject";
    let mut req = http::Request::get(uri)
        .header("host", HOST)
        .header("range", "bytes=0-4095")
        .body(())
        .unwrap();
    let h = [("host", HOST), ("range", "bytes=0-4095")];
    let body = if presign {
        SignableBody::UnsignedPayload
    } else {
        SignableBody::Precomputed(
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
        )
    };
    let s = SignableRequest::new("GET", uri, h.into_iter(), body).unwrap();
    let (i, _) = sign(s, &params).unwrap().into_parts();
    i.apply_to_request_http1x(&mut req);
    let (p, _) = req.into_parts();
    (p.uri, p.headers)
}

fn verify(c: &mut Criterion) {
    let a = Authenticator::from_config(&AuthConfig {
        mode: AuthMode::Sigv4,
        max_skew: Dur(Duration::from_secs(900)),
        users: vec![UserConfig {
            access_key_id: "bench".into(),
            secret_access_key: Some("bench-secret".into()),
            ..Default::default()
        }],
    })
    .unwrap()
    .unwrap();
    for (name, presign) in [("header", false), ("presigned", true)] {
        let (uri, headers) = signed(presign);
        assert!(a
            .verify(&Method::GET, &uri, &headers, Some(HOST), SystemTime::now())
            .is_ok());
        c.bench_function(&format!("sigv4_verify_{name}"), |b| {
            b.iter(|| {
                a.verify(&Method::GET, &uri, &headers, Some(HOST), SystemTime::now())
                    .is_ok()
            })
        });
    }
}

criterion_group!(benches, verify);
criterion_main!(benches);
