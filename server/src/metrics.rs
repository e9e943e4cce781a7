//! Prometheus metrics, hand-written (atomics and the text exposition format) to keep dependencies
//! lean, and the tiny HTTP endpoint that serves them on `GET /metrics`.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// The RPCs, for per-method series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

    fn name(self) -> &'static str {
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
const EVENT_CODES: [&str; 5] = [
    "OK",
    "UNKNOWN_ITEM",
    "BAD_SESSION_ID",
    "OVERLOADED",
    "INTERNAL",
];

/// A cumulative histogram with fixed upper bounds.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum in millionths, so it fits an integer atomic.
    sum_micro: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micro: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micro
            .fetch_add((v * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

const LATENCY_BOUNDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];
const BATCH_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Every metric of the server.
pub struct Metrics {
    requests: Vec<[AtomicU64; 17]>,
    latency: Vec<Histogram>,
    events: [AtomicU64; 5],
    pub batch_size: Histogram,
    /// Requests submitted and not yet taken by the batcher; the engine's admission counter.
    pub queue_depth: AtomicU64,
    pub live_sessions: AtomicU64,
    /// Indexed by `engine::Eviction`.
    pub evictions: [AtomicU64; 2],
    /// Requests whose caller had gone (cancelled or timed out) before the batcher reached them.
    pub dropped_requests: AtomicU64,
    pub load_failures: AtomicU64,
    model_version: Mutex<Option<String>>,
    /// Seconds per event-log append (one group commit).
    pub log_append_seconds: Histogram,
    /// Records per event-log append.
    pub log_batch_records: Histogram,
    /// Bytes the event log stores.
    pub log_bytes: AtomicU64,
    /// Seconds to write a snapshot.
    pub snapshot_seconds: Histogram,
    /// When the last snapshot was taken, Unix ms (0: none yet).
    pub snapshot_unix_ms: AtomicU64,
    /// Milliseconds the start-up recovery took.
    pub replay_millis: AtomicU64,
    /// Events replayed from the log at start-up.
    pub replay_events: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Method::ALL
                .iter()
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            latency: Method::ALL
                .iter()
                .map(|_| Histogram::new(LATENCY_BOUNDS))
                .collect(),
            events: std::array::from_fn(|_| AtomicU64::new(0)),
            batch_size: Histogram::new(BATCH_BOUNDS),
            queue_depth: AtomicU64::new(0),
            live_sessions: AtomicU64::new(0),
            evictions: std::array::from_fn(|_| AtomicU64::new(0)),
            dropped_requests: AtomicU64::new(0),
            load_failures: AtomicU64::new(0),
            model_version: Mutex::new(None),
            log_append_seconds: Histogram::new(LATENCY_BOUNDS),
            log_batch_records: Histogram::new(BATCH_BOUNDS),
            log_bytes: AtomicU64::new(0),
            snapshot_seconds: Histogram::new(LATENCY_BOUNDS),
            snapshot_unix_ms: AtomicU64::new(0),
            replay_millis: AtomicU64::new(0),
            replay_events: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Records one finished RPC.
    pub fn request(&self, method: Method, code: tonic::Code, elapsed: Duration) {
        let m = Method::ALL.iter().position(|&x| x == method).unwrap_or(0);
        let c = (code as usize).min(CODES.len() - 1);
        self.requests[m][c].fetch_add(1, Ordering::Relaxed);
        self.latency[m].observe(elapsed.as_secs_f64());
    }

    /// Records one event acknowledgement by its code (lambdarec.v1.ErrorCode value).
    pub fn event(&self, code: i32) {
        let c = (code.max(0) as usize).min(EVENT_CODES.len() - 1);
        self.events[c].fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_model_version(&self, version: &str) {
        *self
            .model_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(version.to_string());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        let o = &mut out;
        let _ = writeln!(
            o,
            "# HELP lambdarec_requests_total gRPC requests by method and status code."
        );
        let _ = writeln!(o, "# TYPE lambdarec_requests_total counter");
        for (m, row) in Method::ALL.iter().zip(&self.requests) {
            for (code, n) in CODES.iter().zip(row) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        o,
                        "lambdarec_requests_total{{method=\"{}\",code=\"{code}\"}} {n}",
                        m.name()
                    );
                }
            }
        }
        let _ = writeln!(
            o,
            "# HELP lambdarec_request_duration_seconds gRPC request latency by method."
        );
        let _ = writeln!(o, "# TYPE lambdarec_request_duration_seconds histogram");
        for (m, h) in Method::ALL.iter().zip(&self.latency) {
            h.render(
                o,
                "lambdarec_request_duration_seconds",
                &format!("method=\"{}\"", m.name()),
            );
        }
        let _ = writeln!(
            o,
            "# HELP lambdarec_events_total Session events acknowledged, by ack code."
        );
        let _ = writeln!(o, "# TYPE lambdarec_events_total counter");
        for (code, n) in EVENT_CODES.iter().zip(&self.events) {
            let _ = writeln!(
                o,
                "lambdarec_events_total{{code=\"{code}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(o, "# HELP lambdarec_batch_size Requests served per batch.");
        let _ = writeln!(o, "# TYPE lambdarec_batch_size histogram");
        self.batch_size.render(o, "lambdarec_batch_size", "");
        let gauges = [
            (
                "lambdarec_queue_depth",
                "gauge",
                "Requests waiting for the batcher.",
                &self.queue_depth,
            ),
            (
                "lambdarec_live_sessions",
                "gauge",
                "Sessions in the session store.",
                &self.live_sessions,
            ),
            (
                "lambdarec_dropped_requests_total",
                "counter",
                "Requests dropped because their caller had gone.",
                &self.dropped_requests,
            ),
            (
                "lambdarec_model_load_failures_total",
                "counter",
                "Bundles that failed to load or verify.",
                &self.load_failures,
            ),
        ];
        for (name, kind, help, v) in gauges {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP lambdarec_session_evictions_total Sessions evicted, by cause."
        );
        let _ = writeln!(o, "# TYPE lambdarec_session_evictions_total counter");
        for (cause, n) in ["capacity", "ttl"].iter().zip(&self.evictions) {
            let _ = writeln!(
                o,
                "lambdarec_session_evictions_total{{cause=\"{cause}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP lambdarec_model_info The model version being served (value 1)."
        );
        let _ = writeln!(o, "# TYPE lambdarec_model_info gauge");
        if let Some(v) = self
            .model_version
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_deref()
        {
            let _ = writeln!(o, "lambdarec_model_info{{version=\"{v}\"}} 1");
        }
        out
    }
}

/// Serves `GET /metrics` (HTTP/1.x, one request per connection) until the task is aborted.
pub async fn serve_metrics(listener: TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let (mut conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Read the request head; scrapers send small requests, so a fixed buffer is enough.
            while len < buf.len() && !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf[len..])).await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => len += n,
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if head.starts_with("GET ")
                && (path == "/metrics" || path.starts_with("/metrics?"))
            {
                ("200 OK", metrics.render())
            } else {
                (
                    "404 Not Found",
                    "not found; metrics are at /metrics\n".to_string(),
                )
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = conn.write_all(response.as_bytes()).await {
                debug!(%peer, error = %e, "metrics endpoint: write failed");
            }
            let _ = conn.shutdown().await;
        });
    }
}

/// Binds the metrics endpoint.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

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
        m.batch_size.observe(3.0);
        m.set_model_version("20261126T101500123Z");
        let text = m.render();
        assert!(
            text.contains("lambdarec_requests_total{method=\"Recommend\",code=\"OK\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "lambdarec_requests_total{method=\"Recommend\",code=\"INVALID_ARGUMENT\"} 1"
        ));
        assert!(text.contains(
            "lambdarec_request_duration_seconds_bucket{method=\"Recommend\",le=\"0.0005\"} 1"
        ));
        assert!(text.contains("lambdarec_request_duration_seconds_count{method=\"Recommend\"} 2"));
        assert!(text.contains("lambdarec_batch_size_bucket{le=\"4\"} 1"));
        assert!(text.contains("lambdarec_model_info{version=\"20261126T101500123Z\"} 1"));
    }
}
