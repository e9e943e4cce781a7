//! Helpers shared by the benches: seeded data, the RSC15 sample, and a recorder that keeps each
//! case's per-run times so a bench can print every figure as a ratio to the baseline measured in the
//! same process.

#![allow(dead_code)] // each bench uses a different subset

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::Bencher;

/// Samples per case: enough for a median, few enough that a bench finishes in minutes on 2 cores.
pub const SAMPLES: usize = 10;

/// One timed run of a case, and the CPU-time counters when it ended.
#[derive(Clone, Copy)]
struct Run {
    per_iter: Duration,
    end: Instant,
    ticks: Option<(u64, u64)>,
}

/// Per-case runs, in the order criterion measured them.
#[derive(Default)]
pub struct Recorder(Mutex<BTreeMap<(String, String), Vec<Run>>>);

impl Recorder {
    /// Runs `f` under criterion and records each sample's time per iteration.
    pub fn bench(&self, b: &mut Bencher<'_>, group: &str, case: &str, mut f: impl FnMut()) {
        let key = (group.to_string(), case.to_string());
        b.iter_custom(|iters| {
            let first = !self.0.lock().expect("recorder lock").contains_key(&key);
            let start_ticks = if first { cpu_ticks() } else { None };
            let t0 = Instant::now();
            for _ in 0..iters {
                f();
            }
            let wall = t0.elapsed();
            let run = Run {
                per_iter: wall / iters as u32,
                end: Instant::now(),
                ticks: cpu_ticks(),
            };
            let mut rows = self.0.lock().expect("recorder lock");
            let runs = rows.entry(key.clone()).or_default();
            if runs.is_empty() {
                // The counters at the start of the case, so that its first run is covered too.
                runs.push(Run {
                    per_iter: Duration::ZERO,
                    end: t0,
                    ticks: start_ticks,
                });
            }
            runs.push(run);
            wall
        });
    }

    /// The last `SAMPLES` runs of a case (criterion's warm-up runs come first).
    fn last(&self, group: &str, case: &str) -> Option<Vec<Run>> {
        let rows = self.0.lock().expect("recorder lock");
        let v = rows.get(&(group.to_string(), case.to_string()))?;
        Some(v[v.len().saturating_sub(SAMPLES)..].to_vec())
    }

    /// Median time per iteration over the last `SAMPLES` runs.
    pub fn median(&self, group: &str, case: &str) -> Option<Duration> {
        let mut t: Vec<Duration> = self.last(group, case)?.iter().map(|r| r.per_iter).collect();
        t.sort();
        t.get(t.len() / 2).copied()
    }

    /// Share of the machine (0..1) that other processes used while the case ran, warm-up included
    /// (seconds of wall time, so the 10 ms tick of the counters does not matter): figures with a share
    /// well above 0 were measured on a contended machine.
    pub fn background(&self, group: &str, case: &str) -> Option<f64> {
        let rows = self.0.lock().expect("recorder lock");
        let runs = rows.get(&(group.to_string(), case.to_string()))?;
        let with_ticks: Vec<&Run> = runs.iter().filter(|r| r.ticks.is_some()).collect();
        let (a, b) = (with_ticks.first()?, with_ticks.last()?);
        let ((busy0, own0), (busy1, own1)) = (a.ticks?, b.ticks?);
        let secs = (b.end - a.end).as_secs_f64();
        let other = (busy1 - busy0).saturating_sub(own1 - own0) as f64 / TICKS_PER_SECOND;
        (secs > 0.5).then(|| other / (secs * ncpus() as f64))
    }

    /// Every recorded (group, case).
    pub fn cases(&self) -> Vec<(String, String)> {
        self.0
            .lock()
            .expect("recorder lock")
            .keys()
            .cloned()
            .collect()
    }
}

/// Linux's USER_HZ, the unit of /proc/stat and /proc/self/stat times (100 on every mainstream arch).
const TICKS_PER_SECOND: f64 = 100.0;

fn ncpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// (busy ticks of the whole machine, ticks of this process), from /proc; `None` off Linux.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    let busy = v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4).copied().unwrap_or(0);
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name come field 3 (state) onwards; utime and stime are fields 14 and 15.
    let f: Vec<&str> = own.rsplit(')').next()?.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((busy, utime + stime))
}

/// With `LAMBDAREC_BENCH_WAIT_IDLE=<seconds>`, waits (up to that long) until other processes use < 10%
/// of the machine, as the peer harness's `--wait-idle` does. Call it before each case, outside
/// criterion's clock (criterion sizes its samples from the wall time of the warm-up).
pub fn wait_idle_if_asked() {
    let wait: f64 = std::env::var("LAMBDAREC_BENCH_WAIT_IDLE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    if wait > 0.0 {
        wait_idle(Duration::from_secs_f64(wait));
    }
}

/// Waits until other processes use < 10% of the machine over 0.5 s, or `max` has passed.
fn wait_idle(max: Duration) {
    let end = Instant::now() + max;
    while Instant::now() < end {
        let (Some(a), t0) = (cpu_ticks(), Instant::now()) else {
            return;
        };
        std::thread::sleep(Duration::from_millis(500));
        let Some(b) = cpu_ticks() else { return };
        let other = (b.0 - a.0).saturating_sub(b.1 - a.1) as f64 / TICKS_PER_SECOND;
        if other / (t0.elapsed().as_secs_f64() * ncpus() as f64) < 0.1 {
            return;
        }
    }
}

/// The load average over the last minute, to print beside the figures (other builds share this box).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `dot(a, b)` with eight partial sums, the way a careful scalar loop is written (the compiler
/// vectorises it for the baseline target): the naive baselines use it.
pub fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = a
        .chunks_exact(8)
        .remainder()
        .iter()
        .zip(b.chunks_exact(8).remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// The RSC15 sample's split (train_full → test) from `../shared/data`, prepared with `prepare`, or
/// the built-in synthetic sample (said on stderr) where this checkout has no shared data.
pub fn rsc15_or_synthetic(
    prepare: &lambdarec_trainer::data::PrepareOptions,
) -> (String, lambdarec_trainer::data::Dataset) {
    use lambdarec_trainer::data::{self, PrepareOptions, ReadOptions};
    let root = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/rsc15-yoochoose-100k"
    ));
    let train_path = root.join("yoochoose-clicks-100k_train_full.txt");
    if train_path.is_file() {
        let raw =
            data::read_log(&train_path, &ReadOptions::default()).expect("read rsc15 train_full");
        let test = data::read_log(
            &root.join("yoochoose-clicks-100k_test.txt"),
            &ReadOptions::default(),
        )
        .expect("read rsc15 test");
        return (
            "rsc15-100k".into(),
            data::prepare(&raw, Some(&test), prepare).expect("prepare rsc15"),
        );
    }
    eprintln!("../shared/data not found: benchmarking on the built-in synthetic sample instead");
    let raw = data::synthetic::generate(&data::synthetic::SyntheticOptions::default());
    (
        "synthetic".into(),
        data::prepare(&raw, None, &PrepareOptions::default()).expect("prepare synthetic"),
    )
}
