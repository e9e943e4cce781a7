//! Prometheus metrics of the server: one [`Metrics`] value owning a `prometheus-client` registry and a
//! handle on every metric in it, rendered in the Prometheus text format (0.0.4) by [`Metrics::render`].
//! The HTTP endpoint that serves them is `crate::http`.
//!
//! Adding a metric: give `Metrics` a field of the metric's type (`Counter`, `Gauge`, `Histogram`, or a
//! `Family` of them for labelled series), create and register it in `Metrics::new` with its name
//! (without the `lambdarec_` prefix, and without `_total` for counters: both are added when rendered)
//! and a one-line help text, then update it where the event happens, and give it a panel in
//! `deploy/grafana/lambdarec.json` (a unit test fails until it has one). Metric handles are cheap
//! clones of shared atomics: the field and the registered copy are the same series.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};

use lambdarec_trainer::blend::Strategy;

use crate::engine::online::OnlineEval;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

mod security;
pub use security::{Limit, Listener, SecurityMetrics};

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The RPCs, for per-method series (the label value is the variant's name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum Method {
    StreamEvents,
    Recommend,
    Score,
    GetSession,
    DeleteSession,
    ModelInfo,
    Reload,
    Ping,
}

impl Method {
    /// The RPC of a method name (the last part of a gRPC path).
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The RPC's name in recommender.proto.
    pub fn name(self) -> &'static str {
        match self {
            Method::StreamEvents => "StreamEvents",
            Method::Recommend => "Recommend",
            Method::Score => "Score",
            Method::GetSession => "GetSession",
            Method::DeleteSession => "DeleteSession",
            Method::ModelInfo => "ModelInfo",
            Method::Reload => "Reload",
            Method::Ping => "Ping",
        }
    }

    const ALL: [Method; 8] = [
        Method::StreamEvents,
        Method::Recommend,
        Method::Score,
        Method::GetSession,
        Method::DeleteSession,
        Method::ModelInfo,
        Method::Reload,
        Method::Ping,
    ];
}

/// gRPC status code names, indexed by code.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Event ack codes (lambdarec.v1.ErrorCode), indexed by value.
const EVENT_CODES: [&str; 7] = [
    "OK",
    "UNKNOWN_ITEM",
    "BAD_SESSION_ID",
    "OVERLOADED",
    "INTERNAL",
    "SESSION_LIMIT",
    "NEW_ITEM_REJECTED",
];

/// Eviction causes, indexed by `engine::Eviction`.
const EVICTION_CAUSES: [&str; 2] = ["capacity", "ttl"];

