#!/usr/bin/env bash
# A/B of two `lambdarec` binaries on the same bundle and log, alternating A, B, A, B… in one run so
# that drift on a shared machine hits both: Recommend throughput and latency from `lambdarec load`
# (closed loop), each run against a freshly started `serve` (CPU, --log none). Used to price a change
# that has no off switch, e.g. online evaluation (issue 13): A = the commit before it, B = after.
#
# The two sides may also be one binary run two ways: SERVE_ARGS_A / SERVE_ARGS_B add `serve` flags
# to one side (e.g. SERVE_ARGS_B="--canary-fraction 0.5" prices serving a canary).
#
# Usage: bash benches/ab.sh BIN_A BIN_B STORE MODEL LOG [OUT_DIR]
# Knobs: ROUNDS (3), DURATION (20 s), CONCURRENCY (16), STRATEGY (gru), SERVE_ARGS_A, SERVE_ARGS_B.
set -euo pipefail
a=$1 b=$2 store=$3 model=$4 log=$5 out=${6:-/tmp/ab-bench}
rounds=${ROUNDS:-3}; duration=${DURATION:-20}; concurrency=${CONCURRENCY:-16}; strategy=${STRATEGY:-gru}
mkdir -p "$out"
pid=
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true' EXIT
echo "== $(date -u +%FT%TZ) $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$rounds"); do
  for side in A B; do
    bin=$a; extra=${SERVE_ARGS_A:-}
    [ "$side" = B ] && bin=$b && extra=${SERVE_ARGS_B:-}
    port=$((51200 + RANDOM % 1000)); mport=$((port + 1000))
    "$bin" serve --store "$store" --model "$model" --device cpu --listen "127.0.0.1:$port" \
      --metrics-listen "127.0.0.1:$mport" --poll-interval 0 --log none $extra >"$out/serve-$side-$r.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$mport/healthz" >/dev/null 2>&1 && break; sleep 0.05; done
    "$bin" load --target "127.0.0.1:$port" --data "$log" --duration "$duration" \
      --concurrency "$concurrency" --strategy "$strategy" --json >"$out/$side-$r.json" 2>/dev/null
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%s round %s: %9.0f req/s  p50 %6.2f ms  p99 %6.2f ms  errors %d" % (sys.argv[2], sys.argv[3], r["throughput_rps"], r["p50_ms"], r["p99_ms"], r["errors_total"]))' \
      "$out/$side-$r.json" "$side" "$r"
  done
done
python3 - "$out" "$rounds" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
runs = lambda s: [json.load(open(f"{out}/{s}-{r}.json")) for r in range(1, rounds + 1)]
a, b = runs("A"), runs("B")
med = lambda rs, k: statistics.median(r[k] for r in rs)
print(f"B / A: throughput {med(b,'throughput_rps')/med(a,'throughput_rps'):.3f}x "
      f"(medians {med(b,'throughput_rps'):.0f} vs {med(a,'throughput_rps'):.0f} req/s), "
      f"p99 {med(b,'p99_ms'):.2f} vs {med(a,'p99_ms'):.2f} ms")
EOF
