#!/usr/bin/env bash
# Long fuzzing run (RELIABILITY.md): each target until it has run RUNS executions (default
# 10 million) or MAX_SECONDS have passed (default 1800), two targets at a time on a 2-core
# machine. The session targets keep their gateway data in TMPDIR (default /dev/shm, so that
# fsync does not set the pace). Prints one line per target: executions, seconds, corpus
# size, crashes; the corpora grow in fuzz/corpus/<target> and crashes land in fuzz/artifacts.
#
#   fuzz/long-run.sh                  # all four targets
#   RUNS=1000000 fuzz/long-run.sh smtp_session
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
RUNS=${RUNS:-10000000}
MAX_SECONDS=${MAX_SECONDS:-1800}
export TMPDIR=${TMPDIR:-/dev/shm}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(message_structure imap_session smtp_session pop3_session)
cargo +nightly fuzz build -s none -O
results=$(mktemp -d)
run_one() {
  local t=$1 start end
  mkdir -p "corpus/$t"
  start=$(date +%s)
  cargo +nightly fuzz run -s none -O "$t" "corpus/$t" -- -runs="$RUNS" -max_total_time="$MAX_SECONDS" \
    -print_final_stats=1 >"$results/$t.log" 2>&1 || true
  end=$(date +%s)
  local execs crashes
  execs=$(grep -m1 'stat::number_of_executed_units' "$results/$t.log" | awk '{print $2}')
  crashes=$(ls artifacts/"$t" 2>/dev/null | wc -l)
  printf '| %s | %s | %s | %s | %s |\n' "$t" "${execs:-?}" "$((end - start))" \
    "$(ls "corpus/$t" | wc -l)" "$crashes" >"$results/$t.row"
}
i=0
for t in "${targets[@]}"; do
  run_one "$t" &
  i=$((i + 1))
  if [ $((i % 2)) = 0 ]; then wait; fi
done
wait
echo "| target | executions | seconds | corpus files | crash artifacts |"
echo "|---|---:|---:|---:|---:|"
for t in "${targets[@]}"; do cat "$results/$t.row"; done
for t in "${targets[@]}"; do
  if grep -q "ERROR: libFuzzer\|panicked" "$results/$t.log"; then
    echo "--- $t:"; grep -m5 -A3 "ERROR: libFuzzer\|panicked" "$results/$t.log"
  fi
done
