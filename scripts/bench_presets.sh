#!/usr/bin/env bash
# `--help`'s GGUF rows: every llama-quantize type this tool writes, round-to-nearest (no
# calibration), exported from SmolLM2 and scored in one eval pass against the f32 baseline
# as llama.cpp's CPU backend computes the file (Brown held-out, llama.cpp protocol, ctx 512,
# 40 windows). Usage: scripts/bench_presets.sh [OUTDIR]   (default out/presets)
set -euo pipefail
cd "$(dirname "$0")/.."
default_out=out/presets
# shellcheck source=scripts/bench_setup.sh
. scripts/bench_setup.sh "$@"
types=(Q8_0 Q6_K Q5_K_M Q5_K_S Q5_1 Q5_0 Q4_K_M Q4_K_S Q4_1 Q4_0 Q3_K_L Q3_K_M Q3_K_S Q2_K)
for t in "${types[@]}"; do
  [ -f "$O/$t.gguf" ] || $Q --method rtn --gguf-type "$t" out/smollm2 -o "$O/$t.gguf" 2> "$O/$t.log" >/dev/null
done
[ -f "$O/eval.json" ] || $Q eval --baseline out/smollm2 --text "$A/brown/brown_heldout.txt" --protocol llama.cpp \
  --ctx 512 --max-windows 40 --json "$O/eval.json" --model $(printf "$O/%s.gguf " "${types[@]}")
