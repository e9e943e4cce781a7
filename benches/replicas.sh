#!/usr/bin/env bash
# Replicas behind HAProxy against one server, all in one run on this machine (docs/replicas.md):
# Recommend throughput and p50/p99 from `lambdarec load --route-sessions` (closed loop, GRU strategy),
# each case against freshly started servers, cases alternated round by round so that drift on a
# shared machine hits all of them:
#   single   one `serve` on its own JetStream stream, called directly      (the baseline)
#   replica  one `serve --replica`, called directly                        (the per-batch log check)
#   proxy1   one replica through HAProxy (the shipped config, all three backends naming it)
#   proxy3   three replicas through HAProxy
# Everything (nats-server, HAProxy, the replicas, the load generator) shares this machine's cores:
# see the note in benches/RESULTS.md on what that can and cannot show.
#
# Usage: bash benches/replicas.sh BIN STORE MODEL LOG [OUT_DIR]
# Needs NATS_SERVER and HAPROXY (as .ci/run installs them). Knobs: ROUNDS (3), DURATION (15 s),
# CONCURRENCY (16), CASES ("single replica proxy1 proxy3").
set -euo pipefail
bin=$1 store=$2 model=$3 log=$4 out=${5:-/tmp/replicas-bench}
rounds=${ROUNDS:-3}; duration=${DURATION:-15}; concurrency=${CONCURRENCY:-16}
cases=${CASES:-single replica proxy1 proxy3}
: "${NATS_SERVER:?set NATS_SERVER}" "${HAPROXY:?set HAPROXY}"
cfg="$(cd "$(dirname "$0")/.." && pwd)/deploy/haproxy/haproxy.cfg"
mkdir -p "$out"
pids=(); kinds=()
# CPU ticks (user + system) a process has used so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
stop_all() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
             for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; pids=(); kinds=(); }
trap 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
healthy() { for _ in $(seq 1 1200); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null 2>&1 && return; sleep 0.05; done
            echo "no /healthz on $1" >&2; exit 1; }

echo "== $(date -u +%FT%TZ) $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$rounds"); do
  for c in $cases; do
    nport=$(port); jsdir=$(mktemp -d); export OUT_JSON="$out/$c-$r.json"; rm -f "$out/cpu-$c-$r.txt"
    "$NATS_SERVER" -a 127.0.0.1 -p "$nport" -js -sd "$jsdir" >"$out/nats-$c-$r.log" 2>&1 &
    pids+=($!); kinds+=(nats)
    for _ in $(seq 1 200); do (echo > "/dev/tcp/127.0.0.1/$nport") 2>/dev/null && break; sleep 0.05; done
    n=1; [ "$c" = proxy3 ] && n=3
    flags=(--replica); [ "$c" = single ] && flags=(--snapshot-dir "$jsdir/snapshots" --archive-interval 0)
    grpc=(); admin=()
    for i in $(seq 1 "$n"); do
      g=$(port); a=$(port); grpc+=("$g"); admin+=("$a")
      "$bin" serve --store "$store" --model "$model" --device cpu --listen "127.0.0.1:$g" \
        --metrics-listen "127.0.0.1:$a" --poll-interval 0 --log "nats://127.0.0.1:$nport/BENCH" \
        "${flags[@]}" >"$out/serve-$c-$r-$i.log" 2>&1 &
      pids+=($!); kinds+=(serve)
    done
    for a in "${admin[@]}"; do healthy "$a"; done
    target="127.0.0.1:${grpc[0]}"
    if [ "${c#proxy}" != "$c" ]; then
      p=$(port); target="127.0.0.1:$p"
      env LAMBDAREC_PROXY_BIND="$target" \
        LAMBDAREC_REPLICA_1="127.0.0.1:${grpc[0]}" LAMBDAREC_REPLICA_1_ADMIN="${admin[0]}" \
        LAMBDAREC_REPLICA_2="127.0.0.1:${grpc[$((1 % n))]}" LAMBDAREC_REPLICA_2_ADMIN="${admin[$((1 % n))]}" \
        LAMBDAREC_REPLICA_3="127.0.0.1:${grpc[$((2 % n))]}" LAMBDAREC_REPLICA_3_ADMIN="${admin[$((2 % n))]}" \
        "$HAPROXY" -db -f "$cfg" >"$out/haproxy-$c-$r.log" 2>&1 &
      pids+=($!); kinds+=(haproxy)
      sleep 2 # two health checks: every backend up
    fi
    before=(); for p in "${pids[@]}"; do before+=("$(ticks "$p")"); done
    # The load generator's CPU: its shell's children's ticks once it has been waited for.
    bash -c '"$@" >"$OUT_JSON" 2>/dev/null; read -ra st < /proc/$$/stat; echo $(( st[15] + st[16] ))' _ \
      "$bin" load --target "$target" --data "$log" --duration "$duration" --concurrency "$concurrency" \
      --strategy gru --route-sessions --retries 3 --json >"$out/cpu-$c-$r.txt" 2>/dev/null
    # Ticks per kind of process over the load run, for CPU per request (benches/RESULTS.md).
    for i in "${!pids[@]}"; do
      echo "${kinds[$i]} $(( $(ticks "${pids[$i]}") - before[i] ))" >>"$out/cpu-$c-$r.txt"
    done
    stop_all; rm -rf "$jsdir"
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%-8s round %s: %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms  errors %d  retried %d" % (sys.argv[2], sys.argv[3], r["throughput_rps"], r["p50_ms"], r["p99_ms"], r["errors_total"], sum(r["retried"].values())))' \
      "$out/$c-$r.json" "$c" "$r"
  done
done
python3 - "$out" "$rounds" "$(getconf CLK_TCK)" $cases <<'PY'
import json, statistics, sys
out, rounds, hz, cases = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
def run(c, r): return json.load(open(f"{out}/{c}-{r}.json"))
def cpu(c, r):
    # First line: the load generator; then "kind ticks" per process.
    lines = open(f"{out}/cpu-{c}-{r}.txt").read().split("\n")
    per = {"load": int(lines[0])}
    for l in lines[1:]:
        if l.strip():
            k, t = l.split()
            per[k] = per.get(k, 0) + int(t)
    n = run(c, r)["requests"]
    return {k: v / hz * 1e6 / n for k, v in per.items()}  # CPU µs per Recommend (and its event)
med = lambda c, k: statistics.median(run(c, r)[k] for r in range(1, rounds + 1))
base = med(cases[0], "throughput_rps")
for c in cases:
    us = {}
    for r in range(1, rounds + 1):
        for k, v in cpu(c, r).items():
            us.setdefault(k, []).append(v)
    cpu_text = "  ".join(f"{k} {statistics.median(v):.0f}" for k, v in sorted(us.items()))
    print(f"{c:<8} median {med(c,'throughput_rps'):8.0f} req/s ({med(c,'throughput_rps')/base:.3f}x {cases[0]})  "
          f"p50 {med(c,'p50_ms'):6.2f} ms  p99 {med(c,'p99_ms'):6.2f} ms  CPU µs/request: {cpu_text}")
PY
