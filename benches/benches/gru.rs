//! GRU session-step throughput (events/s) of the CPU backend for 4,096 sessions with one event each,
//! fresh random items from a 100k-item tied table on every step, hidden 100 and 128, on 1 and 2
//! threads, against a naive single-threaded f32 step (row-major dot
//! products, libm `exp`/`tanh`) run in the same process.
//!
//! `cargo bench -p lambdarec-benches --bench gru`

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{Recorder, SAMPLES, dot8, loadavg};
use criterion::{Criterion, Throughput};
use lambdarec_kernels::conformance::{TestRng, random_model};
use lambdarec_kernels::{Backend, CpuBackend, Dtype, Event, ModelWeights};

const SESSIONS: usize = 4096;
const N_ITEMS: usize = 100_000;
/// Event sets cycled through (each 4,096 random items).
const EVENT_SETS: usize = 64;
const BASELINE: &str = "naive-1t-f32";

/// The baseline: one event at a time, gate rows as dot products.
fn naive_step(w: &ModelWeights, states: &mut [f32], events: &[Event]) {
    let (e, h) = (w.embed_dim, w.hidden);
    let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
    let (mut gi, mut gh) = (vec![0f32; 3 * h], vec![0f32; 3 * h]);
    for ev in events {
        let x = &w.input_table()[ev.item as usize * e..][..e];
        let hp = &mut states[ev.slot as usize * h..][..h];
        for j in 0..3 * h {
            gi[j] = dot8(&w.w_ih[j * e..][..e], x) + w.b_ih[j];
            gh[j] = dot8(&w.w_hh[j * h..][..h], hp) + w.b_hh[j];
        }
        for j in 0..h {
            let r = sigmoid(gi[j] + gh[j]);
            let z = sigmoid(gi[h + j] + gh[h + j]);
            let n = (gi[2 * h + j] + r * gh[2 * h + j]).tanh();
            hp[j] = (1.0 - z) * n + z * hp[j];
        }
    }
}

fn bench_gru(c: &mut Criterion, rec: &Recorder) {
    let mut backends: Vec<CpuBackend> = [1, 2]
        .iter()
        .map(|&t| CpuBackend::new(Some(t)).expect("cpu backend"))
        .collect();
    for hidden in [100, 128] {
        let mut rng = TestRng::new(hidden as u64);
        let w = random_model(&mut rng, N_ITEMS, hidden, hidden, true);
        // Fresh random items on every step, as the peer draws them: a fixed set of 4,096 rows would
        // stay in the cache from one iteration to the next.
        let event_sets: Vec<Vec<Event>> = (0..EVENT_SETS)
            .map(|_| {
                (0..SESSIONS as u32)
                    .map(|slot| Event {
                        slot,
                        item: rng.below(N_ITEMS) as u32,
                    })
                    .collect()
            })
            .collect();
        let mut next = 0;
        let mut events = || {
            next = (next + 1) % EVENT_SETS;
            &event_sets[next]
        };
        let group = format!("gru/{SESSIONS}x{hidden}");
        let mut g = c.benchmark_group(&group);
        g.throughput(Throughput::Elements(SESSIONS as u64));
        let mut states = rng.vec(SESSIONS * hidden, 0.9);
        common::wait_idle_if_asked();
        g.bench_function(BASELINE, |b| {
            rec.bench(b, &group, BASELINE, || {
                naive_step(&w, black_box(&mut states), events())
            })
        });
        for backend in &mut backends {
            backend
                .alloc_states(SESSIONS, hidden)
                .expect("alloc_states");
            let model = backend.upload_model(&w, Dtype::F32).expect("upload");
            let case = format!("cpu-{}t-f32", backend.threads());
            common::wait_idle_if_asked();
            g.bench_function(&case, |b| {
                rec.bench(b, &group, &case, || {
                    backend.gru_step(model, events()).expect("gru_step")
                })
            });
            backend.drop_model(model);
        }
        g.finish();
    }
    println!(
        "\n# gru_step summary ({}; load average {})",
        backends[1].device(),
        loadavg()
    );
    println!(
        "{:<16} {:<14} {:>10} {:>12} {:>9} {:>8} {:>5}",
        "group", "case", "median ms", "events/s", "GFLOP/s", "×naive", "bg%"
    );
    for (group, case) in rec.cases() {
        let (Some(t), Some(base)) = (rec.median(&group, &case), rec.median(&group, BASELINE))
        else {
            continue;
        };
        let hidden: usize = group
            .rsplit('x')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let s = t.as_secs_f64();
        // Two 3h×h projections per event (embed = hidden here).
        let flops = 2.0 * 2.0 * (3 * hidden * hidden * SESSIONS) as f64;
        println!(
            "{group:<16} {case:<14} {:>10.3} {:>12.0} {:>9.1} {:>8.1} {:>5.0}",
            s * 1e3,
            SESSIONS as f64 / s,
            flops / s / 1e9,
            base.as_secs_f64() / s,
            100.0 * rec.background(&group, &case).unwrap_or(f64::NAN)
        );
    }
}

fn main() {
    let rec = Recorder::default();
    let mut c = Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench_gru(&mut c, &rec);
    c.final_summary();
}
