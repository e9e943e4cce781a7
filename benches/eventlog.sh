#!/usr/bin/env bash
# Event log benchmarks (issue 11), all in one run on one machine so the ratios compare like with like:
#   1. event ingestion: `lambdarec load --mode events` against `serve --log none` (the baseline), the
#      embedded log and JetStream: acks/s and ack latency (p50/p99, the log append included);
#   2. recovery: time from start to SERVING for 100k and 1M live sessions, from a snapshot (graceful
#      stop) and from the log alone (kill -9, no snapshot).
#
# Usage (release binary built first):
#   cargo build --release -p lambdarec-server
#   NATS_SERVER=/path/to/nats-server bash benches/eventlog.sh [OUT_DIR]
# Knobs: BIN (target/release/lambdarec), DURATION (20 s per ingestion run), CONCURRENCY (256 sessions in
# flight), CONNECTIONS (4), SESSIONS (recovery sizes, "100000 1000000"), SKIP_INGEST=1, SKIP_RECOVERY=1.
# Without $NATS_SERVER (or nats-server on PATH) the JetStream run is skipped, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/lambdarec}
out=${1:-target/eventlog-bench}
duration=${DURATION:-20}
concurrency=${CONCURRENCY:-256}
connections=${CONNECTIONS:-4}
mkdir -p "$out"
[ -x "$bin" ] || { echo "no $bin: cargo build --release -p lambdarec-server first" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

echo "== $(date -u +%FT%TZ) $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$bin" synthetic --items 10000 --hidden 100 --sessions 100000 --store "$work/store" \
  --log "$work/sessions.tsv" >/dev/null 2>&1

# Starts `serve` on a copy of the model store of its own (each log archives into its store), with the
# given extra flags, on a free port; sets $pid, $port, $mport. Waits (bounded) until /healthz says
# SERVING and records how long that took in $ready_s.
serve() {
  local name=$1; shift
  [ -d "$work/store-$name" ] || cp -r "$work/store" "$work/store-$name"
  port=$((50200 + RANDOM % 1000)); mport=$((port + 1000))
  local started=$(date +%s.%N)
  "$bin" --log-format json serve --store "$work/store-$name" --model synthetic --device cpu \
    --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$mport" --poll-interval 0 "$@" \
    >"$out/serve-$name.log" 2>&1 &
  pid=$!; pids+=("$pid")
  for _ in $(seq 1 6000); do
    if curl -sf "http://127.0.0.1:$mport/healthz" >/dev/null 2>&1; then
      ready_s=$(echo "$(date +%s.%N) - $started" | bc); return 0
    fi
    kill -0 "$pid" 2>/dev/null || { echo "serve ($name) exited:"; tail -5 "$out/serve-$name.log"; exit 1; }
    sleep 0.05
  done
  echo "serve ($name) not SERVING after 300 s"; tail -5 "$out/serve-$name.log"; exit 1
}

stop() { kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; }

summary() { # JSON file -> one line
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%9.0f acks/s  p50 %6.2f ms  p99 %6.2f ms  errors %d" % (r["throughput_rps"], r["p50_ms"], r["p99_ms"], r["errors_total"]))' "$1"
}

if [ -z "${SKIP_INGEST:-}" ]; then
  nats=${NATS_SERVER:-$(command -v nats-server || true)}
  logs="none file"
  if [ -n "$nats" ]; then
    nport=$((42000 + RANDOM % 1000))
    "$nats" -a 127.0.0.1 -p "$nport" -js -sd "$work/nats" >"$out/nats.log" 2>&1 &
    pids+=("$!")
    for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$nport") 2>/dev/null && break; sleep 0.1; done
    logs="$logs nats"
  else
    echo "skipped: JetStream run (no nats-server: set NATS_SERVER)"
  fi
  for log in $logs; do
    case $log in
      none) flags=(--log none) ;;
      file) flags=(--log "file://$work/log" --snapshot-dir "$work/snap-file") ;;
      nats) flags=(--log "nats://127.0.0.1:$nport/BENCH" --snapshot-dir "$work/snap-nats") ;;
    esac
    serve "ingest-$log" "${flags[@]}" --max-sessions 200000
    "$bin" load --target "127.0.0.1:$port" --data "$work/sessions.tsv" --mode events \
      --concurrency "$concurrency" --connections "$connections" --duration "$duration" --json \
      >"$out/ingest-$log.json" 2>/dev/null
    printf '%-5s ' "$log"; summary "$out/ingest-$log.json"
    stop
  done
  python3 - "$out" <<'EOF'
import json, os, sys
out = sys.argv[1]
base = json.load(open(os.path.join(out, "ingest-none.json")))
for log in ("file", "nats"):
    p = os.path.join(out, f"ingest-{log}.json")
    if os.path.exists(p):
        r = json.load(open(p))
        print(f"{log}: {r['throughput_rps'] / base['throughput_rps']:.2f}x the acks/s of --log none, "
              f"p99 {r['p99_ms']:.2f} vs {base['p99_ms']:.2f} ms")
EOF
fi

if [ -z "${SKIP_RECOVERY:-}" ]; then
  for n in ${SESSIONS:-100000 1000000}; do
    # n sessions of two events each.
    awk -v n="$n" 'BEGIN { print "SessionId\tItemId\tTime"; for (s = 0; s < n; s++) {
      printf "r%d\t%d\t%d\n", s, (s * 7919) % 10000 + 1, 1700000000 + s;
      printf "r%d\t%d\t%d\n", s, (s * 104729) % 10000 + 1, 1700000001 + s } }' >"$work/recovery-$n.tsv"
    for how in snapshot replay; do
      dir="$work/rec-$how-$n"
      flags=(--log "file://$dir/log" --snapshot-dir "$dir/snap" --snapshot-interval 0 \
             --archive-interval 0 --max-sessions $((n + 1000)) --session-ttl 86400)
      serve "rec-$how-$n" "${flags[@]}"
      "$bin" load --target "127.0.0.1:$port" --data "$work/recovery-$n.tsv" --mode events \
        --concurrency "$concurrency" --connections "$connections" --json >"$out/fill-$how-$n.json" 2>/dev/null
      if [ "$how" = snapshot ]; then
        t0=$(date +%s.%N); stop; stop_s=$(echo "$(date +%s.%N) - $t0" | bc)
      else
        kill -9 "$pid"; wait "$pid" 2>/dev/null || true; stop_s=0
      fi
      serve "rec-$how-$n" "${flags[@]}"
      live=$(curl -s "http://127.0.0.1:$mport/metrics" | sed -n 's/^lambdarec_live_sessions //p')
      replayed=$(curl -s "http://127.0.0.1:$mport/metrics" | sed -n 's/^lambdarec_replay_events //p')
      took_ms=$(curl -s "http://127.0.0.1:$mport/metrics" | sed -n 's/^lambdarec_replay_millis //p')
      printf 'recovery %-8s %8d sessions: SERVING %6.2f s after start, recovery itself %6.2f s (%s live, %s events replayed; the stop before took %.2f s)\n' \
        "$how" "$n" "$ready_s" "$(echo "$took_ms / 1000" | bc -l)" "$live" "$replayed" "$stop_s"
      stop
      rm -rf "$dir"
    done
  done
fi
