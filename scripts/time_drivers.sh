#!/usr/bin/env bash
# Wall time and output identity of two builds on full SmolLM2 (issue 14): GPTQ int4 g128
# asym act-order static-groups MSE on 128 x 512 calibration windows, and AWQ+GPTQ int4
# g128 on 8 x 512, run alternately A, B, A, B... REPEATS times (median in the log).
# Usage: scripts/time_drivers.sh BIN_A BIN_B MODEL_DIR OUT_DIR [REPEATS]
set -euo pipefail
a=$1 b=$2 model=$3 out=$4 repeats=${5:-1}
calib=${QUANTIZE_ASSETS:-$(cd "$(dirname "$0")/.." && pwd)/.cache/assets}/brown/brown_calib.txt
gptq=(--method gptq --bits 4 --group-size 128 --asym --act-order --static-groups --mse --nsamples 128 --seqlen 512 --calib "$calib" --)
awqgptq=(--method awq+gptq --bits 4 --group-size 128 --asym --act-order --nsamples 8 --seqlen 512 --calib "$calib" --)
mkdir -p "$out"
for r in $(seq 1 "$repeats"); do
  for cfg in gptq awqgptq; do
    for side in a b; do
      bin=${!side}; dir=$out/$cfg-$side-$r
      declare -n args=$cfg
      s=$(date +%s.%N)
      "$bin" "$model" -o "$dir" "${args[@]}" >/dev/null 2>"$dir.log"
      echo "$cfg $side run $r: $(echo "$(date +%s.%N) - $s" | bc) s"
    done
  done
done
python3 "$(dirname "$0")/hash_outputs.py" "$out"
