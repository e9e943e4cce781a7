"""PyTorch CPU training-speed peer for the lambdarec GRU4Rec trainer.

Our own re-implementation of GRU4Rec training as the official GRU4Rec PyTorch code does it:
constrained (tied) item embedding Wy + output bias By as sparse nn.Embedding, one GRUCell layer,
session-parallel mini-batches (batch 32, 1-step truncated BPTT, hidden reset on session change),
hidden dropout 0.4 on the carried/scored state, 2048 shared negatives sampled ∝ pop^0.5,
cross-entropy with log-Q correction, sparse/dense Adagrad (lr 0.2, eps 1e-6).

Measures training throughput in events/s (events = active sessions summed over training steps).

Run from the repository root (PyTorch in a venv of your own, e.g. `python3 -m venv target/peers-venv &&
target/peers-venv/bin/pip install torch`; the datasets sit beside the repository in ../shared/data):
    target/peers-venv/bin/python benches/peers/torch_gru4rec.py \
        --data ../shared/data/rsc15-yoochoose-100k/yoochoose-clicks-100k_train_full.txt \
        --epochs 1 --threads 1 --seed 42
Prints per-epoch loss / seconds / events/s, then one JSON line.
"""
import argparse
import json
import math
import time

import numpy as np
import pandas as pd
import torch
from torch import nn

BATCH, N_SAMPLE, ALPHA, DROPOUT, LR, EPS = 32, 2048, 0.5, 0.4, 0.2, 1e-6
SAMPLE_CACHE = 10_000_000  # number of negative ids precomputed per refill (as the official cache)


def load(path):
    df = pd.read_csv(path, sep="\t", dtype={"SessionId": "int64", "ItemId": "int64", "Time": "float64"})
    df = df.sort_values(["SessionId", "Time"], kind="mergesort").reset_index(drop=True)
    item_ids = df["ItemId"].unique()  # index = order of first appearance
    item_idx = pd.Series(np.arange(len(item_ids), dtype=np.int64), index=item_ids)
    items = item_idx[df["ItemId"].values].to_numpy(copy=True)
    sess = df["SessionId"].values
    offsets = np.concatenate([[0], np.flatnonzero(sess[1:] != sess[:-1]) + 1, [len(df)]])
    start_time = df["Time"].values[offsets[:-1]]  # sorted by time within session -> first = min
    order = np.argsort(start_time, kind="mergesort")
    pop = np.bincount(items, minlength=len(item_ids)).astype(np.float64)
    return items, offsets, order, pop


def init_uniform(t, rows, cols):
    s = math.sqrt(6.0 / (rows + cols))
    nn.init.uniform_(t, -s, s)


class Gru4Rec(nn.Module):
    def __init__(self, n_items, h):
        super().__init__()
        self.Wy = nn.Embedding(n_items, h, sparse=True)
        self.By = nn.Embedding(n_items, 1, sparse=True)
        self.gru = nn.GRUCell(h, h)
        self.drop = nn.Dropout(DROPOUT)
        with torch.no_grad():
            init_uniform(self.Wy.weight, n_items, h)
            self.By.weight.zero_()
            for w in (self.gru.weight_ih, self.gru.weight_hh):  # 3 gate blocks, each H x H
                for g in range(3):
                    init_uniform(w[g * h:(g + 1) * h], h, h)
            self.gru.bias_ih.zero_()
            self.gru.bias_hh.zero_()

    def forward(self, x, hid, y):
        b = x.shape[0]
        emb = self.Wy(torch.cat([x, y]))
        e, o = emb[:b], emb[b:]
        h = self.drop(self.gru(e, hid))
        return h @ o.T + self.By(y).T, h


class SparseAdagrad(torch.optim.Optimizer):
    def __init__(self, params, lr=LR, eps=EPS):
        super().__init__(params, dict(lr=lr, eps=eps))
        for g in self.param_groups:
            for p in g["params"]:
                self.state[p]["acc"] = torch.zeros_like(p)

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                acc = self.state[p]["acc"]
                if p.grad.is_sparse:
                    gr = p.grad.coalesce()
                    idx, val = gr.indices()[0], gr.values()
                    a = acc[idx] + val * val
                    acc.index_copy_(0, idx, a)
                    p.index_add_(0, idx, val / (a + g["eps"]).sqrt(), alpha=-g["lr"])
                else:
                    acc.add_(p.grad * p.grad)
                    p.addcdiv_(p.grad, (acc + g["eps"]).sqrt(), value=-g["lr"])


