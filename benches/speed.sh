#!/usr/bin/env bash
# Speed-layer serving benchmark (issue 12): Recommend throughput and latency with the blend (GRU +
# live session-kNN + trending, the served default) against the GRU alone, on the same server in the
# same run, alternating the two so that drift on a shared machine hits both:
#   1. a trained bundle (the RSC15 sample's, if STORE/MODEL name one; its test log replayed), and
#   2. a 1M-item synthetic catalogue (`lambdarec synthetic`, whose bundle carries its log's sessions
#      as the speed layer's seed and fixed blend weights), and a 10k-item one.
#
# Usage (release binary built first):
#   cargo build --release -p lambdarec-server
#   STORE=/tmp/speedstore MODEL=s42 LOG=../shared/data/rsc15-yoochoose-100k/yoochoose-clicks-100k_test.txt \
#     bash benches/speed.sh [OUT_DIR]
# Knobs: BIN (target/release/lambdarec), DURATION (20 s per run), CONCURRENCY (16 sessions in flight),
# ROUNDS (2: gru, blend, gru, blend), ITEMS ("10000 1000000"), SKIP_TRAINED=1, SKIP_SYNTHETIC=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/lambdarec}
out=${1:-target/speed-bench}
duration=${DURATION:-20}
concurrency=${CONCURRENCY:-16}
rounds=${ROUNDS:-2}
mkdir -p "$out"
[ -x "$bin" ] || { echo "no $bin: cargo build --release -p lambdarec-server first" >&2; exit 1; }
work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== $(date -u +%FT%TZ) $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

# Starts `serve` on a free port; waits (bounded) for /healthz SERVING.
serve() {
  local store=$1 model=$2 name=$3
  port=$((50200 + RANDOM % 1000)); mport=$((port + 1000))
  "$bin" --log-format json serve --store "$store" --model "$model" --device cpu \
    --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" --poll-interval 0 --log none \
    >"$out/serve-$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 6000); do
    curl -sf "http://127.0.0.1:$mport/healthz" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { echo "serve ($name) exited:"; tail -5 "$out/serve-$name.log"; exit 1; }
    sleep 0.05
  done
  echo "serve ($name) not SERVING after 300 s"; tail -5 "$out/serve-$name.log"; exit 1
}

stop() { kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

rss_mib() { echo $(( $(sed -n "s/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$pid/status") / 1024 )); }

# Runs gru and blend alternately against the running server; prints one row per run and the ratio of
# the medians.
compare() {
  local name=$1 log=$2
  for r in $(seq 1 "$rounds"); do
    for strategy in gru blend; do
      "$bin" load --target "127.0.0.1:$port" --data "$log" --duration "$duration" \
        --concurrency "$concurrency" --strategy "$strategy" --json \
        >"$out/$name-$strategy-$r.json" 2>"$out/$name-$strategy-$r.err"
      python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%-22s %-6s %9.0f req/s  p50 %7.2f ms  p99 %7.2f ms  errors %d  recall %.4f" % (sys.argv[2], sys.argv[3], r["throughput_rps"], r["p50_ms"], r["p99_ms"], r["errors_total"], r["recall@20"]))' \
        "$out/$name-$strategy-$r.json" "$name" "$strategy"
    done
  done
  python3 - "$out" "$name" "$rounds" <<'EOF'
import json, statistics, sys
out, name, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
def runs(s):
    return [json.load(open(f"{out}/{name}-{s}-{r}.json")) for r in range(1, rounds + 1)]
g, b = runs("gru"), runs("blend")
med = lambda rs, k: statistics.median(r[k] for r in rs)
print(f"{name:<22} blend / gru: throughput {med(b,'throughput_rps')/med(g,'throughput_rps'):.2f}x, "
      f"p99 {med(b,'p99_ms'):.2f} vs {med(g,'p99_ms'):.2f} ms")
EOF
  echo "$name: server RSS $(rss_mib) MiB after the runs"
}

if [ -z "${SKIP_TRAINED:-}" ] && [ -n "${STORE:-}" ]; then
  serve "$STORE" "${MODEL:-default}" trained
  compare trained "${LOG:?LOG names the test log to replay}"
  stop
fi

if [ -z "${SKIP_SYNTHETIC:-}" ]; then
  for items in ${ITEMS:-10000 1000000}; do
    t0=$(date +%s.%N)
    "$bin" synthetic --items "$items" --hidden 128 --sessions 100000 --store "$work/s$items" \
      --log "$work/log$items.tsv" >/dev/null 2>&1
    echo "synthetic $items items written in $(echo "$(date +%s.%N) - $t0" | bc) s"
    serve "$work/s$items" synthetic "synthetic-$items"
    echo "synthetic-$items: server RSS $(rss_mib) MiB when SERVING (100k seed sessions in the kNN index)"
    compare "synthetic-$items" "$work/log$items.tsv"
    stop
  done
fi
