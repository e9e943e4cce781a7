//! Helpers shared by the kernel benches: seeded data, and a recorder that keeps each case's per-run
//! times so a bench can print every figure as a ratio to the baseline measured in the same process.

#![allow(dead_code)] // each bench uses a different subset

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::Bencher;

/// Samples per case: enough for a median, few enough that a bench finishes in minutes on 2 cores.
pub const SAMPLES: usize = 10;

/// Per-iteration times of each (group, case), in the order criterion measured them.
#[derive(Default)]
pub struct Recorder(Mutex<BTreeMap<(String, String), Vec<Duration>>>);

impl Recorder {
    /// Runs `f` under criterion and records each sample's time per iteration.
    pub fn bench(&self, b: &mut Bencher<'_>, group: &str, case: &str, mut f: impl FnMut()) {
        b.iter_custom(|iters| {
            let t0 = Instant::now();
            for _ in 0..iters {
                f();
            }
            let elapsed = t0.elapsed();
            let mut rows = self.0.lock().expect("recorder lock");
            rows.entry((group.to_string(), case.to_string()))
                .or_default()
                .push(elapsed / iters as u32);
            elapsed
        });
    }

    /// Median of the last `SAMPLES` runs (criterion's warm-up runs come first).
    pub fn median(&self, group: &str, case: &str) -> Option<Duration> {
        let rows = self.0.lock().expect("recorder lock");
        let v = rows.get(&(group.to_string(), case.to_string()))?;
        let mut last: Vec<Duration> = v[v.len().saturating_sub(SAMPLES)..].to_vec();
        last.sort();
        last.get(last.len() / 2).copied()
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
