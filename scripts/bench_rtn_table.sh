#!/usr/bin/env bash
# Issue 3's table: RTN / FP8 schemes of SmolLM2 against the f32 baseline, Brown held-out,
# chunks protocol, ctx 512, 40 windows, all models in one eval pass.
# Usage: scripts/bench_rtn_table.sh [OUTDIR]   (default out/rtn-table)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_assets.sh >/dev/null
cargo build --release -q
Q=target/release/quantize
A=${QUANTIZE_ASSETS:-.cache/assets}
O=${1:-out/rtn-table}
mkdir -p "$O"
[ -d out/smollm2 ] || $Q convert "$A/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" -o out/smollm2
q() { local name=$1; shift; [ -d "$O/$name" ] || $Q "$@" out/smollm2 -o "$O/$name" >/dev/null; }
# compressed-tensors (the default format); g128 on SmolLM2's 576-wide linears takes the
# group fallback (g64 there, down_proj keeps 128), what the loaders accept. The -partial
# rows keep the ragged last group of 64 columns (only this tool reads them), as measured
# before issue 21.
q int8-channel        --method rtn --bits 8 --per-channel --sym
q int4-g128-sym       --method rtn --bits 4 --group-size 128 --sym
q int4-g128-asym      --method rtn --bits 4 --group-size 128 --asym
q int4-g128-sym-partial  --method rtn --bits 4 --group-size 128 --sym --group-fallback partial
q int4-g128-asym-partial --method rtn --bits 4 --group-size 128 --asym --group-fallback partial
q int4-g64-asym       --method rtn --bits 4 --group-size 64 --asym
q int4-channel-asym   --method rtn --bits 4 --per-channel --asym
q int3-g128-asym      --method rtn --bits 3 --group-size 128 --asym
q int3-g128-asym-partial --method rtn --bits 3 --group-size 128 --asym --group-fallback partial
q int2-g64-asym       --method rtn --bits 2 --group-size 64 --asym
q fp8-e4m3-channel    --method fp8 --fp8-format e4m3
q fp8-e5m2-channel    --method fp8 --fp8-format e5m2
$Q eval --baseline out/smollm2 --text "$A/brown/brown_heldout.txt" --ctx 512 --max-windows 40 --json "$O/eval.json" \
  --model "$O"/int8-channel "$O"/int4-g128-sym "$O"/int4-g128-asym "$O"/int4-g128-sym-partial \
          "$O"/int4-g128-asym-partial "$O"/int4-g64-asym "$O"/int4-channel-asym "$O"/int3-g128-asym \
          "$O"/int3-g128-asym-partial "$O"/int2-g64-asym "$O"/fp8-e4m3-channel "$O"/fp8-e5m2-channel
