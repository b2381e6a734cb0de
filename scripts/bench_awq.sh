#!/usr/bin/env bash
# Issue 5's runs: AWQ and AWQ+GPTQ of SmolLM2 (asym, group 128, int4 and int3; 128
# windows of 512 tokens of the Brown calibration split), each timed with /usr/bin/time -v,
# written in the gptq layout (the awq GEMM layout needs widths that are multiples of the
# group, and SmolLM2's 576 is not one of 128); then every checkpoint (with RTN and GPTQ
# ones given as extra paths) against the f32 baseline in one eval pass, chunks protocol,
# ctx 512, 40 windows.
# Usage: scripts/bench_awq.sh [OUTDIR] [EXTRA_CHECKPOINT...]   (default out/awq2)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_assets.sh >/dev/null
cargo build --release -q
Q=target/release/quantize
A=${QUANTIZE_ASSETS:-.cache/assets}
O=${1:-out/awq2}
shift || true
mkdir -p "$O"
[ -d out/smollm2 ] || $Q convert "$A/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" -o out/smollm2
# The alpha and clipping searches score on the first 32 windows (magnitudes from all 128).
common=(--nsamples 128 --seqlen 512 --awq-search-windows 32 --calib "$A/brown/brown_calib.txt")
q() {
  local name=$1; shift
  # shellcheck disable=SC2086
  [ -d "$O/$name" ] || /usr/bin/time -v $Q out/smollm2 -o "$O/$name" --json "$O/$name.json" "$@" "${common[@]}" 2> "$O/$name.log" >/dev/null
}
q awq-int4-g128-asym      --method awq --bits 4 --group-size 128 --asym
q awq-int3-g128-asym      --method awq --bits 3 --group-size 128 --asym
# AWQ+GPTQ with the GPTQ options that measured best alone (GPTQ section of BENCHMARKS),
# at the defaults (no AWQ clip, alpha grid scored with GPTQ's weights), and int3 with
# each default turned back to AutoAWQ's behaviour.
gptq_best=(--act-order --static-groups --mse)
q awqgptq-int3-g128-asym  --method awq+gptq --bits 3 --group-size 128 --asym "${gptq_best[@]}"
q awqgptq-int4-g128-asym  --method awq+gptq --bits 4 --group-size 128 --asym "${gptq_best[@]}"
q awqgptq-int3-g128-asym-rtnsearch       --method awq+gptq --bits 3 --group-size 128 --asym "${gptq_best[@]}" --awq-rtn-search
q awqgptq-int3-g128-asym-rtnsearch-clip  --method awq+gptq --bits 3 --group-size 128 --asym "${gptq_best[@]}" --awq-rtn-search --awq-clip
$Q eval --baseline out/smollm2 --text "$A/brown/brown_heldout.txt" --ctx 512 --max-windows 40 --json "$O/eval.json" \
  --model "$O"/awq-int4-g128-asym "$O"/awqgptq-int4-g128-asym "$O"/awq-int3-g128-asym "$O"/awqgptq-int3-g128-asym \
  "$O"/awqgptq-int3-g128-asym-rtnsearch "$O"/awqgptq-int3-g128-asym-rtnsearch-clip "$@"
