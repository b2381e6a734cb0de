#!/usr/bin/env bash
# The main job on the default model: fetch assets, convert the GGUF, GPTQ 4-bit (g128,
# asymmetric, act-order + static groups + MSE clipping: the best set measured in
# docs/BENCHMARKS.md, the defaults), evaluate against the full-precision baseline, and chat
# with the result. Runs from any directory; outputs under the checkout's out/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_assets.sh
cargo build --release -q
Q=target/release/quantize
A=${QUANTIZE_ASSETS:-.cache/assets}
mkdir -p out
[ -d out/smollm2 ] || $Q convert "$A/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" -o out/smollm2
G=out/smollm2-gptq-int4-g128-asym-act
# The card's one-liner: its defaults are the flags above and 128 windows of 512 tokens
# of the Brown calibration split.
[ -d $G ] || { rm -f out/gptq-report.json; $Q out/smollm2/model.safetensors --method gptq --bits 4 -o $G --json out/gptq-report.json; }
rm -f out/gptq-eval.json # eval never overwrites a report; this run's replaces the last one's
$Q eval --model $G --baseline out/smollm2 --text "$A/brown/brown_heldout.txt" \
  --ctx 512 --max-windows 40 --json out/gptq-eval.json
# And the quantized model answers, streamed token by token through its chat template.
$Q generate --model $G --chat --prompt "What is the capital of France?" --max-tokens 48
