#!/usr/bin/env bash
# One scripted call on a lent GPU host (see kernels/GPU.md): the kernel check, then the server on a
# 1M-item catalogue with --device cuda and --device cpu through the load harness, same host, same log.
#
# Build here (no GPU needed), carry the stripped binaries in an ignored folder, run there:
#   cargo build --release -p lambdarec-server --features cuda
#   cargo build --release -p lambdarec-kernels --features cuda --bin gpu-check
#   mkdir -p gpu-run && cp target/release/{lambdarec,gpu-check} gpu-run/ && strip gpu-run/*
#   # device call, carrying gpu-run:   bash benches/gpu/session.sh gpu-run "$OUT"
#
# Writes gpu-check.txt, synthetic.txt and load-<device>-c<N>.json (+ serve-<device>.log) to OUT.
# Skip parts with SKIP_CHECK=1 or SKIP_SERVE=1; ITEMS, HIDDEN, DURATION, CONCURRENCY and DEVICES override
# the defaults (1000000, 128, 15 s, "16 64 256", "cuda cpu").
set -euo pipefail
bin=${1:?usage: session.sh BIN_DIR OUT_DIR}
out=${2:?usage: session.sh BIN_DIR OUT_DIR}
mkdir -p "$out"
items=${ITEMS:-1000000}
hidden=${HIDDEN:-128}
duration=${DURATION:-15}
work=$(mktemp -d)
trap 'pkill -f "lambdarec serve --store $work" 2>/dev/null || true; rm -rf "$work"' EXIT

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/card.txt" || true

if [ -z "${SKIP_CHECK:-}" ]; then
  echo "== gpu-check (conformance, CPU agreement, kernel table)"
  "$bin/gpu-check" 2>&1 | tee "$out/gpu-check.txt"
fi

if [ -z "${SKIP_SERVE:-}" ]; then
  echo "== synthetic model: $items items, hidden $hidden"
  "$bin/lambdarec" synthetic --items "$items" --hidden "$hidden" --store "$work/store" \
    --log "$work/sessions.tsv" 2>&1 | tee "$out/synthetic.txt"
  port=50100
  for device in ${DEVICES:-cuda cpu}; do
    port=$((port + 1))
    log="$out/serve-$device.log"
    # The event log in the work dir (as in production; the default would write ./lambdarec-data).
    "$bin/lambdarec" serve --store "$work/store" --model synthetic --device "$device" \
      --listen "127.0.0.1:$port" --log "file://$work/log-$device" \
      --snapshot-dir "$work/snapshots-$device" --archive-interval 0 >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 1 120); do
      grep -q "listening" "$log" && break
      kill -0 "$pid" 2>/dev/null || { echo "server ($device) exited:"; tail -20 "$log"; exit 1; }
      sleep 1
    done
    grep -q "listening" "$log" || { echo "server ($device) not ready after 120 s"; tail -20 "$log"; exit 1; }
    grep -E "engine started|serving model" "$log" | sed 's/\x1b\[[0-9;]*m//g'
    for c in ${CONCURRENCY:-16 64 256}; do
      echo "== $device, $c sessions in flight, ${duration} s"
      "$bin/lambdarec" load --target "127.0.0.1:$port" --data "$work/sessions.tsv" \
        --duration "$duration" --concurrency "$c" --json >"$out/load-$device-c$c.json"
      python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("   %.0f req/s  p50 %.2f ms  p99 %.2f ms  errors %d %s" % (r["throughput_rps"], r["p50_ms"], r["p99_ms"], r["errors_total"], r["errors"]))' \
        "$out/load-$device-c$c.json" || cat "$out/load-$device-c$c.json"
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
fi
