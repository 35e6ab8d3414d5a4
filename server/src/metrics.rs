//! Metrics: one registry rendered as Prometheus text on `/metrics`, mirrored to OpenTelemetry
//! instruments (exported over OTLP when configured; no-ops otherwise).
//!
//! Names of the old service are kept (`facteur_command_events_*`); new ones share the prefix.

use opentelemetry::KeyValue;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket bounds in milliseconds.
const BUCKETS_MS: [f64; 14] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Every metric, declared once (name, type, help): a metric that is not declared here does not
/// compile, so none can silently vanish from `/metrics` by a typo.
macro_rules! metrics {
    ($($variant:ident => $name:literal, $kind:literal, $help:literal;)*) => {
        /// A metric of the registry.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Metric {
            $(
                #[doc = $help]
                $variant,
            )*
        }

        impl Metric {
            /// Every metric, in exposition order.
            pub const ALL: &[Metric] = &[$(Metric::$variant),*];
            /// Exposed name.
            pub fn name(self) -> &'static str {
                match self { $(Metric::$variant => $name),* }
            }
            /// `counter`, `gauge` or `histogram`.
            pub fn kind(self) -> &'static str {
                match self { $(Metric::$variant => $kind),* }
            }
            /// `# HELP` text.
            pub fn help(self) -> &'static str {
                match self { $(Metric::$variant => $help),* }
            }
        }
    };
}

metrics! {
    BuildInfo => "facteur_build_info", "gauge", "Build information; always 1.";
    GrpcRequests => "facteur_grpc_requests_total", "counter", "gRPC requests by method and status code.";
    GrpcRequestDurationMs => "facteur_grpc_request_duration_ms", "histogram", "gRPC request latency in milliseconds.";
    DependencyUp => "facteur_dependency_up", "gauge", "1 when the dependency answered its last health check.";
    CommandEventsProcessed => "facteur_command_events_processed_total", "counter", "Runs accepted.";
    CommandEventsFailed => "facteur_command_events_failed_total", "counter", "Runs whose dispatch attempt failed.";
    CommandEventsDlq => "facteur_command_events_dlq_total", "counter", "Dispatches dead-lettered after their last attempt.";
    CommandEventsDurationMs => "facteur_command_events_duration_ms", "histogram", "Time from run acceptance to Workflow creation, ms.";
    CodexTasksAccepted => "facteur_codex_tasks_accepted_total", "counter", "Codex tasks accepted (new delivery ids).";
    CodexTasksDuplicate => "facteur_codex_tasks_duplicate_total", "counter", "Codex task deliveries replayed (answered with the original).";
    CodexTasksReplayDiffers => "facteur_codex_tasks_replay_differs_total", "counter", "Codex task deliveries replayed with other content than first recorded (answered with the original).";
    CodexUnknownFields => "facteur_codex_unknown_fields_total", "counter", "Fields of proto-JSON Codex task deliveries that CodexTask does not declare (skipped, as protobuf skips them; a newer producer).";
    ValuesRefused => "facteur_values_refused_total", "counter", "Typed values refused before a run started, by command and rule (template_syntax, shell, pattern, length, ...).";
    QuotaRefusals => "facteur_quota_refusals_total", "counter", "Runs refused because a guild's quota for the command was used up, by command and limit.";
    CodexTasksRejected => "facteur_codex_tasks_rejected_total", "counter", "Codex tasks refused, by reason.";
    CodexIngestDurationMs => "facteur_codex_ingest_duration_ms", "histogram", "Codex task ingestion latency (validation and persistence), ms.";
    LeaseRedeliveries => "facteur_lease_redeliveries_total", "counter", "Jobs leased again after an earlier lease expired (an adapter died or stalled mid-job).";
    AdaptersConnected => "facteur_adapters_connected", "gauge", "argo-adapters heard from within the last 15 s (any replica).";
    UnservedNamespaces => "facteur_unserved_namespaces", "gauge", "Namespaces runs are dispatched to or wait in that no connected argo-adapter serves.";
    StrandedRuns => "facteur_stranded_runs", "gauge", "Runs waiting longer than dispatcher.strand_after_seconds in a namespace no argo-adapter serves.";
    BackgroundTaskRestarts => "facteur_background_task_restarts_total", "counter", "Background tasks started again after they ended or panicked, by task.";
    RetentionDeleted => "facteur_retention_deleted_total", "counter", "Rows deleted by retention, by kind (runs, audit, codex_task_runs).";
    CatalogProblems => "facteur_catalog_problems", "gauge", "Labelled WorkflowTemplates left out of the command catalog (each with its reason in facteurctl status).";
    CatalogRepairs => "facteur_catalog_repairs", "gauge", "Repairs made to template commands to meet Discord's rules (a text clipped, an empty enum value dropped, ...).";
    DiscordRegistrationFailures => "facteur_discord_registration_failures_total", "counter", "Command registrations Discord refused or that could not reach it, by scope (guild id or global).";
    FeedHeldBackSeconds => "facteur_feed_held_back_seconds", "gauge", "How long the oldest writing transaction has been open: the run change feed waits for it (Postgres).";
}

