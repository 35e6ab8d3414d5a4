//! One `init()` per binary: `tracing` logs (JSON in containers, pretty on a terminal) and, when
//! the standard `OTEL_EXPORTER_OTLP_*` variables are set, OTLP traces and metrics over
//! `http/protobuf` (default) or `grpc`. Exporters connect lazily, so an absent collector never
//! blocks or fails start-up. The returned guard flushes on drop.

use crate::model::TelemetryConfig;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{Resource, metrics::SdkMeterProvider, trace::SdkTracerProvider};
use std::io::IsTerminal;
use std::time::Duration;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// Flushes and shuts the exporters down when dropped.
#[must_use = "dropping the guard stops telemetry export"]
pub struct TelemetryGuard {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(t) = self.tracer.take() {
            let _ = t.shutdown_with_timeout(Duration::from_secs(3));
        }
        if let Some(m) = self.meter.take() {
            let _ = m.shutdown();
        }
    }
}

/// Which OTLP protocol a signal uses, from `OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL` or
/// `OTEL_EXPORTER_OTLP_PROTOCOL`; `None` when no endpoint is configured for it.
fn otlp_protocol(signal: &str) -> Option<Protocol> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return None;
    }
    var(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))
        .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
    let proto = var(&format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"))
        .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    Some(match proto.as_deref() {
        Some("grpc") => Protocol::Grpc,
        _ => Protocol::HttpBinary,
    })
}

/// Installs the global subscriber. Call once, inside the Tokio runtime (the gRPC exporter
/// needs it), before anything logs. `force_json` overrides the configured format.
pub fn init(service: &'static str, cfg: &TelemetryConfig, force_json: bool) -> TelemetryGuard {
    let filter = || {
        EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&cfg.log_level))
            .unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let json = force_json
        || match cfg.log_format.as_str() {
            "json" => true,
            "pretty" => false,
            _ => !std::io::stdout().is_terminal(),
        };
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    let resource = Resource::builder().with_service_name(service).build();

    let mut problems = Vec::new();
    let tracer = otlp_protocol("TRACES").and_then(|protocol| {
        let exporter = match protocol {
            Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build(),
            _ => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .build(),
        };
        match exporter {
            Ok(e) => Some(
                SdkTracerProvider::builder()
                    .with_resource(resource.clone())
                    .with_batch_exporter(e)
                    .build(),
            ),
            Err(e) => {
                problems.push(format!("OTLP trace exporter disabled: {e}"));
                None
            }
        }
    });
    let meter = otlp_protocol("METRICS").and_then(|protocol| {
        let exporter = match protocol {
            Protocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build(),
            _ => opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .build(),
        };
        match exporter {
            Ok(e) => Some(
                SdkMeterProvider::builder()
                    .with_resource(resource.clone())
                    .with_periodic_exporter(e)
                    .build(),
            ),
            Err(e) => {
                problems.push(format!("OTLP metric exporter disabled: {e}"));
                None
            }
        }
    });

    // Separate filters per layer: a global filter would also drop spans before OTel sees them.
    let otel_layer = tracer.as_ref().map(|t| {
        opentelemetry::global::set_tracer_provider(t.clone());
        tracing_opentelemetry::layer()
            .with_tracer(t.tracer(service))
            .with_filter(EnvFilter::new("info"))
    });
    if let Some(m) = &meter {
        opentelemetry::global::set_meter_provider(m.clone());
    }
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );

    let _ = tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter()))
        .with(otel_layer)
        .try_init();
    for p in problems {
        tracing::warn!("{p}");
    }
    tracing::debug!(
        traces = tracer.is_some(),
        metrics = meter.is_some(),
        "telemetry initialised"
    );
    TelemetryGuard { tracer, meter }
}

/// The W3C `traceparent` of the current span, when it is sampled and exported (else `None`).
pub fn current_traceparent() -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    carrier.remove("traceparent")
}

/// Makes `span` a child of the trace context found by `get` (an incoming request's headers).
pub fn adopt_parent(span: &tracing::Span, get: impl Fn(&str) -> Option<String>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let map: std::collections::HashMap<String, String> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|k| get(k).map(|v| (k.to_string(), v)))
        .collect();
    if map.is_empty() {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&map));
    let _ = span.set_parent(cx);
}
