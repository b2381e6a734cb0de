#!/usr/bin/env bash
# Fuzz every target for SECONDS each, JOBS targets at a time (nightly + cargo-fuzz), and
# print one line per target: executions, corpus size, crashes (artifacts/ TARGET/). Crash
# inputs go into fuzz/regressions/TARGET/ once fixed (tests/fuzz_regressions.rs replays them).
# Usage: fuzz/run_campaign.sh [SECONDS] [JOBS]
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-240} jobs=${2:-2}
targets=(gguf safetensors config checkpoint tokenizer stats)
mkdir -p logs
run() {
  local t=$1
  mkdir -p "corpus/$t" "artifacts/$t"
  cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" -max_len=262144 \
    -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"logs/$t.log" 2>&1
  local execs; execs=$(grep -m1 'stat::number_of_executed_units' "logs/$t.log" | awk '{print $2}')
  echo "$t: ${execs:-?} executions in ${secs} s, corpus $(ls "corpus/$t" | wc -l), crashes $(ls "artifacts/$t" | wc -l)"
}
for ((i = 0; i < ${#targets[@]}; i += jobs)); do
  for t in "${targets[@]:i:jobs}"; do run "$t" & done
  wait
done