type Labels = Vec<(&'static str, String)>;

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS_MS.len()],
    sum: f64,
    count: u64,
}

/// The registry.
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    gauges: Mutex<BTreeMap<(&'static str, Labels), f64>>,
    histograms: Mutex<BTreeMap<(&'static str, Labels), Histogram>>,
    meter: opentelemetry::metrics::Meter,
    /// OTel instruments, built once per name (building one per increment cost every RPC a lookup
    /// in the SDK's registry and an allocation).
    instruments: Mutex<Instruments>,
}

#[derive(Default)]
struct Instruments {
    counters: HashMap<&'static str, opentelemetry::metrics::Counter<u64>>,
    gauges: HashMap<&'static str, opentelemetry::metrics::Gauge<f64>>,
    histograms: HashMap<&'static str, opentelemetry::metrics::Histogram<f64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with the build info set and the stable counters at zero.
    pub fn new() -> Self {
        let m = Metrics {
            counters: Mutex::default(),
            gauges: Mutex::default(),
            histograms: Mutex::default(),
            meter: opentelemetry::global::meter("facteur"),
            instruments: Mutex::default(),
        };
        m.set_gauge(
            Metric::BuildInfo,
            vec![("version", env!("CARGO_PKG_VERSION").to_string())],
            1.0,
        );
        for name in [
            Metric::CommandEventsProcessed,
            Metric::CommandEventsFailed,
            Metric::CommandEventsDlq,
            Metric::CodexTasksAccepted,
            Metric::CodexTasksDuplicate,
            Metric::CodexTasksReplayDiffers,
            Metric::CodexUnknownFields,
        ] {
            m.add(name, vec![], 0);
        }
        m
    }

    /// Adds `n` to a counter.
    pub fn add(&self, metric: Metric, labels: Labels, n: u64) {
        debug_assert_eq!(metric.kind(), "counter", "{metric:?}");
        let name = metric.name();
        if n > 0
            && let Ok(mut i) = self.instruments.lock()
        {
            let meter = &self.meter;
            i.counters
                .entry(name)
                .or_insert_with(|| meter.u64_counter(name).build())
                .add(n, &kv(&labels));
        }
        if let Ok(mut c) = self.counters.lock() {
            *c.entry((name, labels)).or_default() += n;
        }
    }

    /// Sets a gauge.
    pub fn set_gauge(&self, metric: Metric, labels: Labels, v: f64) {
        debug_assert_eq!(metric.kind(), "gauge", "{metric:?}");
        let name = metric.name();
        if let Ok(mut i) = self.instruments.lock() {
            let meter = &self.meter;
            i.gauges
                .entry(name)
                .or_insert_with(|| meter.f64_gauge(name).build())
                .record(v, &kv(&labels));
        }
        if let Ok(mut g) = self.gauges.lock() {
            g.insert((name, labels), v);
        }
    }

    /// Records a duration in a histogram (milliseconds).
    pub fn observe(&self, metric: Metric, labels: Labels, d: Duration) {
        debug_assert_eq!(metric.kind(), "histogram", "{metric:?}");
        let name = metric.name();
        let ms = d.as_secs_f64() * 1000.0;
        if let Ok(mut i) = self.instruments.lock() {
            let meter = &self.meter;
            i.histograms
                .entry(name)
                .or_insert_with(|| meter.f64_histogram(name).with_unit("ms").build())
                .record(ms, &kv(&labels));
        }
        if let Ok(mut h) = self.histograms.lock() {
            let e = h.entry((name, labels)).or_default();
            for (i, b) in BUCKETS_MS.iter().enumerate() {
                if ms <= *b {
                    e.counts[i] += 1;
                }
            }
            e.sum += ms;
            e.count += 1;
        }
    }

    /// Current value of a counter (tests and status).
    pub fn counter(&self, metric: Metric, labels: &[(&'static str, &str)]) -> u64 {
        let name = metric.name();
        let key: Labels = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        self.counters
            .lock()
            .map(|c| c.get(&(name, key)).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = self.counters.lock().map(|c| c.clone()).unwrap_or_default();
        let gauges = self.gauges.lock().map(|g| g.clone()).unwrap_or_default();
        let histograms = self
            .histograms
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default();
        for (name, kind, help) in Metric::ALL.iter().map(|m| (m.name(), m.kind(), m.help())) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((n, labels), v) in counters.iter().filter(|((n, _), _)| *n == name) {
                let _ = writeln!(out, "{n}{} {v}", fmt_labels(labels, None));
            }
            for ((n, labels), v) in gauges.iter().filter(|((n, _), _)| *n == name) {
                let _ = writeln!(out, "{n}{} {v}", fmt_labels(labels, None));
            }
            for ((n, labels), h) in histograms.iter().filter(|((n, _), _)| *n == name) {
                for (i, b) in BUCKETS_MS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{n}_bucket{} {}",
                        fmt_labels(labels, Some(&b.to_string())),
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "{n}_bucket{} {}",
                    fmt_labels(labels, Some("+Inf")),
                    h.count
                );
                let _ = writeln!(out, "{n}_sum{} {}", fmt_labels(labels, None), h.sum);
                let _ = writeln!(out, "{n}_count{} {}", fmt_labels(labels, None), h.count);
            }
        }
        out
    }
}

fn kv(labels: &Labels) -> Vec<KeyValue> {
    labels
        .iter()
        .map(|(k, v)| KeyValue::new(*k, v.clone()))
        .collect()
}

fn fmt_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_declared_once_with_a_known_type_and_rendered() {
        let mut seen = std::collections::HashSet::new();
        let m = Metrics::new();
        for metric in Metric::ALL {
            assert!(seen.insert(metric.name()), "{} twice", metric.name());
            assert!(metric.name().starts_with("facteur_"));
            assert!(["counter", "gauge", "histogram"].contains(&metric.kind()));
            match metric.kind() {
                "counter" => m.add(*metric, vec![], 1),
                "gauge" => m.set_gauge(*metric, vec![], 1.0),
                _ => m.observe(*metric, vec![], Duration::from_millis(1)),
            }
        }
        let text = m.render();
        for metric in Metric::ALL {
            assert!(
                text.contains(&format!("# TYPE {} {}", metric.name(), metric.kind())),
                "{} missing from /metrics",
                metric.name()
            );
        }
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.add(
            Metric::GrpcRequests,
            vec![("method", "/a.B/C".into()), ("code", "0".into())],
            2,
        );
        m.observe(
            Metric::GrpcRequestDurationMs,
            vec![("method", "/a.B/C".into())],
            Duration::from_millis(3),
        );
        let text = m.render();
        assert!(text.contains("# TYPE facteur_grpc_requests_total counter"));
        assert!(
            text.contains("facteur_grpc_requests_total{method=\"/a.B/C\",code=\"0\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("facteur_grpc_request_duration_ms_bucket{method=\"/a.B/C\",le=\"5\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "facteur_grpc_request_duration_ms_bucket{method=\"/a.B/C\",le=\"2.5\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("facteur_command_events_dlq_total 0"),
            "{text}"
        );
        assert!(text.contains("facteur_build_info{version="), "{text}");
    }
}
