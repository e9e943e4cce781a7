#!/usr/bin/env bash
# Warm start vs cold start on the RSC15 sample split into days (issue 13): for two daily cycles
# (train on days 1-4 then 1-5 and test on day 6; train on days 1-5 then 1-6 and test on the
# published test day), a model of the earlier days is trained cold (10 epochs), then the later
# days are trained twice with the GRU evaluated after every epoch: cold, and warm-started from the
# earlier model (weights and optimiser state). Three seeds each; prints the mean learning curves
# and the epochs each needs to come within one standard error of the cold model's 10-epoch figure.
#
#   benches/warm_start.sh [path/to/lambdarec] [data dir] > warm_start.txt
set -euo pipefail
BIN=${1:-target/release/lambdarec}
DATA=${2:-../shared/data/rsc15-yoochoose-100k}
FULL=$DATA/yoochoose-clicks-100k_train_full.txt
TEST=$DATA/yoochoose-clicks-100k_test.txt
[ -f "$FULL" ] || { echo "warm_start.sh: $FULL not found (the RSC15 sample lives in ../shared/data)" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# Days by event time (UTC); the few events of the last day join day 6.
first=$(awk -F'\t' 'NR>1 {d=int($3/86400); if (m=="" || d<m) m=d} END {print m}' "$FULL")
upto() { awk -F'\t' -v end=$(( (first + $1) * 86400 )) 'NR==1 || $3 < end' "$FULL" > "$WORK/days1-$1.txt"; }
for n in 4 5; do upto "$n"; done
cp "$FULL" "$WORK/days1-6.txt"
awk -F'\t' -v lo=$(( (first + 5) * 86400 )) 'NR==1 || $3 >= lo' "$FULL" > "$WORK/day6.txt"
COMMON=(--blend-validation 0 --min-item-support 1 --epochs 10 --json)

curve() { # json file -> "predictions  r1 m1 s1  r2 m2 s2 ..." (per epoch: Recall, MRR, seconds)
  python3 - "$1" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(d["events"], " ".join(f"{e['test_recall']} {e['test_mrr']} {e['seconds']}" for e in d["epochs"]))
PY
}
for cycle in "4 5 day6" "5 6 test"; do
  set -- $cycle
  before=$1 after=$2
  test=$([ "$3" = test ] && echo "$TEST" || echo "$WORK/day6.txt")
  for seed in 1 2 3; do
    store=$WORK/store-$before-$seed
    "$BIN" train --data "$WORK/days1-$before.txt" --test "$test" --store "$store" --model m --seed "$seed" "${COMMON[@]}" > /dev/null 2>&1
    for mode in cold warm; do
      ws=none; [ $mode = warm ] && ws=latest
      model=$([ $mode = warm ] && echo m || echo cold)
      "$BIN" train --data "$WORK/days1-$after.txt" --test "$test" --store "$store" --model "$model" --seed "$seed" \
        --warm-start $ws --eval-every-epoch "${COMMON[@]}" > "$WORK/$mode-$before-$seed.json" 2>/dev/null
      echo "$before $after $mode $seed $(curve "$WORK/$mode-$before-$seed.json")" >> "$WORK/curves.txt"
    done
  done
done
python3 - "$WORK/curves.txt" <<'PY'
import sys, math, collections
by = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r = line.split()
    n, vals = int(r[4]), [float(x) for x in r[5:]]
    by[(r[0], r[1], r[2])].append((n, vals[0::3], vals[1::3], vals[2::3]))
def mean(xs):
    return sum(xs) / len(xs)
for (b, a) in sorted({(k[0], k[1]) for k in by}):
    runs = {m: by[(b, a, m)] for m in ("cold", "warm")}
    seeds, n = len(runs["cold"]), runs["cold"][0][0]
    curve = {m: ([mean(c) for c in zip(*(r[1] for r in rs))],
                 [mean(c) for c in zip(*(r[2] for r in rs))],
                 [mean(c) for c in zip(*(r[3] for r in rs))]) for m, rs in runs.items()}
    r_end, m_end = curve["cold"][0][-1], curve["cold"][1][-1]
    # One standard error of a mean over n predictions: binomial for Recall; for MRR (values in
    # [0, 1]) the same formula is an upper bound.
    se_r, se_m = math.sqrt(r_end * (1 - r_end) / n), math.sqrt(m_end * (1 - m_end) / n)
    print(f"\ncycle: days 1-{b} trained cold, then days 1-{a}; {n} test predictions; mean of {seeds} seeds")
    print(f"{'epoch':>5} {'cold R@20':>10} {'cold MRR@20':>12} {'warm R@20':>10} {'warm MRR@20':>12}")
    for i in range(len(curve["cold"][0])):
        print(f"{i+1:>5} {curve['cold'][0][i]:>10.4f} {curve['cold'][1][i]:>12.4f} {curve['warm'][0][i]:>10.4f} {curve['warm'][1][i]:>12.4f}")
    print(f"target: cold after 10 epochs less one standard error: Recall@20 >= {r_end - se_r:.4f}, MRR@20 >= {m_end - se_m:.4f}")
    for m in ("cold", "warm"):
        rec, mrr, secs = curve[m]
        hit = next((i for i in range(len(rec)) if rec[i] >= r_end - se_r and mrr[i] >= m_end - se_m), None)
        if hit is None:
            print(f"  {m}: does not reach it in {len(rec)} epochs")
        else:
            print(f"  {m}: reaches it after {hit + 1} epochs, {sum(secs[:hit + 1]):.1f} s of training")
PY