class Sampler:
    """Negatives ∝ pop^ALPHA, drawn in bulk by searchsorted on the cumulative distribution."""

    def __init__(self, pop):
        c = np.cumsum(pop ** ALPHA)
        c /= c[-1]
        c[-1] = 1.0
        self.cdf = torch.tensor(c, dtype=torch.float32)
        self.rows = max(SAMPLE_CACHE // N_SAMPLE, 1)
        self.refill()  # first fill happens before training starts (as in the official code)

    def refill(self):
        u = torch.rand(self.rows * N_SAMPLE)
        self.cache = torch.searchsorted(self.cdf, u).clamp_(max=len(self.cdf) - 1).view(self.rows, N_SAMPLE)
        self.ptr = 0

    def next(self):
        if self.ptr >= self.rows:
            self.refill()
        self.ptr += 1
        return self.cache[self.ptr - 1]


def batches(items, offsets, order):
    """Session-parallel iterator: yields (input ids, target ids, finished_mask, valid_mask) per step.

    finished_mask/valid_mask are given (not None) right before a step whose slots changed."""
    n_sess = len(order)
    iters = np.arange(min(BATCH, n_sess))
    nxt = len(iters)
    start, end = offsets[order[iters]], offsets[order[iters] + 1]
    reset = None
    while True:
        minlen = (end - start).min()
        for i in range(minlen - 1):
            yield items[start + i], items[start + i + 1], reset
            reset = None
        start = start + minlen - 1
        finished = end - start <= 1
        nf = int(finished.sum())
        iters[finished] = nxt + np.arange(nf)
        nxt += nf
        valid = iters < n_sess
        if not valid.any():
            return
        m = finished & valid
        start[m], end[m] = offsets[order[iters[m]]], offsets[order[iters[m]] + 1]
        iters, start, end = iters[valid], start[valid], end[valid]
        reset = (finished, valid)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--hidden", type=int, default=100)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)

    items, offsets, order, pop = load(a.data)
    n_items = len(pop)
    print(f"events={len(items)} sessions={len(order)} items={n_items} hidden={a.hidden} threads={a.threads}")
    model = Gru4Rec(n_items, a.hidden)
    opt = SparseAdagrad(model.parameters())
    sampler = Sampler(pop)
    pop_t = torch.tensor(pop, dtype=torch.float32)
    items_t = torch.from_numpy(items)
    total_ev, total_s = 0, 0.0
    model.train()
    for ep in range(a.epochs):
        hid = torch.zeros(min(BATCH, len(order)), a.hidden)
        losses, counts = [], []
        t0 = time.perf_counter()
        for xin, yout, reset in batches(items, offsets, order):
            if reset is not None:
                finished, valid = reset
                hid[torch.from_numpy(finished)] = 0
                if not valid.all():
                    hid = hid[torch.from_numpy(valid)]
            x, yt = items_t[xin], items_t[yout]
            y = torch.cat([yt, sampler.next()])
            hid = hid.detach()
            model.zero_grad()
            o, hid = model(x, hid, y)
            o = o - torch.log(torch.cat([pop_t[yt], pop_t[y[len(yt):]] ** ALPHA]))
            p = torch.softmax(o, dim=1)
            loss = -torch.sum(torch.log(torch.diagonal(p) + 1e-24)) / BATCH
            loss.backward()
            opt.step()
            losses.append(loss.item())
            counts.append(len(xin))
        dt = time.perf_counter() - t0
        ev = int(np.sum(counts))
        avg = float(np.dot(losses, counts) / ev)
        total_ev, total_s = total_ev + ev, total_s + dt
        print(f"epoch {ep + 1}: loss {avg:.6f}  {dt:.2f}s  {ev / dt:.0f} events/s  ({len(losses)} steps)")
    print(json.dumps({"events_per_sec": round(total_ev / total_s, 1), "threads": a.threads, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
