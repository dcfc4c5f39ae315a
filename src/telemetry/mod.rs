//! Logs, traces and metrics.
//!
//! Logs and traces both come from `tracing`: one subscriber with two layers — the log lines
//! (text for people, JSON for pipelines, [`json`]), written to stdout off the request path
//! ([`sink`]), and, when `telemetry.otlp_endpoint` is set, the OTLP exporter ([`trace`]).
//! Metrics are Prometheus ([`metrics`]); the access log and the request metrics are written
//! when a response's body ends ([`access`]).

pub mod access;
pub mod json;
pub mod metrics;
pub mod sink;
pub mod trace;

use crate::config::{LogFormat, TelemetryConfig};
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// What must outlive the process's work: the trace exporter, flushed at shutdown, and the log
/// writer, flushed when the guard is dropped — on every way out of `main`, errors included.
pub struct Guard {
    exporter: Option<trace::Exporter>,
    logs: sink::LogSink,
}

impl Guard {
    /// Flushes buffered spans, waiting at most `limit`.
    pub async fn shutdown(mut self, limit: std::time::Duration) {
        if let Some(e) = self.exporter.take() {
            e.shutdown(limit).await;
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.logs.flush(std::time::Duration::from_secs(2));
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `telemetry.log_level`, so
/// an operator can turn on debug logs for one run without editing the config. `instance`
/// names this replica in traces.
pub fn init(cfg: &TelemetryConfig, instance: &str) -> Result<Guard, String> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal, never into a file or a log pipeline.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let json = cfg.log_format == LogFormat::Json;
    let sink = sink::LogSink::new(Box::new(std::io::stdout()), json)
        .map_err(|e| format!("cannot start the log writer: {e}"))?;
    let logs = match cfg.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .event_format(json::JsonLine)
            .fmt_fields(json::JsonFields)
            .with_writer(sink.clone())
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(sink.clone())
            .boxed(),
    }
    .with_filter(filter);
    let (exporter, traces) = match trace::exporter(cfg, instance)? {
        Some((e, tracer)) => {
            // Shoal's own spans, debug ones included (chunks, attempts, waits), whatever the
            // log level; of events only warnings and errors, attached to their span. Never
            // the exporter's own workings, which would feed back into it.
            let only_ours = tracing_subscriber::filter::filter_fn(|m| {
                m.target().starts_with("shoal")
                    && if m.is_span() {
                        *m.level() <= Level::DEBUG
                    } else {
                        *m.level() <= Level::WARN
                    }
            });
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(only_ours);
            (Some(e), Some(layer))
        }
        None => (None, None),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    Ok(Guard {
        exporter,
        logs: sink,
    })
}
