#!/usr/bin/env bash
# Issue 7's runs: GPTQ of SmolLM2 at the reference settings (asym int4, 128 windows of
# 512 tokens of the Brown calibration split, damp 0.01), and the options that improve on
# it; then every checkpoint against the f32 baseline in one eval pass per protocol.
# Usage: scripts/bench_gptq.sh [OUTDIR] [CONFIG...]   (default: all configs below)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_assets.sh >/dev/null
cargo build --release -q
Q=target/release/quantize
A=${QUANTIZE_ASSETS:-.cache/assets}
O=${1:-out/gptq}
shift || true
mkdir -p "$O"
[ -d out/smollm2 ] || $Q convert "$A/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" -o out/smollm2
common=(--calib "$A/brown/brown_calib.txt" --nsamples 128 --seqlen 512 --damp 0.01)
declare -A cfg=(
  [gptq-int4-g128-asym]="--method gptq --bits 4 --group-size 128 --asym"
  [gptq-int4-channel-asym]="--method gptq --bits 4 --per-channel --asym"
  [gptq-int4-g128-asym-act]="--method gptq --bits 4 --group-size 128 --asym --act-order"
  [gptq-int4-g128-asym-act-static]="--method gptq --bits 4 --group-size 128 --asym --act-order --static-groups"
  [gptq-int4-g128-asym-act-static-mse]="--method gptq --bits 4 --group-size 128 --asym --act-order --static-groups --mse"
  [gptq-int4-g128-sym-act-static-mse]="--method gptq --bits 4 --group-size 128 --act-order --static-groups --mse"
  [gptq-int4-channel-asym-act-mse]="--method gptq --bits 4 --per-channel --asym --act-order --mse"
  [gptq-int3-g128-asym]="--method gptq --bits 3 --group-size 128 --asym"
  [gptq-int3-g128-asym-act-static-mse]="--method gptq --bits 3 --group-size 128 --asym --act-order --static-groups --mse"
  [gptq-fp8-e4m3-channel]="--method gptq --fp8-format e4m3"
  [gptq-fp8-e4m3-channel-act]="--method gptq --fp8-format e4m3 --act-order"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${!cfg[@]}")
models=()
for n in "${names[@]}"; do
  # shellcheck disable=SC2086
  [ -d "$O/$n" ] || /usr/bin/time -v $Q ${cfg[$n]} "${common[@]}" out/smollm2 -o "$O/$n" --json "$O/$n.json" 2> "$O/$n.log" >/dev/null
  models+=("$O/$n")
done
for p in llama.cpp chunks; do
  $Q eval --baseline out/smollm2 --text "$A/brown/brown_heldout.txt" --ctx 512 --max-windows 40 --protocol $p \
    --json "$O/eval-$p.json" --model "${models[@]}"
done
