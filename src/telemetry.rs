//! Tracing set-up: log lines on stderr, filtered by `RUST_LOG` (default `info`), as text for
//! people (coloured only when stderr is a terminal) or as one JSON object per line for log
//! shippers (`log_format`). Every log line about a job carries its id through the `job` span
//! opened by the worker and the `job_id` fields of the service layer.
//!
//! Traces (`[traces]`, off unless an OTLP endpoint is configured): `tracing` spans become
//! OpenTelemetry spans (tracing-opentelemetry), exported in batches over OTLP/HTTP by the
//! OpenTelemetry SDK. One span per API request (`api::trace`), continuing a W3C `traceparent`
//! the client sent; one per attempt (`worker::attempt`), whose parent is the request that
//! created the job — its `traceparent` is kept with the job ([`current_traceparent`],
//! [`continue_trace`]) — so one trace shows upload → queue → handler → results, across processes
//! and restarts. Spans carry the job id as the attribute `ferry.job_id`.

use std::{
    collections::HashMap,
    io::IsTerminal,
    sync::atomic::{AtomicBool, Ordering},
};

use opentelemetry::{global, trace::TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider},
};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::TraceSettings;

/// How log lines are written (`log_format`, `FERRY_LOG_FORMAT`, `--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; ANSI colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, the event's fields,
    /// and the spans it happened in (`span`, `spans`).
    Json,
}

/// Whether spans are exported: the API and the workers open their spans only then.
static TRACING: AtomicBool = AtomicBool::new(false);

/// The span attribute that names a job.
const JOB_ID: &str = "ferry.job_id";

/// Whether this process exports traces.
pub fn traces_on() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// What [`init`] set up; [`Telemetry::shutdown`] sends the spans not yet sent.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still waiting, then stops the exporter (blocks up to its timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("ferry: sending the last spans failed: {e}");
        }
    }
}

/// Sets up logging, and traces when configured. Call outside an async runtime (the exporter's
/// blocking HTTP client is built here).
pub fn init(format: LogFormat, traces: &TraceSettings) -> Telemetry {
    let filter = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn,apalis=warn"))
    };
    let text = (format == LogFormat::Text).then(|| {
        // Escape codes only mean something to a terminal; in a file or a pipe they are noise.
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    });
    // The message next to the other fields, not nested in `fields`: what shippers expect.
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
    });
    let provider = match tracer_provider(traces) {
        Ok(provider) => provider,
        Err(e) => {
            eprintln!("ferry: traces are off: {e}");
            None
        }
    };
    // Spans reach the exporter whatever `RUST_LOG` filters out of the log lines.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("ferry"))
            .with_filter(EnvFilter::new("ferry=info"))
    });
    // A second init (tests that start several apps in one process) is harmless: keep the first.
    let _ = tracing_subscriber::registry()
        .with(text.map(|l| l.with_filter(filter())))
        .with(json.map(|l| l.with_filter(filter())))
        .with(otel)
        .try_init();
    if provider.is_some() {
        global::set_text_map_propagator(TraceContextPropagator::new());
        TRACING.store(true, Ordering::Relaxed);
    }
    Telemetry { provider }
}

/// The exporter's provider, or `None` when no endpoint is configured anywhere.
fn tracer_provider(traces: &TraceSettings) -> anyhow::Result<Option<SdkTracerProvider>> {
    let from_env = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    if traces.otlp_endpoint.is_none() && !from_env {
        return Ok(None);
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary);
    // Without one here, the SDK reads the standard variables.
    if let Some(base) = &traces.otlp_endpoint {
        exporter = exporter.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
    }
    let processor = BatchSpanProcessor::builder(exporter.build()?)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(traces.export_interval)
                .build(),
        )
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(
                Resource::builder()
                    .with_service_name(traces.service_name.clone())
                    .build(),
            )
            .build(),
    ))
}

/// The W3C `traceparent` of the current span, to keep with a job; `None` without traces.
pub fn current_traceparent() -> Option<String> {
    if !traces_on() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier.remove("traceparent")
}

/// Names the job `span` is about (the attribute `ferry.job_id`), when traces are exported.
pub fn mark_job(span: &tracing::Span, job_id: impl std::fmt::Display) {
    if traces_on() {
        span.set_attribute(JOB_ID, job_id.to_string());
    }
}

/// Makes `span` a child of the trace `traceparent` names.
pub fn continue_trace(span: &tracing::Span, traceparent: &str, tracestate: Option<&str>) {
    let mut carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    if let Some(state) = tracestate {
        carrier.insert("tracestate".to_owned(), state.to_owned());
    }
    // A malformed value gives an empty context: the span then starts a trace of its own.
    let parent = global::get_text_map_propagator(|p| p.extract(&carrier));
    // Refused only for a span that already started a trace of its own: not ours.
    let _ = span.set_parent(parent);
}
