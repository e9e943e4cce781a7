//! `gpu-check`: the one-call check of the CUDA backend on a GPU host. Runs the conformance suite and
//! the CPU cross-check on the device, then times each kernel (CUDA events, after warm-up, on inputs
//! larger than L2) against the device-to-device copy bandwidth, and against PyTorch when the host's
//! python3 has a CUDA-enabled torch. Self-contained: the PTX is embedded and libcuda is loaded at run
//! time. Flags: `--no-conformance`, `--no-bench`, `--no-torch`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::{Command, ExitCode};
use std::time::Instant;

use lambdarec_kernels::conformance::{self, TestRng, random_model};
use lambdarec_kernels::cuda::{CudaBackend, PTX_GRU, check};
use lambdarec_kernels::{Backend, Dtype, Event, ModelId, ScoreQuery, TopKQuery};

/// Benchmark shapes: a 1M-item catalogue of 128-wide bf16 embeddings (256 MB, several times L2).
const N_ITEMS: usize = 1_000_000;
const HIDDEN: usize = 128;
const TOPK_K: usize = 100;
const GRU_SESSIONS: usize = 4096;
/// State-table slots for the benchmarks: 1M × 128 f32 = 512 MB, so gathered rows come from DRAM.
const SLOTS: usize = 1 << 20;
const SCORE_SESSIONS: usize = 256;
const SCORE_CANDIDATES: usize = 1000;
/// Copies of the item table, rotated between repetitions so no run finds the table in L2.
const TABLE_COPIES: usize = 2;
const WARMUP: usize = 3;
const REPS: usize = 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    let mut gpu = match CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("gpu-check: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("device: {} ({} SMs)", gpu.device(), gpu.sm_count());
    println!(
        "kernels: {}",
        if PTX_GRU.is_ptx() {
            "PTX embedded at build time (nvcc)"
        } else {
            "CUDA source compiled by NVRTC at start-up"
        }
    );
    let mut ok = true;
    if !flag("--no-conformance") {
        ok &= run_conformance(&mut gpu);
    }
    if !flag("--no-bench")
        && let Err(e) = bench(&mut gpu, !flag("--no-torch"))
    {
        eprintln!("benchmark failed: {e}");
        ok = false;
    }
    if ok {
        println!("gpu-check: OK");
        ExitCode::SUCCESS
    } else {
        println!("gpu-check: FAILED");
        ExitCode::FAILURE
    }
}

