//! What a load run measured: the shared collector the session tasks feed, the final report (text and
//! JSON), and the live progress line.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use lambdarec_proto::v1::ErrorCode;
use lambdarec_trainer::eval::{Metrics, MetricsAccumulator};
use tonic::Code;

use super::replay::event_error;
use super::{LoadOptions, Mode, Workload};

/// Latencies are recorded in microseconds, 1 µs to 1 h, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

/// Per-second buckets kept for the timeline (one day).
const MAX_SECONDS: usize = 86_400;

struct Inner {
    latency: Histogram<u64>,
    per_second: Vec<Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    /// Failed attempts that were retried, by call and status code.
    retried: BTreeMap<String, u64>,
    /// External item id → dense index for the accumulator (only equality and coverage need it).
    /// Items new since the bundle (a server that takes them) are numbered past the catalogue.
    interned: HashMap<String, u32>,
    accuracy: MetricsAccumulator,
}

/// Shared by all session tasks; counters are atomics so that the progress line can read them.
pub(crate) struct Collector {
    started: Instant,
    inner: Mutex<Inner>,
    requests: AtomicU64,
    failed: AtomicU64,
    events_sent: AtomicU64,
    events_applied: AtomicU64,
    unknown_items: AtomicU64,
}

impl Collector {
    pub(crate) fn new(k: usize, n_items: usize, started: Instant) -> Self {
        Collector {
            started,
            inner: Mutex::new(Inner {
                latency: histogram(),
                per_second: Vec::new(),
                errors: BTreeMap::new(),
                retried: BTreeMap::new(),
                interned: HashMap::new(),
                accuracy: MetricsAccumulator::new(k, n_items),
            }),
            requests: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            events_sent: AtomicU64::new(0),
            events_applied: AtomicU64::new(0),
            unknown_items: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn event(&self, outcome: Result<ErrorCode, Code>) {
        self.events_sent.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Ok(ErrorCode::Ok) => _ = self.events_applied.fetch_add(1, Ordering::Relaxed),
            Ok(c) if super::replay::skipped(c) => {
                _ = self.unknown_items.fetch_add(1, Ordering::Relaxed)
            }
            _ => {}
        }
        if let Some(key) = event_error(outcome) {
            *self.lock().errors.entry(key).or_default() += 1;
        }
    }

    /// Records one Recommend or Score call.
    pub(crate) fn request(&self, latency: Duration, outcome: Result<(), Code>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let micros = (latency.as_micros() as u64).clamp(1, 3_600_000_000);
        let second = self.started.elapsed().as_secs() as usize;
        let mut inner = self.lock();
        if let Err(code) = outcome {
            self.failed.fetch_add(1, Ordering::Relaxed);
            *inner.errors.entry(format!("{code:?}")).or_default() += 1;
            return;
        }
        inner.latency.saturating_record(micros);
        if second < MAX_SECONDS {
            if inner.per_second.len() <= second {
                inner.per_second.resize_with(second + 1, histogram);
            }
            inner.per_second[second].saturating_record(micros);
        }
    }

    /// Counts a failed attempt that is retried (`event:Unavailable`, `recommend:Unknown`, …).
    pub(crate) fn retried(&self, key: &str) {
        *self.lock().retried.entry(key.to_string()).or_default() += 1;
    }

    /// Counts a failure that is not a call's status (e.g. `score:unknown-candidates`).
    pub(crate) fn error(&self, key: &str) {
        *self.lock().errors.entry(key.to_string()).or_default() += 1;
    }

    /// Scores one served list against the session's true next item.
    pub(crate) fn prediction(&self, list: &[String], target: &str) {
        let mut inner = self.lock();
        let Inner {
            interned, accuracy, ..
        } = &mut *inner;
        let mut index = |id: &str| {
            let next = interned.len() as u32;
            *interned.entry(id.to_string()).or_insert(next)
        };
        let target = index(target);
        let list: Vec<u32> = list.iter().map(|id| index(id)).collect();
        accuracy.add(&list, target);
    }

    pub(crate) fn report(
        &self,
        elapsed: Duration,
        opts: &LoadOptions,
        version: &str,
        model: &str,
        sessions: usize,
    ) -> LoadReport {
        let inner = self.lock();
        let ms = |q: f64| inner.latency.value_at_quantile(q) as f64 / 1000.0;
        let secs = elapsed.as_secs_f64().max(1e-9);
        let requests = self.requests.load(Ordering::Relaxed);
        let timeline = inner
            .per_second
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_empty())
            .map(|(s, h)| TimelinePoint {
                second: s as u64,
                requests: h.len(),
                p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
                p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            })
            .collect();
        let errors = inner.errors.clone();
        let retried = inner.retried.clone();
        LoadReport {
            run_tag: String::new(),
            target: opts.target.clone(),
            model: model.to_string(),
            model_version: version.to_string(),
            mode: opts.mode,
            workload: opts.workload,
            sessions_in_log: sessions,
            seconds: elapsed.as_secs_f64(),
            requests,
            failed: self.failed.load(Ordering::Relaxed),
            throughput_rps: requests as f64 / secs,
            events_sent: self.events_sent.load(Ordering::Relaxed),
            events_applied: self.events_applied.load(Ordering::Relaxed),
            unknown_items: self.unknown_items.load(Ordering::Relaxed),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: inner.latency.max() as f64 / 1000.0,
            mean_ms: inner.latency.mean() / 1000.0,
            errors,
            retried,
            accuracy: inner.accuracy.finish(),
            timeline,
        }
    }
}

