//! The S3 origin: AWS S3 or any S3-compatible store through aws-sdk-s3.
//!
//! Every ranged GET is pinned with `If-Match`, and the answer's ETag, `Content-Range` and
//! length are handed up with the body, so that [`super::verify`] can check them: an origin (or
//! a proxy in front of it) that ignores `If-Match` or `Range` is caught there, not trusted.

use super::{
    ListEntry, ListPage, ListRequest, ListVersion, ObjectMeta, Origin, RangeAnswer, RangeRequest,
};
use crate::config::OriginConfig;
use crate::error::{Error, OriginError};
use async_trait::async_trait;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::Client;
use futures_util::StreamExt;
use std::time::{Duration, SystemTime};

/// Bounds the wait for an origin's answer (status and headers) by `origin.timeout`. An origin
/// that accepts the connection and then says nothing is a transient failure, retried like one.
async fn answer<T, E>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, SdkError<E>>>,
) -> Result<T, OriginError>
where
    E: ProvideErrorMetadata + std::fmt::Debug,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(map_err),
        Err(_) => Err(OriginError::Transient(format!(
            "origin did not answer within {timeout:?}"
        ))),
    }
}

/// An origin reached through aws-sdk-s3.
#[derive(Clone, Debug)]
pub struct S3Origin {
    client: Client,
    region: String,
    timeout: Duration,
}

impl S3Origin {
    /// Builds the client: endpoint, path style and credentials from the config, else the
    /// standard AWS chain (env, profile, IMDS).
    pub async fn new(cfg: &OriginConfig) -> Result<Self, Error> {
        use aws_smithy_http_client::tls;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(cfg.region.clone()));
        if let (Some(id), Some(secret)) = (&cfg.access_key_id, &cfg.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "shoal-config",
            ));
        }
        let shared = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(cfg.force_path_style)
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .build(),
            )
            // Many S3-compatible stores reject or mangle the newer default checksums.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
        if let Some(ep) = &cfg.endpoint {
            b = b.endpoint_url(ep);
        }
        Ok(S3Origin {
            client: Client::from_conf(b.build()),
            region: cfg.region.clone(),
            timeout: cfg.timeout.0,
        })
    }

    /// The underlying SDK client (tests use it to seed and compare).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// What a GET answered, for [`super::verify`], with a body that fails when it stalls for
    /// `origin.timeout`.
    fn range_answer(&self, out: aws_sdk_s3::operation::get_object::GetObjectOutput) -> RangeAnswer {
        let etag = out.e_tag().map(str::to_owned);
        let content_range = out.content_range().map(str::to_owned);
        let content_length = out.content_length().and_then(|n| u64::try_from(n).ok());
        let body = out.body;
        let idle = self.timeout;
        let stream = futures_util::stream::unfold(body, move |mut body| async move {
            match tokio::time::timeout(idle, body.next()).await {
                Ok(Some(Ok(b))) => Some((Ok(b), body)),
                Ok(Some(Err(e))) => Some((
                    Err(Error::Origin(OriginError::Transient(format!(
                        "origin body: {e}"
                    )))),
                    body,
                )),
                Ok(None) => None,
                Err(_) => Some((
                    Err(Error::Origin(OriginError::Transient(format!(
                        "origin body stalled for {idle:?}"
                    )))),
                    body,
                )),
            }
        });
        RangeAnswer {
            etag,
            content_range,
            content_length,
            body: stream.boxed(),
        }
    }
}

