//! One `init()` per binary: `tracing` logs (JSON in containers, pretty on a terminal) and, when
//! the standard `OTEL_EXPORTER_OTLP_*` variables are set, OTLP traces and metrics over
//! `http/protobuf` (default) or `grpc`. Exporters connect lazily, so an absent collector never
//! blocks or fails start-up. The returned guard flushes on drop.

use facteur_config::TelemetryConfig;
use opentelemetry::trace::TracerProvider as _;
pub use opentelemetry_otlp::Protocol;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, metrics::SdkMeterProvider, trace::SdkTracerProvider};
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::sync::mpsc::{self, SyncSender};
use std::time::Duration;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

/// Log lines waiting for the writer thread before a logging thread waits for room (backpressure,
/// never loss).
const LINES_WAITING: usize = 16 * 1024;

/// How long a flush waits for the writer thread.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// The writer thread sleeps between rounds instead of waiting on the queue, so handing a line
/// over never wakes a thread: 2 ms after a round that wrote, doubling up to 64 ms while idle.
const NAP_MIN: Duration = Duration::from_millis(2);
const NAP_MAX: Duration = Duration::from_millis(64);

/// The process's log writer, once [`init`] has run.
static LINES: OnceLock<Lines> = OnceLock::new();

/// Log lines are written to their output by a thread of their own. The thread that logs only
/// hands its formatted line over, so a request never waits on a `write` to stdout (or on the
/// process reading that pipe: a container runtime's log collector), and the lines of a round
/// go out together. Lines reach the output within a few milliseconds (64 ms after an idle
/// spell); a flush ([`Lines::flush`], [`flush_logs`], the guard's drop) waits for them.
#[derive(Clone)]
pub struct Lines {
    tx: SyncSender<Message>,
}

enum Message {
    Line(Vec<u8>),
    Flush(mpsc::Sender<()>),
}

impl Lines {
    /// Starts the writer thread on `out`, holding at most `waiting` lines before a logging
    /// thread waits for room.
    pub fn spawn<W: Write + Send + 'static>(out: W, waiting: usize) -> std::io::Result<Lines> {
        let (tx, rx) = mpsc::sync_channel::<Message>(waiting);
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
                let mut nap = NAP_MIN;
                loop {
                    let mut wrote = false;
                    loop {
                        match rx.try_recv() {
                            // A log line that cannot be written has nowhere else to go.
                            Ok(Message::Line(line)) => {
                                drop(out.write_all(&line));
                                wrote = true;
                            }
                            Ok(Message::Flush(done)) => {
                                let _ = out.flush();
                                let _ = done.send(());
                            }
                            Err(mpsc::TryRecvError::Empty) => break,
                            Err(mpsc::TryRecvError::Disconnected) => {
                                let _ = out.flush();
                                return;
                            }
                        }
                    }
                    let _ = out.flush();
                    nap = if wrote {
                        NAP_MIN
                    } else {
                        (nap * 2).min(NAP_MAX)
                    };
                    std::thread::sleep(nap);
                }
            })?;
        Ok(Lines { tx })
    }

    /// Waits (at most `wait`) until every line handed over before the call is written;
    /// `false` if the writer did not confirm in time.
    pub fn flush(&self, wait: Duration) -> bool {
        let (done, confirmed) = mpsc::channel();
        self.tx.send(Message::Flush(done)).is_ok() && confirmed.recv_timeout(wait).is_ok()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
    type Writer = Line<'a>;
    fn make_writer(&'a self) -> Line<'a> {
        Line {
            tx: &self.tx,
            buf: Vec::new(),
        }
    }
}

/// One event's formatted line, handed to the writer thread when dropped.
pub struct Line<'a> {
    tx: &'a SyncSender<Message>,
    buf: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let _ = self.tx.send(Message::Line(std::mem::take(&mut self.buf)));
        }
    }
}

/// Writes out every log line handed over so far (waits at most 2 s). For exits that skip the
/// [`TelemetryGuard`]'s drop (`std::process::exit`).
pub fn flush_logs() {
    if let Some(l) = LINES.get() {
        l.flush(FLUSH_WAIT);
    }
}