/// Every conformance test for every dtype (a failure is reported and the rest still run), then the
/// cross-check against the CPU backend.
fn run_conformance(gpu: &mut CudaBackend) -> bool {
    let names = [
        "state_table_round_trips",
        "gru_step_matches_reference",
        "score_matches_reference",
        "top_k_matches_reference",
        "top_k_exclusions_and_short_lists",
        "top_k_ties_prefer_lower_index",
        "nan_scores_do_not_panic",
        "errors_leave_states_unchanged",
        "models_are_independent",
    ];
    let mut ok = true;
    let t0 = Instant::now();
    for dtype in [Dtype::F32, Dtype::Bf16, Dtype::F16] {
        for (i, test) in conformance::ALL.iter().enumerate() {
            let name = names.get(i).copied().unwrap_or("conformance test");
            let r = catch_unwind(AssertUnwindSafe(|| test(gpu, dtype)));
            if r.is_err() {
                println!("FAIL conformance {name} [{dtype}]");
                ok = false;
            }
        }
    }
    println!(
        "conformance: {} ({:.1} s)",
        if ok { "all passed" } else { "FAILED" },
        t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    match catch_unwind(AssertUnwindSafe(|| check::compare_with_cpu(gpu))) {
        Ok(Ok(())) => println!("cuda vs cpu: agree ({:.1} s)", t0.elapsed().as_secs_f64()),
        Ok(Err(e)) => {
            println!("FAIL cuda vs cpu: {e}");
            ok = false;
        }
        Err(_) => {
            println!("FAIL cuda vs cpu: panicked");
            ok = false;
        }
    }
    ok
}

/// One benchmark row.
struct Row {
    name: String,
    /// Median device milliseconds (kernels only) and median wall milliseconds (whole call).
    device_ms: f64,
    wall_ms: f64,
    /// Median device milliseconds before and after the op's midpoint (top-k: scan, merge).
    split: (f64, f64),
    bytes: f64,
    flops: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians over the timed repetitions of one op.
struct Timing {
    device_ms: f64,
    wall_ms: f64,
    split: (f64, f64),
}

/// Runs `op(rep)` WARMUP + REPS times and times the last REPS.
fn time(
    gpu: &mut CudaBackend,
    mut op: impl FnMut(&mut CudaBackend, usize) -> Result<(), String>,
) -> Result<Timing, String> {
    let (mut first, mut second, mut wall) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..WARMUP + REPS {
        let t0 = Instant::now();
        op(gpu, rep)?;
        let (a, b) = gpu
            .last_device_split_ms()
            .map_err(|e| e.to_string())?
            .unwrap_or((0.0, 0.0));
        if rep >= WARMUP {
            wall.push(t0.elapsed().as_secs_f64() * 1e3);
            first.push(f64::from(a));
            second.push(f64::from(b));
        }
    }
    let total: Vec<f64> = first.iter().zip(&second).map(|(a, b)| a + b).collect();
    Ok(Timing {
        device_ms: median(total),
        wall_ms: median(wall),
        split: (median(first), median(second)),
    })
}

fn bench(gpu: &mut CudaBackend, torch: bool) -> Result<(), String> {
    let err = |e: lambdarec_kernels::BackendError| e.to_string();
    let floor = gpu.copy_bandwidth_gbs(1 << 30, 10).map_err(err)?;
    println!("\nmemory floor: device-to-device copy {floor:.0} GB/s (read + write)");

    let mut rng = TestRng::new(42);
    let w = random_model(&mut rng, N_ITEMS, HIDDEN, HIDDEN, true);
    let models: Vec<ModelId> = (0..TABLE_COPIES)
        .map(|_| gpu.upload_model(&w, Dtype::Bf16))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    let table_bytes = gpu.item_table_bytes(models[0]).unwrap_or(0) as f64;
    // One f32 copy (512 MB): f32 tables always take the SIMT scan.
    let model_f32 = gpu.upload_model(&w, Dtype::F32).map_err(err)?;
    let table_bytes_f32 = gpu.item_table_bytes(model_f32).unwrap_or(0) as f64;
    drop(w);
    gpu.alloc_states(SLOTS, HIDDEN).map_err(err)?;
    // Random states for the slots the benchmarks use (the rest stay zero).
    for slot in 0..GRU_SESSIONS.max(SCORE_SESSIONS) as u32 {
        gpu.write_state(slot * 97, &rng.vec(HIDDEN, 0.9))
            .map_err(err)?;
    }
    gpu.set_timing(true).map_err(err)?;
    let mut rows = Vec::new();

    for batch in [1usize, 16, 256] {
        let queries: Vec<TopKQuery<'_>> = (0..batch)
            .map(|i| TopKQuery {
                slot: (i * 97) as u32,
                k: TOPK_K,
                exclude: &[],
            })
            .collect();
        let t = time(gpu, |g, rep| {
            g.top_k(models[rep % TABLE_COPIES], &queries)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })?;
        rows.push(Row {
            name: format!("top_k 1M×128 bf16 k={TOPK_K} batch {batch}"),
            device_ms: t.device_ms,
            wall_ms: t.wall_ms,
            split: t.split,
            bytes: table_bytes,
            flops: 2.0 * (batch * N_ITEMS * HIDDEN) as f64,
        });
    }

    // GRU step: 4,096 distinct sessions spread over the 512 MB state table.
    let events: Vec<Event> = (0..GRU_SESSIONS)
        .map(|i| Event {
            slot: ((i * 7919) % SLOTS) as u32,
            item: rng.below(N_ITEMS) as u32,
        })
        .collect();
    let t = time(gpu, |g, rep| {
        g.gru_step(models[rep % TABLE_COPIES], &events)
            .map_err(|e| e.to_string())
    })?;
    let h = HIDDEN as f64;
    rows.push(Row {
        name: format!("gru_step {GRU_SESSIONS} sessions h=128 bf16"),
        device_ms: t.device_ms,
        wall_ms: t.wall_ms,
        split: t.split,
        // State rows read and written, embedding rows read, both weight matrices once.
        bytes: GRU_SESSIONS as f64 * h * (4.0 + 4.0 + 2.0) + 2.0 * 3.0 * h * h * 4.0,
        flops: 2.0 * GRU_SESSIONS as f64 * 3.0 * h * (h + h),
    });

    let cands: Vec<Vec<u32>> = (0..SCORE_SESSIONS)
        .map(|_| {
            (0..SCORE_CANDIDATES)
                .map(|_| rng.below(N_ITEMS) as u32)
                .collect()
        })
        .collect();
    let queries: Vec<ScoreQuery<'_>> = cands
        .iter()
        .enumerate()
        .map(|(i, c)| ScoreQuery {
            slot: (i * 97) as u32,
            candidates: c,
        })
        .collect();
    let t = time(gpu, |g, rep| {
        g.score(models[rep % TABLE_COPIES], &queries)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })?;
    let n = (SCORE_SESSIONS * SCORE_CANDIDATES) as f64;
    rows.push(Row {
        name: format!("score {SCORE_CANDIDATES} cands × {SCORE_SESSIONS} sessions bf16"),
        device_ms: t.device_ms,
        wall_ms: t.wall_ms,
        split: t.split,
        bytes: n * h * 2.0,
        flops: 2.0 * n * h,
    });
    // After the rows PyTorch is compared with (its script prints them in this order).
    for batch in [1usize, 16] {
        let queries: Vec<TopKQuery<'_>> = (0..batch)
            .map(|i| TopKQuery {
                slot: (i * 97) as u32,
                k: TOPK_K,
                exclude: &[],
            })
            .collect();
        let t = time(gpu, |g, _| {
            g.top_k(model_f32, &queries)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })?;
        rows.push(Row {
            name: format!("top_k 1M×128 f32 k={TOPK_K} batch {batch}"),
            device_ms: t.device_ms,
            wall_ms: t.wall_ms,
            split: t.split,
            bytes: table_bytes_f32,
            flops: 2.0 * (batch * N_ITEMS * HIDDEN) as f64,
        });
    }
    gpu.set_timing(false).map_err(err)?;

    println!(
        "\n{:<44} {:>10} {:>15} {:>10} {:>8} {:>9} {:>8}",
        "op", "device ms", "(scan+merge)", "wall ms", "GB/s", "TFLOP/s", "% floor"
    );
    for r in &rows {
        let gbs = r.bytes / (r.device_ms * 1e-3) / 1e9;
        let split = if r.split.0 > 0.0 {
            format!("{:.3}+{:.3}", r.split.0, r.split.1)
        } else {
            String::new()
        };
        println!(
            "{:<44} {:>10.4} {:>15} {:>10.4} {:>8.0} {:>9.2} {:>7.0}%",
            r.name,
            r.device_ms,
            split,
            r.wall_ms,
            gbs,
            r.flops / (r.device_ms * 1e-3) / 1e12,
            100.0 * gbs / floor
        );
    }
    if torch {
        compare_with_torch(&rows);
    }
    Ok(())
}

/// PyTorch doing the same work the obvious way, timed with CUDA events; prints `name ms` lines in the
/// order of the benchmark rows.
const TORCH_SCRIPT: &str = r#"
import torch
dev = "cuda"
N, H, K = 1_000_000, 128, 100
torch.manual_seed(0)
tables = [torch.randn(N, H, device=dev).mul_(0.17).to(torch.bfloat16) for _ in range(2)]
bias = torch.randn(N, device=dev)
states = torch.randn(1 << 20, H, device=dev)

def timed(fn, warm=3, reps=20):
    for i in range(warm):
        fn(i)
    out = []
    for i in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(i); b.record(); b.synchronize()
        out.append(a.elapsed_time(b))
    out.sort()
    return out[len(out) // 2]

with torch.no_grad():
    for batch in (1, 16, 256):
        q = torch.randn(batch, H, device=dev).to(torch.bfloat16)
        ms = timed(lambda i: torch.topk((q @ tables[i % 2].T).float() + bias, K, dim=1))
        print(f"topk_{batch} {ms}")
    cell = torch.nn.GRUCell(H, H).to(dev)
    slots = torch.randperm(1 << 20, device=dev)[:4096]
    items = torch.randint(0, N, (4096,), device=dev)
    def gru(i):
        states[slots] = cell(tables[i % 2][items].float(), states[slots])
    print(f"gru {timed(gru)}")
    cands = torch.randint(0, N, (256, 1000), device=dev)
    h = torch.randn(256, H, 1, device=dev)
    def score(i):
        rows = tables[i % 2][cands].float()
        return torch.bmm(rows, h).squeeze(-1) + bias[cands]
    print(f"score {timed(score)}")
"#;

fn compare_with_torch(rows: &[Row]) {
    let has_torch = Command::new("python3")
        .args([
            "-c",
            "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_torch {
        println!("\nPyTorch baseline: skipped (python3 with CUDA torch not found)");
        return;
    }
    let path = std::env::temp_dir().join(format!("lambdarec-torch-{}.py", std::process::id()));
    if let Err(e) = std::fs::write(&path, TORCH_SCRIPT) {
        println!("\nPyTorch baseline: cannot write script: {e}");
        return;
    }
    let out = Command::new("python3").arg(&path).output();
    let _ = std::fs::remove_file(&path);
    let out = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            println!(
                "\nPyTorch baseline failed:\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            return;
        }
        Err(e) => {
            println!("\nPyTorch baseline: cannot run python3: {e}");
            return;
        }
    };
    println!(
        "\n{:<44} {:>10} {:>10} {:>16}",
        "op", "ours ms", "torch ms", "torch / ours"
    );
    for (r, line) in rows.iter().zip(out.lines()) {
        let Some(ms) = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        println!(
            "{:<44} {:>10.4} {:>10.4} {:>15.2}x",
            r.name,
            r.device_ms,
            ms,
            ms / r.device_ms
        );
    }
}