/// `x-amz-meta-*` pairs, names lowercased, sorted by name.
fn user_metadata(m: Option<&std::collections::HashMap<String, String>>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = m
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn map_err<E: ProvideErrorMetadata + std::fmt::Debug>(e: SdkError<E>) -> OriginError {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e
        .as_service_error()
        .and_then(|s| s.code())
        .map(str::to_owned);
    let msg = format!(
        "{}{}",
        code.clone().unwrap_or_default(),
        e.as_service_error()
            .and_then(|s| s.message())
            .map(|m| format!(": {m}"))
            .unwrap_or_default()
    );
    match (status, code.as_deref()) {
        (_, Some("NoSuchBucket")) => OriginError::NoSuchBucket,
        (Some(404), _) | (_, Some("NoSuchKey")) => OriginError::NotFound,
        (Some(412), _) | (_, Some("PreconditionFailed")) => OriginError::EtagChanged,
        (Some(401 | 403), _) => OriginError::Unauthorized(msg),
        (Some(429), _) | (_, Some("SlowDown" | "Throttling" | "ThrottlingException")) => {
            OriginError::Throttled(msg)
        }
        (Some(s), _) if s >= 500 => OriginError::Transient(format!("HTTP {s} {msg}")),
        (Some(s), _) => OriginError::Rejected(format!("HTTP {s} {msg}")),
        // No response at all: timeouts, connection errors, dispatch failures.
        (None, _) => OriginError::Transient(format!("{e:?}").chars().take(300).collect()),
    }
}

fn to_system_time(t: &aws_sdk_s3::primitives::DateTime) -> Option<SystemTime> {
    SystemTime::try_from(*t).ok()
}

fn list_entry(o: &aws_sdk_s3::types::Object) -> ListEntry {
    ListEntry {
        key: o.key().unwrap_or_default().to_owned(),
        last_modified: o.last_modified().and_then(to_system_time),
        etag: o.e_tag().map(str::to_owned),
        size: o.size().unwrap_or(0).max(0) as u64,
        storage_class: o.storage_class().map(|s| s.as_str().to_owned()),
        owner: o.owner().and_then(|ow| {
            ow.id()
                .map(|id| (id.to_owned(), ow.display_name().map(str::to_owned)))
        }),
    }
}

fn prefixes(p: &[aws_sdk_s3::types::CommonPrefix]) -> Vec<String> {
    p.iter()
        .filter_map(|p| p.prefix().map(str::to_owned))
        .collect()
}

#[async_trait]
impl Origin for S3Origin {
    async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, OriginError> {
        let out = answer(
            self.timeout,
            self.client.head_object().bucket(bucket).key(key).send(),
        )
        .await?;
        let user_metadata = user_metadata(out.metadata());
        Ok(ObjectMeta {
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: out
                .e_tag()
                .map(|e| e.trim_matches('"').to_owned())
                .unwrap_or_default(),
            content_type: out.content_type().map(str::to_owned),
            last_modified: out.last_modified().and_then(to_system_time),
            cache_control: out.cache_control().map(str::to_owned),
            content_encoding: out.content_encoding().map(str::to_owned),
            content_disposition: out.content_disposition().map(str::to_owned),
            content_language: out.content_language().map(str::to_owned),
            expires: out.expires_string().map(str::to_owned),
            user_metadata,
        })
    }

    async fn get_range(&self, r: &RangeRequest) -> Result<RangeAnswer, OriginError> {
        let end = r.offset + r.len - 1;
        let out = answer(
            self.timeout,
            self.client
                .get_object()
                .bucket(&*r.bucket)
                .key(&*r.key)
                .range(format!("bytes={}-{end}", r.offset))
                .if_match(format!("\"{}\"", r.etag))
                .customize()
                // RetryUntilCommitLayer owns retries of fills; SDK retries underneath it would
                // multiply the attempts and hide them from the budget. Stalls are detected
                // below with `origin.timeout`, the one knob the retry budget is checked
                // against; the SDK's own stalled-stream guard (5 s, not configurable per
                // request here) would fire on its own schedule instead.
                .config_override(
                    aws_sdk_s3::config::Builder::default()
                        .retry_config(RetryConfig::disabled())
                        .stalled_stream_protection(
                            aws_sdk_s3::config::StalledStreamProtectionConfig::disabled(),
                        ),
                )
                .send(),
        )
        .await?;
        Ok(self.range_answer(out))
    }

    async fn get_first(
        &self,
        bucket: &str,
        key: &str,
        len: u64,
    ) -> Result<(ObjectMeta, RangeAnswer), OriginError> {
        let out = answer(
            self.timeout,
            self.client
                .get_object()
                .bucket(bucket)
                .key(key)
                .range(format!("bytes=0-{}", len.max(1) - 1))
                .customize()
                // The same as `get_range`: retries and stalls are the fill's to handle.
                .config_override(
                    aws_sdk_s3::config::Builder::default()
                        .retry_config(RetryConfig::disabled())
                        .stalled_stream_protection(
                            aws_sdk_s3::config::StalledStreamProtectionConfig::disabled(),
                        ),
                )
                .send(),
        )
        .await?;
        // A GET answers with every header a HEAD does; the size is the Content-Range total
        // (or the length of a whole-object answer).
        let size = match out.content_range().and_then(super::parse_content_range) {
            Some((_, _, Some(total))) => total,
            Some(_) => {
                return Err(OriginError::Rejected(
                    "origin answered a range without the object's size".into(),
                ))
            }
            None => out.content_length().unwrap_or(0).max(0) as u64,
        };
        let meta = ObjectMeta {
            size,
            etag: out
                .e_tag()
                .map(|e| e.trim_matches('"').to_owned())
                .unwrap_or_default(),
            content_type: out.content_type().map(str::to_owned),
            last_modified: out.last_modified().and_then(to_system_time),
            cache_control: out.cache_control().map(str::to_owned),
            content_encoding: out.content_encoding().map(str::to_owned),
            content_disposition: out.content_disposition().map(str::to_owned),
            content_language: out.content_language().map(str::to_owned),
            expires: out.expires_string().map(str::to_owned),
            user_metadata: user_metadata(out.metadata()),
        };
        Ok((meta, self.range_answer(out)))
    }

    async fn list(&self, bucket: &str, req: &ListRequest) -> Result<ListPage, OriginError> {
        let enc = req
            .encoding_url
            .then_some(aws_sdk_s3::types::EncodingType::Url);
        match req.version {
            ListVersion::V2 => {
                let out = answer(
                    self.timeout,
                    self.client
                        .list_objects_v2()
                        .bucket(bucket)
                        .set_prefix(req.prefix.clone())
                        .set_delimiter(req.delimiter.clone())
                        .max_keys(req.max_keys)
                        .set_continuation_token(req.continuation_token.clone())
                        .set_start_after(req.start_after.clone())
                        .fetch_owner(req.fetch_owner)
                        .set_encoding_type(enc)
                        .send(),
                )
                .await?;
                Ok(ListPage {
                    contents: out.contents().iter().map(list_entry).collect(),
                    common_prefixes: prefixes(out.common_prefixes()),
                    is_truncated: out.is_truncated().unwrap_or(false),
                    next_continuation_token: out.next_continuation_token().map(str::to_owned),
                    next_marker: None,
                    prefix: out.prefix().map(str::to_owned),
                    max_keys: out.max_keys(),
                    delimiter: out.delimiter().map(str::to_owned),
                    start_after: out.start_after().map(str::to_owned),
                    marker: None,
                    url_encoded: out.encoding_type().is_some(),
                })
            }
            ListVersion::V1 => {
                let out = answer(
                    self.timeout,
                    self.client
                        .list_objects()
                        .bucket(bucket)
                        .set_prefix(req.prefix.clone())
                        .set_delimiter(req.delimiter.clone())
                        .max_keys(req.max_keys)
                        .set_marker(req.marker.clone())
                        .set_encoding_type(enc)
                        .send(),
                )
                .await?;
                Ok(ListPage {
                    contents: out.contents().iter().map(list_entry).collect(),
                    common_prefixes: prefixes(out.common_prefixes()),
                    is_truncated: out.is_truncated().unwrap_or(false),
                    next_continuation_token: None,
                    next_marker: out.next_marker().map(str::to_owned),
                    prefix: out.prefix().map(str::to_owned),
                    max_keys: out.max_keys(),
                    delimiter: out.delimiter().map(str::to_owned),
                    start_after: None,
                    marker: out.marker().map(str::to_owned),
                    url_encoded: out.encoding_type().is_some(),
                })
            }
        }
    }

    async fn head_bucket(&self, bucket: &str) -> Result<(), OriginError> {
        match answer(
            self.timeout,
            self.client.head_bucket().bucket(bucket).send(),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(match e {
                OriginError::NotFound => OriginError::NoSuchBucket,
                other => other,
            }),
        }
    }

    async fn list_buckets(&self) -> Result<Vec<String>, OriginError> {
        let out = answer(self.timeout, self.client.list_buckets().send()).await?;
        Ok(out
            .buckets()
            .iter()
            .filter_map(|b| b.name().map(str::to_owned))
            .collect())
    }

    fn region(&self) -> &str {
        &self.region
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_origin_is_a_transient_failure_not_a_hang() {
        // Accepts connections and never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let cfg = OriginConfig {
            endpoint: Some(format!("http://{addr}")),
            force_path_style: true,
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            timeout: crate::config::Dur(Duration::from_millis(300)),
            ..OriginConfig::default()
        };
        let o = S3Origin::new(&cfg).await.unwrap();
        let started = std::time::Instant::now();
        let e = o
            .get_range(&RangeRequest::new("b", "k", "e", 10, 0, 10))
            .await
            .err();
        assert!(matches!(e, Some(OriginError::Transient(_))), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(20));
        keep.abort();
    }
}
