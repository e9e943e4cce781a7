"""PyTorch CPU serving-step peer: throughput of one GRUCell inference step for 4,096 sessions.

Per rep (under torch.no_grad): gather 4,096 item embeddings from a 100k x H table at random indices,
gather those sessions' hidden rows from a state store, run one GRUCell(H, H) step on the 4096 x H
batch, and write the new rows back with index_copy_. Reports events/s (= 4096 / median rep time)
for H in {100, 128} and threads in {1, 2}, median of --reps reps after --warmup warm-up reps.

Run from the repository root (PyTorch in a venv of your own, e.g. `python3 -m venv target/peers-venv &&
target/peers-venv/bin/pip install torch`):
    target/peers-venv/bin/python benches/peers/torch_gru_step.py [--reps 50] [--warmup 10]
Prints one line per config, then one JSON line with all configs.
"""
import argparse
import json
import statistics
import time

import torch

N_ITEMS, N_SESS = 100_000, 4096


def bench(h, threads, reps, warmup, seed=0):
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(seed)
    table = torch.rand(N_ITEMS, h, generator=g) - 0.5
    state = torch.zeros(N_SESS, h)  # one row per live session
    cell = torch.nn.GRUCell(h, h).eval()
    times = []
    with torch.no_grad():
        for r in range(warmup + reps):
            items = torch.randint(0, N_ITEMS, (N_SESS,), generator=g)
            rows = torch.randperm(N_SESS, generator=g)  # which session each event belongs to
            t0 = time.perf_counter()
            x = table.index_select(0, items)
            hid = state.index_select(0, rows)
            state.index_copy_(0, rows, cell(x, hid))
            dt = time.perf_counter() - t0
            if r >= warmup:
                times.append(dt)
    med = statistics.median(times)
    return {"hidden": h, "threads": threads, "median_ms": round(med * 1e3, 4),
            "events_per_sec": round(N_SESS / med, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    a = ap.parse_args()
    assert a.reps >= 20, "use at least 20 reps"
    res = []
    for h in (100, 128):
        for t in (1, 2):
            r = bench(h, t, a.reps, a.warmup)
            print(f"H={h} threads={t}: {r['median_ms']:.3f} ms/step  {r['events_per_sec']:,.0f} events/s")
            res.append(r)
    print(json.dumps({"n_sessions": N_SESS, "n_items": N_ITEMS, "torch": torch.__version__, "results": res}))


if __name__ == "__main__":
    main()