const LATENCY_BOUNDS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];
const BATCH_BOUNDS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: Method,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: Method,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OnlineLabels {
    version: String,
    strategy: &'static str,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// Every metric of the server, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// Indexed like `Method::ALL`: the per-method series, held so that recording needs no lookup.
    latency: Vec<Histogram>,
    /// Indexed like `EVENT_CODES`.
    events: Vec<Counter>,
    pub batch_size: Histogram,
    /// Requests submitted and not yet taken by the batcher; the engine's admission counter (`inc`
    /// returns the previous value).
    pub queue_depth: Gauge<u64, AtomicU64>,
    pub live_sessions: Gauge<u64, AtomicU64>,
    /// Sessions in the live session-kNN index.
    pub knn_sessions: Gauge<u64, AtomicU64>,
    /// Items new since the bundle that the server holds.
    pub new_items: Gauge<u64, AtomicU64>,
    /// Live sessions the canary version serves (0 without a canary).
    pub canary_sessions: Gauge<u64, AtomicU64>,
    /// Indexed by `engine::Eviction`. The session store keeps the running totals; the batcher copies
    /// them here (`inner().store`), which keeps each series monotonic as a counter must be.
    pub evictions: [Counter; 2],
    /// Requests whose caller had gone (cancelled or timed out) before the batcher reached them.
    pub dropped_requests: Counter,
    pub load_failures: Counter,
    model_info: Family<VersionLabels, Gauge>,
    /// Online evaluation (`engine::online`): predictions scored, hits, reciprocal-rank sums.
    online_predictions: Family<OnlineLabels, Counter>,
    online_hits: Family<OnlineLabels, Counter>,
    online_rr: Family<OnlineLabels, Counter<f64, AtomicU64>>,
    /// The same figures with a rolling window, for ModelInfo.
    pub online_eval: OnlineEval,
    /// The version `model_info` reports; the lock also orders concurrent version changes.
    model_version: Mutex<Option<String>>,
    /// Seconds per event-log append (one group commit).
    pub log_append_seconds: Histogram,
    /// Records per event-log append.
    pub log_batch_records: Histogram,
    /// Bytes the event log stores.
    pub log_bytes: Gauge<u64, AtomicU64>,
    /// Seconds to write a snapshot.
    pub snapshot_seconds: Histogram,
    /// When the last snapshot was taken, Unix ms (0: none yet).
    pub snapshot_unix_ms: Gauge<u64, AtomicU64>,
    /// Milliseconds the start-up recovery took.
    pub replay_millis: Gauge<u64, AtomicU64>,
    /// Events replayed from the log at start-up.
    pub replay_events: Gauge<u64, AtomicU64>,
    /// Log records durable but not yet archived (the archive's lag behind the log).
    pub archive_lag_records: Gauge<u64, AtomicU64>,
    /// Events written to the archive (copied from the archiver's own total).
    pub archive_events: Counter,
    /// Parquet bytes written to the archive.
    pub archive_bytes: Counter,
    /// Archive batches that failed (and were retried).
    pub archive_errors: Counter,
    /// Replicas: seconds per catch-up read of a batch's sessions from the shared log.
    pub handoff_seconds: Histogram,
    /// Replicas: sessions caught up from the shared log because this replica did not hold them
    /// (`[0]`, moved here) or held them behind records another replica wrote (`[1]`).
    pub handoff_sessions: [Counter; 2],
    /// Replicas: records applied from the shared log by catch-ups.
    pub handoff_records: Counter,
    /// Replicas: records of its own a replica read back from the log (the log could not confirm
    /// they directly followed what it knew: records in flight together, or another writer between).
    pub handoff_own_reads: Counter,
    /// Connections, TLS, tokens and resource limits.
    pub security: SecurityMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric. Labelled series that dashboards expect to see at zero
    /// (every method's latency, every event code, every eviction cause) are created up front.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("lambdarec");
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "requests",
            "gRPC requests by method and status code",
            requests.clone(),
        );
        let latency_family: HistogramFamily<MethodLabels> =
            Family::new_with_constructor(|| Histogram::new(LATENCY_BOUNDS));
        r.register(
            "request_duration_seconds",
            "gRPC request latency in seconds, by method (a cancelled call counts until it is dropped)",
            latency_family.clone(),
        );
        let latency = Method::ALL
            .iter()
            .map(|&method| latency_family.get_or_create_owned(&MethodLabels { method }))
            .collect();
        let event_family = Family::<CodeLabels, Counter>::default();
        r.register(
            "events",
            "Session events acknowledged, by ack code (lambdarec.v1.ErrorCode)",
            event_family.clone(),
        );
        let events = EVENT_CODES
            .iter()
            .map(|&code| event_family.get_or_create_owned(&CodeLabels { code }))
            .collect();
        let batch_size = Histogram::new(BATCH_BOUNDS);
        r.register(
            "batch_size",
            "Requests served per batch",
            batch_size.clone(),
        );
        let queue_depth = Gauge::<u64, AtomicU64>::default();
        r.register(
            "queue_depth",
            "Requests waiting for the batcher",
            queue_depth.clone(),
        );
        let live_sessions = Gauge::<u64, AtomicU64>::default();
        r.register(
            "live_sessions",
            "Sessions in the session store",
            live_sessions.clone(),
        );
        let knn_sessions = Gauge::<u64, AtomicU64>::default();
        r.register(
            "knn_sessions",
            "Sessions in the live session-kNN index (training and live ones)",
            knn_sessions.clone(),
        );
        let new_items = Gauge::<u64, AtomicU64>::default();
        r.register(
            "new_items",
            "Items new since the serving bundle that the server has taken (--new-items accept)",
            new_items.clone(),
        );
        let canary_sessions = Gauge::<u64, AtomicU64>::default();
        r.register(
            "canary_sessions",
            "Live sessions served by the canary version (serve --canary-fraction); 0 without a canary",
            canary_sessions.clone(),
        );
        let online_predictions = Family::<OnlineLabels, Counter>::default();
        r.register(
            "online_predictions",
            "Recommend lists scored against the session's next event, by model version and strategy",
            online_predictions.clone(),
        );
        let online_hits = Family::<OnlineLabels, Counter>::default();
        r.register(
            "online_hits",
            "Scored Recommend lists whose first 20 items held the session's next item",
            online_hits.clone(),
        );
        let online_rr = Family::<OnlineLabels, Counter<f64, AtomicU64>>::default();
        r.register(
            "online_reciprocal_rank",
            "Sum of 1/rank of the session's next item in the first 20 items of its last Recommend \
             (0 for a miss); over online_predictions it is the online MRR@20",
            online_rr.clone(),
        );
        let dropped_requests = Counter::default();
        r.register(
            "dropped_requests",
            "Requests dropped because their caller had gone",
            dropped_requests.clone(),
        );
        let load_failures = Counter::default();
        r.register(
            "model_load_failures",
            "Bundles that failed to load or verify",
            load_failures.clone(),
        );
        let eviction_family = Family::<CauseLabels, Counter>::default();
        r.register(
            "session_evictions",
            "Sessions evicted, by cause (capacity: LRU to make room; ttl: idle too long)",
            eviction_family.clone(),
        );
        let evictions = EVICTION_CAUSES
            .map(|cause| eviction_family.get_or_create_owned(&CauseLabels { cause }));
        let model_info = Family::<VersionLabels, Gauge>::default();
        r.register(
            "model_info",
            "The model version being served (value 1)",
            model_info.clone(),
        );
        let log_append_seconds = Histogram::new(LATENCY_BOUNDS);
        r.register(
            "log_append_seconds",
            "Seconds per event-log append (one group commit)",
            log_append_seconds.clone(),
        );
        let log_batch_records = Histogram::new(BATCH_BOUNDS);
        r.register(
            "log_batch_records",
            "Records per event-log append",
            log_batch_records.clone(),
        );
        let log_bytes = Gauge::<u64, AtomicU64>::default();
        r.register("log_bytes", "Bytes the event log stores", log_bytes.clone());
        let snapshot_seconds = Histogram::new(LATENCY_BOUNDS);
        r.register(
            "snapshot_seconds",
            "Seconds to write a session snapshot",
            snapshot_seconds.clone(),
        );
        let snapshot_unix_ms = Gauge::<u64, AtomicU64>::default();
        r.register(
            "snapshot_unix_ms",
            "When the last session snapshot was taken, Unix ms (0: none yet)",
            snapshot_unix_ms.clone(),
        );
        let replay_millis = Gauge::<u64, AtomicU64>::default();
        r.register(
            "replay_millis",
            "Milliseconds the start-up recovery from the event log took",
            replay_millis.clone(),
        );
        let replay_events = Gauge::<u64, AtomicU64>::default();
        r.register(
            "replay_events",
            "Events replayed from the event log at start-up",
            replay_events.clone(),
        );
        let archive_lag_records = Gauge::<u64, AtomicU64>::default();
        r.register(
            "archive_lag_records",
            "Event-log records durable but not yet copied to the archive",
            archive_lag_records.clone(),
        );
        let archive_events = Counter::default();
        r.register(
            "archive_events",
            "Events written to the archive (<store>/events)",
            archive_events.clone(),
        );
        let archive_bytes = Counter::default();
        r.register(
            "archive_bytes",
            "Parquet bytes written to the archive",
            archive_bytes.clone(),
        );
        let archive_errors = Counter::default();
        r.register(
            "archive_errors",
            "Archive batches that failed (each is retried)",
            archive_errors.clone(),
        );
        let handoff_seconds = Histogram::new(LATENCY_BOUNDS);
        r.register(
            "handoff_seconds",
            "Replicas: seconds per read of a batch's sessions from the shared event log",
            handoff_seconds.clone(),
        );
        let handoff_family = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        r.register(
            "handoff_sessions",
            "Replicas: sessions caught up from the shared event log, by why (moved: not held here; behind: another replica wrote to it)",
            handoff_family.clone(),
        );
        let handoff_sessions = ["moved", "behind"]
            .map(|why| handoff_family.get_or_create(&vec![("why", why)]).clone());
        let handoff_records = Counter::default();
        r.register(
            "handoff_records",
            "Replicas: records applied from the shared event log by catch-ups",
            handoff_records.clone(),
        );
        let handoff_own_reads = Counter::default();
        r.register(
            "handoff_own_reads",
            "Replicas: records of its own a replica read back from the shared event log",
            handoff_own_reads.clone(),
        );
        let security = SecurityMetrics::register(&mut r);
        Metrics {
            handoff_own_reads,
            handoff_seconds,
            handoff_sessions,
            handoff_records,
            registry: r,
            requests,
            latency,
            events,
            batch_size,
            queue_depth,
            live_sessions,
            knn_sessions,
            new_items,
            canary_sessions,
            online_predictions,
            online_hits,
            online_rr,
            online_eval: OnlineEval::default(),
            evictions,
            dropped_requests,
            load_failures,
            model_info,
            model_version: Mutex::new(None),
            log_append_seconds,
            log_batch_records,
            log_bytes,
            snapshot_seconds,
            snapshot_unix_ms,
            replay_millis,
            replay_events,
            archive_lag_records,
            archive_events,
            archive_bytes,
            archive_errors,
            security,
        }
    }

    /// Records one finished RPC.
    pub fn request(&self, method: Method, code: tonic::Code, elapsed: Duration) {
        let code = CODES[(code as usize).min(CODES.len() - 1)];
        self.requests
            .get_or_create(&RequestLabels { method, code })
            .inc();
        let m = Method::ALL.iter().position(|&x| x == method).unwrap_or(0);
        self.latency[m].observe(elapsed.as_secs_f64());
    }

    /// Records one event acknowledgement by its code (lambdarec.v1.ErrorCode value).
    pub fn event(&self, code: i32) {
        // A code this build does not know (a newer peer's) counts as INTERNAL.
        let internal = lambdarec_proto::v1::ErrorCode::Internal as usize;
        let c = usize::try_from(code)
            .ok()
            .filter(|&c| c < EVENT_CODES.len())
            .unwrap_or(internal);
        self.events[c].inc();
    }

    /// Makes `version` the one `lambdarec_model_info` reports. The new series is added before the old
    /// one is removed, so a scrape never finds no version once one has been served.
    /// Counts one online prediction: the session's next item was at `rank` (1-based) in the list
    /// `version` served with `strategy`, or not in it (see `engine::online`).
    pub fn online(&self, version: &Arc<str>, strategy: Strategy, rank: Option<usize>) {
        let rr = self.online_eval.record(version, strategy, rank);
        let labels = OnlineLabels {
            version: version.to_string(),
            strategy: strategy.name(),
        };
        self.online_predictions.get_or_create(&labels).inc();
        if rank.is_some() {
            self.online_hits.get_or_create(&labels).inc();
            self.online_rr.get_or_create(&labels).inc_by(rr);
        }
    }

    pub fn set_model_version(&self, version: &str) {
        let mut current = self
            .model_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let label = |v: &str| VersionLabels {
            version: v.to_string(),
        };
        self.model_info.get_or_create(&label(version)).set(1);
        if let Some(old) = current.replace(version.to_string())
            && old != version
        {
            self.model_info.remove(&label(&old));
        }
    }

    /// The Prometheus text exposition (format 0.0.4, [`CONTENT_TYPE`]) of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        // Writing into a String cannot fail; an encoder error would be a bug in a label value.
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn renders_counters_histograms_and_info() {
        let m = Metrics::default();
        m.request(
            Method::Recommend,
            tonic::Code::Ok,
            Duration::from_micros(300),
        );
        m.request(
            Method::Recommend,
            tonic::Code::InvalidArgument,
            Duration::from_millis(2),
        );
        m.event(1);
        m.batch_size.observe(3.0);
        assert_eq!(m.queue_depth.inc(), 0, "inc returns the previous value");
        m.evictions[1]
            .inner()
            .store(2, std::sync::atomic::Ordering::Relaxed);
        m.set_model_version("20261126T101500123Z");
        let text = m.render();
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "# HELP lambdarec_requests_total gRPC requests by method and status code.",
            "# TYPE lambdarec_requests_total counter",
            "lambdarec_requests_total{method=\"Recommend\",code=\"OK\"} 1",
            "lambdarec_requests_total{method=\"Recommend\",code=\"INVALID_ARGUMENT\"} 1",
            "# TYPE lambdarec_request_duration_seconds histogram",
            "lambdarec_request_duration_seconds_bucket{method=\"Recommend\",le=\"0.00025\"} 0",
            "lambdarec_request_duration_seconds_bucket{method=\"Recommend\",le=\"0.0005\"} 1",
            "lambdarec_request_duration_seconds_bucket{method=\"Recommend\",le=\"0.0025\"} 2",
            "lambdarec_request_duration_seconds_bucket{method=\"Recommend\",le=\"+Inf\"} 2",
            "lambdarec_request_duration_seconds_sum{method=\"Recommend\"} 0.0023",
            "lambdarec_request_duration_seconds_count{method=\"Recommend\"} 2",
            "lambdarec_request_duration_seconds_count{method=\"Ping\"} 0",
            "lambdarec_events_total{code=\"OK\"} 0",
            "lambdarec_events_total{code=\"UNKNOWN_ITEM\"} 1",
            "lambdarec_batch_size_bucket{le=\"2\"} 0",
            "lambdarec_batch_size_bucket{le=\"4\"} 1",
            "lambdarec_batch_size_count 1",
            "# TYPE lambdarec_queue_depth gauge",
            "lambdarec_queue_depth 1",
            "lambdarec_live_sessions 0",
            "lambdarec_dropped_requests_total 0",
            "lambdarec_model_load_failures_total 0",
            "lambdarec_session_evictions_total{cause=\"capacity\"} 0",
            "lambdarec_session_evictions_total{cause=\"ttl\"} 2",
            "# TYPE lambdarec_model_info gauge",
            "lambdarec_model_info{version=\"20261126T101500123Z\"} 1",
        ] {
            assert!(lines.contains(&want), "missing line {want:?} in\n{text}");
        }
        // Only requests that happened have a series.
        assert!(!text.contains("method=\"Ping\",code="), "{text}");
    }

    #[test]
    fn a_new_model_version_replaces_the_old_one() {
        let m = Metrics::default();
        assert!(!m.render().contains("lambdarec_model_info{"));
        m.set_model_version("v1");
        m.set_model_version("v1");
        m.set_model_version("v2");
        let text = m.render();
        assert!(
            text.contains("lambdarec_model_info{version=\"v2\"} 1"),
            "{text}"
        );
        assert!(!text.contains("version=\"v1\""), "{text}");
    }

    /// Every `expr` string anywhere in a Grafana dashboard.
    fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match value {
                        serde_json::Value::String(e) if key == "expr" => out.push(e.clone()),
                        _ => exprs(value, out),
                    }
                }
            }
            serde_json::Value::Array(list) => list.iter().for_each(|x| exprs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn the_grafana_dashboard_queries_only_what_render_exposes() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../deploy/grafana/lambdarec.json"))
                .expect("the dashboard is well-formed JSON");
        assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");
        let m = Metrics::default();
        m.request(Method::Ping, tonic::Code::Ok, Duration::ZERO);
        m.set_model_version("v1");
        m.online(&Arc::from("v1"), Strategy::Blend, Some(2));
        let text = m.render();
        let samples = text.lines().filter(|l| !l.starts_with('#'));
        let names: HashSet<&str> = samples
            .clone()
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let labels: HashSet<&str> = samples
            .filter_map(|l| Some(l.split_once('{')?.1.split_once('}')?.0))
            .flat_map(|ls| ls.split(',').filter_map(|kv| kv.split('=').next()))
            .chain(["instance"]) // added by Prometheus at scrape time
            .collect();
        let mut queries = Vec::new();
        exprs(&dashboard, &mut queries);
        assert!(queries.len() >= 10, "{queries:?}");
        let mut seen = HashSet::new();
        for q in &queries {
            let words = q.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            for metric in words.filter(|w| w.starts_with("lambdarec_")) {
                assert!(names.contains(metric), "{metric} (in {q}) is not exposed");
                seen.insert(metric.to_string());
            }
            for (_, rest) in q.match_indices("by (").map(|(i, _)| q.split_at(i + 4)) {
                let grouped = rest.split(')').next().unwrap_or("");
                for label in grouped.split(',').map(str::trim) {
                    assert!(
                        labels.contains(label),
                        "label {label} (in {q}) is not exposed"
                    );
                }
            }
        }
        // Every metric the server exposes has a panel: a new metric needs one in the dashboard.
        for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let name = family.split(' ').next().unwrap_or_default();
            assert!(
                seen.iter().any(|m| m.starts_with(name)),
                "no panel of deploy/grafana/lambdarec.json queries {name}"
            );
        }
    }

    #[test]
    fn out_of_range_codes_are_clamped_not_panics() {
        let m = Metrics::default();
        m.event(-3);
        m.event(99);
        m.event(lambdarec_proto::v1::ErrorCode::SessionLimit as i32);
        let text = m.render();
        // Unknown codes (negative, or a newer peer's) are INTERNAL, never a neighbouring code.
        for (code, n) in [("OK", 0), ("INTERNAL", 2), ("SESSION_LIMIT", 1)] {
            let line = format!("lambdarec_events_total{{code=\"{code}\"}} {n}\n");
            assert!(text.contains(&line), "{line}: {text}");
        }
    }
}