/// Recommend (or Score) latency over one second of the run.
#[derive(Clone, Debug, PartialEq)]
pub struct TimelinePoint {
    pub second: u64,
    pub requests: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The outcome of a load run. Latencies are of successful Recommend (or Score) calls.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// Session ids of the run are `<run_tag>/<pass>/<session key in the log>`.
    pub run_tag: String,
    pub target: String,
    pub model: String,
    pub model_version: String,
    pub mode: Mode,
    pub workload: Workload,
    pub sessions_in_log: usize,
    pub seconds: f64,
    /// Recommend (or Score) calls made (failed ones included).
    pub requests: u64,
    pub failed: u64,
    pub throughput_rps: f64,
    pub events_sent: u64,
    pub events_applied: u64,
    /// Events acked UNKNOWN_ITEM (skipped, as the offline evaluator drops them).
    pub unknown_items: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// Failures by gRPC status code of Recommend or Score (`Unavailable`, …), of event acks
    /// (`event:OVERLOADED`), of the event stream (`event-stream:…`), and Score answers naming
    /// candidates the server does not know (`score:unknown-candidates`).
    pub errors: BTreeMap<String, u64>,
    /// Failed attempts that were retried (`--retries`), by call and status code: not in `errors`
    /// unless the last retry failed too.
    pub retried: BTreeMap<String, u64>,
    /// Online accuracy. Coverage uses the served catalogue size; pop_share is not meaningful here
    /// (the harness does not know item popularity) and is left out of the outputs.
    pub accuracy: Metrics,
    pub timeline: Vec<TimelinePoint>,
}

impl LoadReport {
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// One JSON object: `mode, requests, throughput_rps, p50_ms, p99_ms, p999_ms, errors, recall@k,
    /// mrr@k`, … (`candidates` in score mode).
    pub fn to_json(&self) -> serde_json::Value {
        let k = self.accuracy.k;
        let mut v = serde_json::json!({
            "mode": self.workload.call().to_lowercase(),
            "requests": self.requests,
            "throughput_rps": self.throughput_rps,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "p999_ms": self.p999_ms,
            "max_ms": self.max_ms,
            "mean_ms": self.mean_ms,
            "errors": self.errors,
            "errors_total": self.errors_total(),
            "retried": self.retried,
            format!("recall@{k}"): self.accuracy.recall,
            format!("mrr@{k}"): self.accuracy.mrr,
            format!("coverage@{k}"): self.accuracy.coverage,
            "events": self.accuracy.events,
            "events_sent": self.events_sent,
            "events_applied": self.events_applied,
            "unknown_items": self.unknown_items,
            "seconds": self.seconds,
            "target": self.target,
            "run_tag": self.run_tag,
            "model": self.model,
            "model_version": self.model_version,
        });
        match self.mode {
            Mode::Closed { concurrency } => v["concurrency"] = concurrency.into(),
            Mode::Open { rate } => v["rate_sessions_per_s"] = rate.into(),
        }
        if let Workload::Score { candidates } = self.workload {
            v["candidates"] = candidates.into();
        }
        // Per second of the run: calls and their p50/p99 (stability over a long run, e.g. a soak).
        v["timeline"] = self
            .timeline
            .iter()
            .map(|t| {
                serde_json::json!({
                    "second": t.second, "requests": t.requests, "p50_ms": t.p50_ms, "p99_ms": t.p99_ms,
                })
            })
            .collect();
        v
    }

    /// A short human-readable summary.
    pub fn text(&self) -> String {
        let k = self.accuracy.k;
        let mode = match self.mode {
            Mode::Closed { concurrency } => {
                format!("closed loop, {concurrency} sessions in flight")
            }
            Mode::Open { rate } => format!("open loop, {rate} sessions/s (Poisson)"),
        };
        let mut out = format!(
            "load on {} (model {} version {}), {mode}, {:.1} s\n",
            self.target, self.model, self.model_version, self.seconds
        );
        let call = match self.workload {
            Workload::Recommend => "Recommend".to_string(),
            Workload::Score { candidates } => format!("Score ({candidates} candidates)"),
            Workload::Events => "Event acks (no calls)".to_string(),
        };
        out += &format!(
            "{call}: {} requests, {:.1} req/s; events: {} sent, {} applied, {} unknown items skipped\n",
            self.requests,
            self.throughput_rps,
            self.events_sent,
            self.events_applied,
            self.unknown_items
        );
        out += &format!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms
        );
        if self.errors.is_empty() {
            out += "errors: none\n";
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            out += &format!("errors: {}\n", list.join(", "));
        }
        if !self.retried.is_empty() {
            let list: Vec<String> = self
                .retried
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            out += &format!("retried attempts: {}\n", list.join(", "));
        }
        out += &format!(
            "online accuracy: Recall@{k} {:.4}  MRR@{k} {:.4}  Coverage@{k} {:.4}  ({} predictions)\n",
            self.accuracy.recall, self.accuracy.mrr, self.accuracy.coverage, self.accuracy.events
        );
        out
    }
}

/// The live progress line (drawn only when stderr is a terminal).
pub(crate) struct Progress {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub(crate) fn start(collector: Arc<Collector>) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::new_spinner()
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("static template"),
        );
        let shown = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let c = &collector;
                let requests = c.requests.load(Ordering::Relaxed);
                let secs = c.started.elapsed().as_secs_f64().max(1e-3);
                let (p99, recall) = {
                    let inner = c.lock();
                    (
                        inner.latency.value_at_quantile(0.99) as f64 / 1000.0,
                        inner.accuracy.finish().recall,
                    )
                };
                shown.set_message(format!(
                    "{requests} requests  {:.0} req/s  p99 {p99:.2} ms  errors {}  recall {recall:.4}",
                    requests as f64 / secs,
                    c.failed.load(Ordering::Relaxed),
                ));
                shown.tick();
            }
        });
        Progress { bar, ticker }
    }

    pub(crate) fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
