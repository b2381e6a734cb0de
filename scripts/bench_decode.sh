#!/usr/bin/env bash
# Decode and prefill speed (issue 17): this tool's `bench` on SmolLM2-135M in f32, int8
# (per channel), int4 g128 (GPTQ layout), FP8 and int4 g128 with a GPTQ int8 head
# (recipes/gptq-int4-g128-head-int8.toml), with exact products and with `--dot int8`
# (llama.cpp's int8 inputs), next to llama.cpp's llama-bench on F32, Q8_0 and Q4_0 files
# of the same weights, in one run, plus the machine's read bandwidth.
#
#   LLAMA_CPP=/path/to/llama.cpp/build/bin scripts/bench_decode.sh [WORKDIR]
#
# llama.cpp: the source vendored in the llama-cpp-python sdist on PyPI
# (`pip download --no-binary :all: --no-deps llama-cpp-python`), CPU backend built with
# AVX2 only: cmake -B build -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
# -DGGML_AVX512=OFF && cmake --build build --target llama-bench llama-quantize.
# Its GGUFs come from the pinned Q4_1 file through llama-quantize --allow-requantize (F32
# is the same dequantized weights `quantize convert` writes; Q8_0 and Q4_0 from the F32).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/bench_decode}
L=${LLAMA_CPP:?set LLAMA_CPP to llama.cpp\'s build/bin}
Q=target/release/quantize
GGUF=.cache/assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
REPS=${REPS:-5}
mkdir -p "$W"
cargo build --release --bin quantize --example mem_bandwidth >/dev/null
[ -d "$W/f32" ] || $Q convert "$GGUF" -o "$W/f32"
[ -d "$W/int8" ] || $Q --method rtn --bits 8 --per-channel "$W/f32" -o "$W/int8"
[ -d "$W/int4" ] || $Q --method gptq --bits 4 --group-size 128 --nsamples 32 --seqlen 512 "$W/f32" -o "$W/int4"
[ -d "$W/fp8" ] || $Q --method fp8 "$W/f32" -o "$W/fp8"
[ -d "$W/int4h" ] || $Q --recipe recipes/gptq-int4-g128-head-int8.toml "$W/f32" -o "$W/int4h"
for t in F32 Q8_0 Q4_0; do
  src=$GGUF; [ $t = F32 ] || src="$W/F32.gguf"
  [ -f "$W/$t.gguf" ] || "$L/llama-quantize" --allow-requantize "$src" "$W/$t.gguf" $t > "$W/$t.quantize.log" 2>&1
done
echo "## machine"; lscpu | grep -E "Model name|^CPU\(s\)"; target/release/examples/mem_bandwidth
echo "## quantize bench"
$Q bench --model "$W/f32" "$W/int8" "$W/int4" "$W/fp8" "$W/int4h" -p 512 -n 128 -r "$REPS"
echo "## quantize bench --dot int8"
$Q bench --model "$W/int8" "$W/int4" "$W/int4h" -p 512 -n 128 -r "$REPS" --dot int8
echo "## llama-bench"
"$L/llama-bench" -m "$W/F32.gguf" -m "$W/Q8_0.gguf" -m "$W/Q4_0.gguf" -p 512 -n 128 -t 2 -r "$REPS"
