#!/usr/bin/env bash
# Byte-identity check of every method's checkpoint (issue 14): quantize the converted
# SmolLM2 with each method on a small calibration and print one sha256 per output file.
# For .safetensors files the hash covers the tensor data section only (the header's
# __metadata__ holds the run record, which names options, not results); config.json is
# hashed without its run record. Usage: scripts/pin_outputs.sh BIN MODEL_DIR OUT_DIR
set -euo pipefail
bin=$1 model=$2 out=$3
calib=${QUANTIZE_ASSETS:-$(cd "$(dirname "$0")/.." && pwd)/.cache/assets}/brown/brown_calib.txt
small=(--nsamples 4 --seqlen 128 --calib "$calib" --)
mkdir -p "$out"
run() { # name args...
  local name=$1; shift
  [ -d "$out/$name" ] || "$bin" "$model" -o "$out/$name" "$@" >/dev/null 2>"$out/$name.log"
}
run rtn-int4-g128 --method rtn --bits 4 --group-size 128
run rtn-int4-g128-asym-mse --method rtn --bits 4 --group-size 128 --asym --mse
run fp8 --method fp8
run gptq-int4-g128-ao-sg-mse --method gptq --bits 4 --group-size 128 --asym --act-order --static-groups --mse "${small[@]}"
run awq-int4-g64 --method awq --bits 4 --group-size 64 --asym --awq-grid 5 "${small[@]}"
run awq-gptq-int4-g64 --method awq+gptq --bits 4 --group-size 64 --asym --awq-grid 5 --act-order "${small[@]}"
run w8a8-int8-static --method rtn --scheme w8a8-int8 --static "${small[@]}"
run w8a8-int8-dynamic --method rtn --scheme w8a8-int8 --dynamic --smooth 0 
run w8a8-int8-dynamic-smooth --method rtn --scheme w8a8-int8 --dynamic "${small[@]}"
run w8a8-int8-gptq-static --method gptq --scheme w8a8-int8 --static "${small[@]}"
python3 "$(dirname "$0")/hash_outputs.py" "$out"
