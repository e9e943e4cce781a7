#!/usr/bin/env bash
# Runs the fuzz targets for a bounded time each and reports, per target, the executions, libFuzzer's
# coverage figures (cov: edges, ft: features) and whether it crashed.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 10 seconds, every target)
#
# Needs a nightly toolchain (libFuzzer instrumentation; FUZZ_TOOLCHAIN names another): without one it
# says so and exits 0. Installs cargo-fuzz when missing (bounded). FUZZ_BUILD_TIMEOUT bounds the build
# (seconds, default 3600). Exits 1 when a target crashed, panicked, exceeded the memory limits
# or hung; the input that did it is under fuzz/artifacts/<target>/ and its log under fuzz/logs/.
# The corpora grow in fuzz/corpus/<target>/ (not committed); the committed seeds are fuzz/seeds/ and,
# when ../shared/data exists beside the repository, small prefixes of its logs (never committed).
set -uo pipefail
cd "$(dirname "$0")"
# The sanitizer build has a target directory of its own (a workspace one would be rebuilt from scratch
# with other flags); FUZZ_TARGET_DIR moves it, e.g. to a CI cache.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target}"

secs=${1:-10}
shift || true
all=(log_text log_parquet archive_file bundle log_record log_segments snapshot request)
[ "$#" -gt 0 ] && targets=("$@") || targets=("${all[@]}")
case "$secs" in '' | *[!0-9]*) echo "usage: fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 2 ;; esac

# The sanitizer flags need a nightly compiler; FUZZ_TOOLCHAIN may name a pinned one (nightly-YYYY-MM-DD).
tc=${FUZZ_TOOLCHAIN:-nightly}
if ! rustup toolchain list 2>/dev/null | grep -q "^$tc"; then
  echo "fuzz: SKIPPED: no $tc toolchain is installed (cargo-fuzz needs nightly: 'rustup toolchain install nightly --profile minimal')"
  exit 0
fi
if ! cargo "+$tc" fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (at most 10 minutes)"
  if ! timeout 600 cargo install cargo-fuzz --locked --quiet; then
    echo "fuzz: SKIPPED: cargo-fuzz is not installed and could not be installed"
    exit 0
  fi
fi

# One build of every target (the first one compiles the whole stack with sanitizers: minutes).
echo "fuzz: building the targets"
if ! timeout "${FUZZ_BUILD_TIMEOUT:-3600}" cargo "+$tc" fuzz build >logs.build 2>&1; then
  tail -30 logs.build
  echo "fuzz: FAILED: the fuzz targets do not build"
  exit 1
fi

# Seeds cut from the shared data sets at run time: the first lines of each log, as the text reader's
# input (flags byte 0: detect everything). The data's licences allow no redistribution: never committed.
data=../../shared/data
data_seeds=data-seeds/log_text
rm -rf data-seeds
mkdir -p "$data_seeds"
if [ -d "$data" ]; then
  for f in "$data"/rsc15-yoochoose-100k/yoochoose-clicks-100k_train_full.txt \
    "$data"/diginetica-sample/sample_train-item-views.csv "$data"/ml-100k/ml-100k.inter; do
    [ -f "$f" ] || continue
    { printf '\0'; head -n 40 "$f"; } >"$data_seeds/$(basename "$f")"
  done
fi

mkdir -p logs
# Per input: 10 s is a hang; 2 GiB of RSS or one allocation of 256 MiB from inputs of a few KiB is an
# unbounded allocation.
limits=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 -print_final_stats=1)
printf '%-14s %12s %8s %8s  %s\n' target executions cov ft result
crashed=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  dirs=("corpus/$t" "seeds/$t")
  [ "$t" = log_text ] && dirs+=("$data_seeds")
  # The wall-clock bound covers start-up and the final merge of a run that overruns its budget.
  timeout $((secs + 120)) cargo "+$tc" fuzz run "$t" "${dirs[@]}" -- "${limits[@]}" >"logs/$t.log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
  stats=$(grep -E '^#[0-9]+.*cov: ' "logs/$t.log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$stats")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$stats")
  if [ "$rc" -eq 0 ]; then
    result=ok
  else
    crashed=$((crashed + 1))
    result="CRASHED (exit $rc; see fuzz/logs/$t.log and fuzz/artifacts/$t/)"
    grep -m3 -E 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY' "logs/$t.log" | sed 's/^/    /'
  fi
  printf '%-14s %12s %8s %8s  %s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$result"
done
echo "fuzz: ${#targets[@]} targets ran ${secs}s each, $crashed crashed"
[ "$crashed" -eq 0 ]