/// Flushes the log lines and shuts the exporters down when dropped.
#[must_use = "dropping the guard stops telemetry export"]
pub struct TelemetryGuard {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        flush_logs();
        if let Some(t) = self.tracer.take() {
            let _ = t.shutdown_with_timeout(Duration::from_secs(3));
        }
        if let Some(m) = self.meter.take() {
            let _ = m.shutdown();
        }
    }
}

impl TelemetryGuard {
    /// Exports every span ended so far (the batch exporter otherwise sends every few seconds).
    pub fn flush(&self) {
        flush_logs();
        if let Some(t) = &self.tracer {
            let _ = t.force_flush();
        }
    }
}

/// Where OTLP signals go: each `None` when not exported.
#[derive(Clone, Debug, Default)]
pub struct Exporters {
    /// Traces: the protocol, and an endpoint (`None`: the exporter reads `OTEL_EXPORTER_OTLP_*`).
    pub traces: Option<(Protocol, Option<String>)>,
    /// Metrics, likewise.
    pub metrics: Option<(Protocol, Option<String>)>,
}

impl Exporters {
    /// From the standard `OTEL_*` environment variables.
    pub fn from_env() -> Exporters {
        Exporters {
            traces: otlp_protocol("TRACES").map(|p| (p, None)),
            metrics: otlp_protocol("METRICS").map(|p| (p, None)),
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

/// Crates whose spans and debug events carry secrets: serenity's HTTP spans record the route,
/// and an interaction route holds the interaction token; the HTTP, TLS and websocket stacks
/// under it log request URIs and headers at debug and trace.
const SECRET_BEARING: &[&str] = &[
    "serenity",
    "reqwest",
    "hyper",
    "hyper_util",
    "h2",
    "tungstenite",
    "tokio_tungstenite",
    "rustls",
    "tokio_rustls",
];

/// A filter for every layer: the spans of [`SECRET_BEARING`] crates are never recorded (logs or
/// OTLP), and only their warnings and errors are, whatever `RUST_LOG` asks for.
pub fn secret_safe() -> tracing_subscriber::filter::FilterFn {
    tracing_subscriber::filter::filter_fn(|m| {
        let bearing = SECRET_BEARING.iter().any(|c| {
            m.target()
                .strip_prefix(c)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        });
        !bearing || (m.is_event() && *m.level() <= tracing::Level::WARN)
    })
}

/// Installs the global subscriber. Call once, inside the Tokio runtime (the gRPC exporter
/// needs it), before anything logs. `force_json` overrides the configured format.
pub fn init(service: &'static str, cfg: &TelemetryConfig, force_json: bool) -> TelemetryGuard {
    init_with(service, cfg, force_json, Exporters::from_env())
}

/// [`init`] with the OTLP exporters given instead of read from the environment.
pub fn init_with(
    service: &'static str,
    cfg: &TelemetryConfig,
    force_json: bool,
    exporters: Exporters,
) -> TelemetryGuard {
    facteur_client::send_trace_context(current_traceparent);
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
    let ansi = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let mut problems = Vec::new();
    if LINES.get().is_none() {
        match Lines::spawn(std::io::stdout(), LINES_WAITING) {
            Ok(l) => drop(LINES.set(l)),
            Err(e) => problems.push(format!(
                "the log writer thread did not start ({e}); each thread writes its own lines"
            )),
        }
    }
    let writer = match LINES.get() {
        Some(l) => BoxMakeWriter::new(l.clone()),
        None => BoxMakeWriter::new(std::io::stdout),
    };
    let fmt_layer = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(writer)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed()
    };
    let resource = Resource::builder().with_service_name(service).build();

    let tracer = exporters.traces.and_then(|(protocol, endpoint)| {
        let exporter = match protocol {
            Protocol::Grpc => {
                let b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
                match endpoint {
                    Some(e) => b.with_endpoint(e),
                    None => b,
                }
                .build()
            }
            _ => {
                let b = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(protocol);
                match endpoint {
                    Some(e) => b.with_endpoint(e),
                    None => b,
                }
                .build()
            }
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
    let meter = exporters.metrics.and_then(|(protocol, endpoint)| {
        let exporter = match protocol {
            Protocol::Grpc => {
                let b = opentelemetry_otlp::MetricExporter::builder().with_tonic();
                match endpoint {
                    Some(e) => b.with_endpoint(e),
                    None => b,
                }
                .build()
            }
            _ => {
                let b = opentelemetry_otlp::MetricExporter::builder()
                    .with_http()
                    .with_protocol(protocol);
                match endpoint {
                    Some(e) => b.with_endpoint(e),
                    None => b,
                }
                .build()
            }
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
            .with_filter(secret_safe())
    });
    if let Some(m) = &meter {
        opentelemetry::global::set_meter_provider(m.clone());
    }
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );

    let _ = tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter()).with_filter(secret_safe()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    /// An output the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("output").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Shared {
        type Writer = Shared;
        fn make_writer(&'a self) -> Shared {
            self.clone()
        }
    }

    #[test]
    fn secret_bearing_spans_and_debug_events_never_reach_a_log_even_at_trace() {
        let out = Shared::default();
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(out.clone())
            .with_filter(EnvFilter::new("trace"))
            .with_filter(secret_safe());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(target: "serenity::http::client", "request",
                route = "WebhookOriginalInteractionResponse { token: \"tok-in-span\" }");
            let _g = span.enter();
            tracing::debug!(target: "serenity::http::ratelimiting", token = "tok-in-debug", "pre-hook");
            tracing::trace!(target: "hyper_util::client", uri = "/webhooks/1/tok-in-uri", "request");
            tracing::warn!(target: "serenity::http", "rate limited: kept");
            tracing::debug!(target: "facteur_discord", "our own debug: kept");
        });
        let text = String::from_utf8(out.0.lock().expect("output").clone()).expect("utf-8");
        for secret in ["tok-in-span", "tok-in-debug", "tok-in-uri"] {
            assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        }
        assert!(text.contains("rate limited: kept"), "{text}");
        assert!(text.contains("our own debug: kept"), "{text}");
    }

    fn log(lines: &Lines, text: &str) {
        let mut w = lines.make_writer();
        w.write_all(text.as_bytes()).expect("write");
    }

    #[test]
    fn lines_are_written_whole_and_in_order_by_the_time_a_flush_returns() {
        let out = Shared::default();
        let lines = Lines::spawn(out.clone(), 64).expect("spawn");
        for i in 0..100 {
            log(&lines, &format!("line {i}\n"));
        }
        assert!(lines.flush(FLUSH_WAIT), "the writer confirms the flush");
        let text = String::from_utf8(out.0.lock().expect("output").clone()).expect("utf-8");
        let want: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, want);
    }

    #[test]
    fn a_full_queue_makes_loggers_wait_and_loses_nothing() {
        let out = Shared::default();
        // Room for 16 lines: eight threads of 500 lines each keep it full.
        let lines = Lines::spawn(out.clone(), 16).expect("spawn");
        std::thread::scope(|s| {
            for t in 0..8 {
                let lines = &lines;
                s.spawn(move || {
                    for i in 0..500 {
                        log(lines, &format!("{t}:{i}\n"));
                    }
                });
            }
        });
        assert!(lines.flush(FLUSH_WAIT));
        let text = String::from_utf8(out.0.lock().expect("output").clone()).expect("utf-8");
        assert_eq!(text.lines().count(), 4000);
        for t in 0..8 {
            // Each thread's lines, whole and in its own order.
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("{t}:")))
                .collect();
            let want: Vec<String> = (0..500).map(|i| format!("{t}:{i}")).collect();
            assert_eq!(mine, want);
        }
    }

    #[test]
    fn an_event_that_writes_nothing_sends_nothing() {
        let out = Shared::default();
        let lines = Lines::spawn(out.clone(), 4).expect("spawn");
        drop(lines.make_writer());
        assert!(lines.flush(FLUSH_WAIT));
        assert!(out.0.lock().expect("output").is_empty());
    }
}
