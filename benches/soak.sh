#!/usr/bin/env bash
# Soak (issue 15): a bounded open-loop run of `lambdarec load` at 70% of the server's saturation, with
# session churn (every pass over the log makes new sessions; --max-sessions below the live set forces
# LRU evictions), a model reload every minute (a new version written to the store; the server's
# LATEST poller swaps it in), and clients that disconnect mid-stream (a second harness killed with
# SIGKILL every few seconds). Samples the server's RSS every second and reports: errors of the main
# run, p99 per minute, RSS after warm-up against a stated bound (benches/soak_report.py), and an SVG of
# RSS over time.
#
# Usage (release binary first):
#   cargo build --release -p lambdarec-server
#   bash benches/soak.sh [OUT_DIR]            # MINUTES=10 by default; WARMUP=60 s
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-target/release/lambdarec}
out=${1:-target/soak}
minutes=${MINUTES:-10}
warmup=${WARMUP:-60}
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
"$bin" synthetic --items 10000 --hidden 64 --sessions 100000 --seed 1 --store "$work/store" \
  --log "$work/sessions.tsv" >/dev/null 2>&1
port=$((51200 + RANDOM % 500)); mport=$((port + 500))
"$bin" serve --store "$work/store" --model synthetic --device cpu --listen "127.0.0.1:$port" \
  --metrics-listen "127.0.0.1:$mport" --poll-interval 5 --max-sessions 20000 \
  --log "file://$work/log" --snapshot-dir "$work/snapshots" --snapshot-interval 30 \
  --log-segment-bytes 8388608 >"$out/serve.log" 2>&1 &
server=$!; pids+=("$server")
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$mport/healthz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { tail -5 "$out/serve.log"; exit 1; }
  sleep 0.1
done

# Saturation: closed loop, 64 sessions in flight, 20 s. Sessions/s = calls/s ÷ calls per session.
"$bin" load --target "127.0.0.1:$port" --data "$work/sessions.tsv" --concurrency 64 --duration 20 \
  --json >"$out/saturation.json" 2>/dev/null
rate=$(python3 - "$out/saturation.json" "$work/sessions.tsv" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
sessions, events = set(), 0
with open(sys.argv[2]) as f:
    next(f)
    for line in f:
        sessions.add(line.split("\t", 1)[0]); events += 1
calls_per_session = (events - len(sessions)) / len(sessions)
print(f"{0.7 * r['throughput_rps'] / calls_per_session:.1f}")
EOF
)
echo "saturation: $(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["throughput_rps"]))' "$out/saturation.json") Recommend/s closed loop; soak at 70%: $rate sessions/s (open loop) for $minutes min"

# RSS (KiB) and the machine's 1-minute load average every second: a latency excursion on this shared
# 2-core box can then be told apart from other work on it.
( t0=$(date +%s); while kill -0 "$server" 2>/dev/null; do
    echo "$(( $(date +%s) - t0 )),$(awk '/VmRSS/ {print $2}' /proc/$server/status),$(cut -d' ' -f1 /proc/loadavg)"
    sleep 1; done ) >"$out/rss.csv" &
pids+=("$!")
# A new model version every minute (the poller swaps it in within 5 s).
( for i in $(seq 2 $((minutes + 1))); do sleep 60
    "$bin" synthetic --items 10000 --hidden 64 --sessions 10 --seed "$i" --store "$work/store" \
      --log "$work/reload.tsv" >/dev/null 2>&1 && echo "$(date -u +%T) published version $i"; done ) >"$out/reloads.txt" &
pids+=("$!")
# Clients that vanish mid-stream: a small harness killed with SIGKILL after 2 s, every 5 s.
( while true; do timeout -s KILL 2 "$bin" load --target "127.0.0.1:$port" --data "$work/sessions.tsv" \
      --concurrency 8 --connections 1 --duration 30 >/dev/null 2>&1 || true; sleep 3; done ) 2>/dev/null &  # no "Killed" line per client
pids+=("$!")

"$bin" load --target "127.0.0.1:$port" --data "$work/sessions.tsv" --rate "$rate" \
  --duration $((minutes * 60)) --json --plot "$out/soak-latency.svg" >"$out/soak.json" 2>/dev/null
swaps=$(grep -c "model swapped in" "$out/serve.log" || true)
for p in "${pids[@]:1}"; do kill -9 "$p" 2>/dev/null || true; done
kill -TERM "$server"; wait "$server" 2>/dev/null || true

python3 benches/soak_report.py "$out" "$warmup" "$swaps"
