#!/usr/bin/env bash
# Soak (issue 15): a bounded open-loop run of `lambdarec load` at 70% of the server's saturation, with
# session churn (every pass over the log makes new sessions; --max-sessions below the live set forces
# LRU evictions), a model reload every minute (a new version written to the store; the server's
# LATEST poller swaps it in), and clients that disconnect mid-stream (a second harness killed with
# SIGKILL every few seconds). Samples the server's RSS every second and reports: errors of the main
# run, p99 per minute, RSS after warm-up (min, max, growth), and an SVG of RSS over time.
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

# RSS every second.
( t0=$(date +%s); while kill -0 "$server" 2>/dev/null; do
    echo "$(( $(date +%s) - t0 )),$(awk '/VmRSS/ {print $2}' /proc/$server/status)"; sleep 1; done ) >"$out/rss.csv" &
pids+=("$!")
# A new model version every minute (the poller swaps it in within 5 s).
( for i in $(seq 2 $((minutes + 1))); do sleep 60
    "$bin" synthetic --items 10000 --hidden 64 --sessions 10 --seed "$i" --store "$work/store" \
      --log "$work/reload.tsv" >/dev/null 2>&1 && echo "$(date -u +%T) published version $i"; done ) >"$out/reloads.txt" &
pids+=("$!")
# Clients that vanish mid-stream: a small harness killed with SIGKILL after 2 s, every 5 s.
( while true; do timeout -s KILL 2 "$bin" load --target "127.0.0.1:$port" --data "$work/sessions.tsv" \
      --concurrency 8 --connections 1 --duration 30 >/dev/null 2>&1 || true; sleep 3; done ) &
pids+=("$!")

"$bin" load --target "127.0.0.1:$port" --data "$work/sessions.tsv" --rate "$rate" \
  --duration $((minutes * 60)) --json --plot "$out/soak-latency.svg" >"$out/soak.json" 2>/dev/null
swaps=$(grep -c "model swapped in" "$out/serve.log" || true)
for p in "${pids[@]:1}"; do kill -9 "$p" 2>/dev/null || true; done
kill -TERM "$server"; wait "$server" 2>/dev/null || true

python3 - "$out" "$warmup" "$swaps" <<'EOF'
import json, os, sys
out, warmup, swaps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = json.load(open(os.path.join(out, "soak.json")))
print(f"soak: {r['requests']} Recommend calls, {r['throughput_rps']:.0f}/s, p50 {r['p50_ms']:.2f} ms, "
      f"p99 {r['p99_ms']:.2f} ms, p99.9 {r['p999_ms']:.2f} ms, errors {r['errors_total']} {r['errors']}; "
      f"{swaps} model swaps")
minutes = {}
for t in r["timeline"]:
    minutes.setdefault(t["second"] // 60, []).append(t)
print("p99 per minute (max of the per-second p99s, and the request-weighted mean of them):")
for m, ts in sorted(minutes.items()):
    n = sum(t["requests"] for t in ts)
    mean = sum(t["p99_ms"] * t["requests"] for t in ts) / max(n, 1)
    print(f"  minute {m + 1}: {n} calls, p99 mean {mean:.2f} ms, max {max(t['p99_ms'] for t in ts):.2f} ms")
rss = [tuple(map(int, l.split(","))) for l in open(os.path.join(out, "rss.csv")) if l.strip().count(",") == 1 and l.split(",")[1].strip()]
after = [kb for t, kb in rss if t >= warmup]
first = sum(after[:30]) / max(len(after[:30]), 1)
last = sum(after[-30:]) / max(len(after[-30:]), 1)
print(f"RSS after {warmup} s warm-up: min {min(after)/1024:.0f} MiB, max {max(after)/1024:.0f} MiB, "
      f"first 30 s mean {first/1024:.0f} MiB, last 30 s mean {last/1024:.0f} MiB "
      f"(growth {100 * (last - first) / first:+.1f}%)")
# SVG: RSS over time.
W, H, P = 720, 300, 50
tmax = max(t for t, _ in rss) or 1
kmax = max(kb for _, kb in rss) * 1.1
pts = " ".join(f"{P + (W - 2 * P) * t / tmax:.1f},{H - P - (H - 2 * P) * kb / kmax:.1f}" for t, kb in rss)
grid = "".join(
    f'<line x1="{P}" x2="{W - P}" y1="{H - P - (H - 2 * P) * f:.1f}" y2="{H - P - (H - 2 * P) * f:.1f}" stroke="#ddd"/>'
    f'<text x="{P - 5}" y="{H - P - (H - 2 * P) * f + 4:.1f}" font-size="11" text-anchor="end">{kmax * f / 1024:.0f}</text>'
    for f in (0, 0.25, 0.5, 0.75, 1.0))
ticks = "".join(
    f'<text x="{P + (W - 2 * P) * s / tmax:.1f}" y="{H - P + 16}" font-size="11" text-anchor="middle">{s // 60}</text>'
    for s in range(0, tmax + 1, 60))
wx = P + (W - 2 * P) * warmup / tmax
svg = f'''<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">
<rect width="{W}" height="{H}" fill="white"/>{grid}{ticks}
<line x1="{wx:.1f}" x2="{wx:.1f}" y1="{P}" y2="{H - P}" stroke="#f90" stroke-dasharray="4"/>
<polyline points="{pts}" fill="none" stroke="#36c" stroke-width="1.5"/>
<text x="{W / 2}" y="20" font-size="13" text-anchor="middle">lambdarec serve RSS (MiB) during the soak; warm-up ends at the dashed line</text>
<text x="{W / 2}" y="{H - 12}" font-size="11" text-anchor="middle">minutes</text>
</svg>'''
open(os.path.join(out, "soak-rss.svg"), "w").write(svg)
print(f"wrote {os.path.join(out, 'soak-rss.svg')} and {os.path.join(out, 'soak-latency.svg')}")
EOF
