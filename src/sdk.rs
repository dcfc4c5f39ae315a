//! The AWS SDK client as Shoal builds it, shared by the S3 origin and the shared `s3` store:
//! both talk to S3-compatible stores with the same TLS, timeouts, credentials and checksum
//! settings, and neither should import the other for it.

use aws_config::BehaviorVersion;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::Client;
use std::time::Duration;

/// An aws-sdk-s3 client as Shoal uses one (for the origin and for the `s3` store): rustls,
/// a bounded connect timeout, the given endpoint, region and path style, static credentials
/// when given (else the standard AWS chain: env, profile, IMDS), and checksums only where
/// required — many S3-compatible stores reject or mangle the newer default checksums.
pub async fn sdk_client(
    endpoint: Option<&str>,
    region: &str,
    force_path_style: bool,
    credentials: Option<(&str, &str)>,
) -> Client {
    use aws_smithy_http_client::tls;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(region.to_owned()));
    if let Some((id, secret)) = credentials {
        loader = loader.credentials_provider(Credentials::new(
            id.to_owned(),
            secret.to_owned(),
            None,
            None,
            "shoal-config",
        ));
    }
    let shared = loader.load().await;
    let mut b = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(force_path_style)
        .timeout_config(
            aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .build(),
        )
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired);
    if let Some(ep) = endpoint {
        b = b.endpoint_url(ep);
    }
    Client::from_conf(b.build())
}
