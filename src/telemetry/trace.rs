//! Traces: Shoal's `tracing` spans, exported over OTLP when `telemetry.otlp_endpoint` is set,
//! and W3C `traceparent` accepted from clients and passed on to peers.
//!
//! The spans of one GET — the request, its metadata lookup, each chunk (and where its bytes
//! came from), the call to the chunk's owner, the owner's own chunk and origin attempts, queue
//! waits and the store commit — form one trace, across replicas. An operator asking "why was
//! this GET slow?" reads the answer off one waterfall.
//!
//! Export must never slow a request: spans go to a bounded in-memory queue that a background
//! task drains in batches. When the collector is down or stalls, the queue fills and further
//! spans are dropped (and counted by the SDK in its own log line) — requests do not wait, and
//! memory does not grow.

use crate::config::TelemetryConfig;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::time::Duration;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Spans buffered for export at most; past this they are dropped, not waited for.
const MAX_QUEUE: usize = 4096;
/// Spans per export request.
const MAX_BATCH: usize = 512;
/// How often a partial batch is sent.
const DELAY: Duration = Duration::from_secs(1);
/// One export, retries included, gives up after this.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The exporter of a running process: flush it at shutdown.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Sends what is buffered, waiting at most `limit` (a collector that is down must not
    /// hold up the exit).
    pub async fn shutdown(self, limit: Duration) {
        let provider = self.provider;
        // The SDK's shutdown blocks its thread until the last export ends.
        let task = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "trace exporter shutdown failed"),
            Ok(Err(_)) | Err(_) => {
                tracing::warn!(?limit, "trace exporter did not flush in time; spans lost")
            }
        }
    }
}

/// The OTLP protocol the standard variables ask for: `http/json`, or protobuf (the default,
/// also used for `grpc`, which this build does not speak — logged at start).
fn protocol() -> Protocol {
    let var = |k: &str| {
        std::env::var(k)
            .ok()
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
    };
    match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .as_deref()
    {
        Some("http/json") => Protocol::HttpJson,
        Some("grpc") => {
            eprintln!("shoal: OTLP over gRPC is not built in; exporting traces as http/protobuf");
            Protocol::HttpBinary
        }
        _ => Protocol::HttpBinary,
    }
}

/// Builds the exporter `cfg` asks for (`None` when `telemetry.otlp_endpoint` is unset), and
/// installs the W3C trace-context propagator. `instance` tells replicas apart
/// (`service.instance.id`).
pub fn exporter(
    cfg: &TelemetryConfig,
    instance: &str,
) -> Result<Option<(Exporter, opentelemetry_sdk::trace::Tracer)>, String> {
    let Some(endpoint) = &cfg.otlp_endpoint else {
        return Ok(None);
    };
    let span_exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(protocol())
        // A configured endpoint is used as given; the signal's path is ours to add.
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(MAX_QUEUE)
        .with_max_export_batch_size(MAX_BATCH)
        .with_scheduled_delay(DELAY)
        .with_max_export_timeout(EXPORT_TIMEOUT)
        .build();
    // The batch task — encoding and sending — runs on a thread of its own (with its own
    // small tokio runtime), never on the workers that serve requests.
    let processor = BatchSpanProcessor::builder(
        span_exporter,
        opentelemetry_sdk::runtime::TokioCurrentThread,
    )
    .with_batch_config(batch)
    .build();
    // `OTEL_SERVICE_NAME`, then `OTEL_RESOURCE_ATTRIBUTES`, win; Shoal fills in the rest.
    // (The SDK alone would let the attributes win over the service name variable.)
    let detected = Resource::builder().build();
    let has = |k: &'static str| {
        detected
            .get(&opentelemetry::Key::from_static_str(k))
            .is_some_and(|v| !v.as_str().starts_with("unknown_service"))
    };
    let mut resource = Resource::builder();
    match std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
    {
        Some(name) => resource = resource.with_service_name(name),
        None if !has("service.name") => resource = resource.with_service_name("shoal"),
        None => {}
    }
    if !has("service.instance.id") {
        resource = resource.with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            instance.to_owned(),
        ));
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            resource
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    env!("CARGO_PKG_VERSION"),
                ))
                .build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer("shoal");
    Ok(Some((Exporter { provider }, tracer)))
}

/// Makes `span` a child of the trace in `headers`' `traceparent`, when there is one. Call it
/// before the span is first entered. Does nothing when traces are off.
pub fn accept_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(parent);
}

/// Writes the current span's `traceparent` (and `tracestate`) into `headers`, so that the
/// replica asked next continues this trace. Does nothing when traces are off.
pub fn inject(headers: &mut http::HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers))
    });
}
