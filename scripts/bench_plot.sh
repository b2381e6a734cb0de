#!/usr/bin/env bash
# The checkpoints of the README's plot (issue 16): RTN / GPTQ / AWQ / AWQ+GPTQ at int3 /
# int4 / int8 and FP8 of SmolLM2, each method at its best measured options, a small
# calibration (32 windows of 512 tokens of the Brown calibration split, AWQ's alpha grid
# scored on the first 8) so that the whole matrix runs in about an hour on 2 cores; one
# eval pass against the f32 baseline (Brown held-out, llama.cpp protocol, ctx 512, 40
# windows, the protocol of the llama.cpp rows in docs/BENCHMARKS.md); then one table and
# one plot of perplexity delta against bits/weight, with llama.cpp's measured points
# (docs/peers.csv) beside ours.
# Usage: scripts/bench_plot.sh [OUTDIR]   (default out/plot); QUANTIZE=path overrides the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
default_out=out/plot
# shellcheck source=scripts/bench_setup.sh
. scripts/bench_setup.sh "$@"
cal=(--nsamples 32 --seqlen 512 --calib "$A/brown/brown_calib.txt")
q() {
  local name=$1; shift
  [ -d "$O/$name" ] || /usr/bin/time -v $Q out/smollm2 -o "$O/$name" --json "$O/$name.json" "$@" 2> "$O/$name.log" >/dev/null
}
best=(--asym --act-order --static-groups --mse)
q rtn-int8       --method rtn --bits 8 --per-channel
q rtn-fp8        --method fp8 --fp8-format e4m3
q rtn-int4-g128  --method rtn --bits 4 --group-size 128 --asym
q rtn-int3-g128  --method rtn --bits 3 --group-size 128 --asym
q gptq-int8      --method gptq --bits 8 --per-channel --asym --act-order --mse "${cal[@]}"
q gptq-fp8       --method gptq --fp8-format e4m3 --act-order "${cal[@]}"
q gptq-int4-g128 --method gptq --bits 4 --group-size 128 "${best[@]}" "${cal[@]}"
q gptq-int3-g128 --method gptq --bits 3 --group-size 128 "${best[@]}" "${cal[@]}"
q awq-int4-g128  --method awq --bits 4 --group-size 128 --asym --awq-search-windows 8 "${cal[@]}"
q awq-int3-g128  --method awq --bits 3 --group-size 128 --asym --awq-search-windows 8 "${cal[@]}"
q awqgptq-int4-g128 --method awq+gptq --bits 4 --group-size 128 "${best[@]}" --awq-search-windows 8 "${cal[@]}"
q awqgptq-int3-g128 --method awq+gptq --bits 3 --group-size 128 "${best[@]}" --awq-search-windows 8 "${cal[@]}"
models=(rtn-int8 rtn-fp8 rtn-int4-g128 rtn-int3-g128 gptq-int8 gptq-fp8 gptq-int4-g128 gptq-int3-g128
        awq-int4-g128 awq-int3-g128 awqgptq-int4-g128 awqgptq-int3-g128)
[ -f "$O/eval.json" ] || $Q eval --baseline out/smollm2 --text "$A/brown/brown_heldout.txt" --protocol llama.cpp \
  --ctx 512 --max-windows 40 --json "$O/eval.json" --model "${models[@]/#/$O/}"
# This tool's GGUF files of llama.cpp's types (scored as llama.cpp computes them), beside
# llama-quantize's own points of docs/peers.csv.
g() {
  local name=$1; shift
  [ -f "$O/$name.gguf" ] || /usr/bin/time -v $Q out/smollm2 -o "$O/$name.gguf" "$@" 2> "$O/$name.log" >/dev/null
}
g Q4_0-imatrix   --method rtn --imatrix --gguf-type Q4_0 "${cal[@]}"
g Q4_K_M-imatrix --method rtn --imatrix --gguf-type Q4_K_M "${cal[@]}"
g Q3_K_M-gptq    --method gptq --gguf-type Q3_K_M "${cal[@]}"
[ -f "$O/eval-gguf.json" ] || $Q eval --baseline out/smollm2 --text "$A/brown/brown_heldout.txt" --protocol llama.cpp \
  --ctx 512 --max-windows 40 --json "$O/eval-gguf.json" --model "$O"/Q4_0-imatrix.gguf "$O"/Q4_K_M-imatrix.gguf "$O"/Q3_K_M-gptq.gguf
# The README's picture is replaced by this run's.
rm -f docs/img/smollm2-ppl-vs-bpw.svg
$Q report "$O/eval.json" "$O/eval-gguf.json" --peers docs/peers.csv --plot docs/img/smollm2-ppl-vs-bpw.svg \
  --title "SmolLM2-135M: perplexity increase on Brown held-out (llama.cpp protocol, 40 x 512)" | tee "$O/report.txt"
