#!/usr/bin/env bash
# Every format this tool writes, loaded by the real clients and scored there and here on
# the same windows; and llm-compressor's checkpoints scored here and in transformers.
# Results: $O/interop.json (the rows of docs/INTEROP.md). Not in CI (needs torch).
#
#   scripts/interop/run.sh [OUT] [WINDOWS]
#
# Needs (see docs/INTEROP.md "Running it"): /work/refenv (scripts/reference_gptq/setup_env.sh,
# then pip install compressed-tensors), GPTQModel on the CPU in /work/gptqm_site, and
# /work/llmcenv with llm-compressor (scripts/interop/make_peer_checkpoints.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
default_out=out/interop
source scripts/bench_setup.sh
W=${2:-40}
T=$A/brown/brown_heldout.txt
C=$A/brown/brown_calib.txt
CAL=(--calib "$C" --nsamples 32 --seqlen 512)
REF=${REFENV:-/work/refenv}/bin/python
LLMC=${LLMCENV:-/work/llmcenv}/bin/python
GPTQM=${GPTQMODEL_SITE:-/work/gptqm_site}

# This tool's checkpoints (RTN where the method does not matter to the layout).
mk() { local name=$1; shift; [ -d "$O/$name" ] || $Q out/smollm2 -o "$O/$name" "$@" >/dev/null 2>"$O/$name.log"; }
mk ct-int4-g128-rtn --method rtn --format compressed-tensors
mk ct-int4-g64-gptq-actorder-static --method gptq --group-size 64 --format compressed-tensors "${CAL[@]}"
mk ct-int8-channel-rtn --method rtn --bits 8 --per-channel --sym --format compressed-tensors
mk ct-fp8-rtn --method fp8
mk w8a8-int8-dynamic --scheme w8a8-int8 --dynamic --smooth 0
mk w8a8-int8-static --scheme w8a8-int8 --static "${CAL[@]}"
mk w8a8-fp8-dynamic --scheme w8a8-fp8 --dynamic
mk w8a8-fp8-static --scheme w8a8-fp8 --static "${CAL[@]}"
mk gptq-int4-g128-gptq-actorder --method gptq --format gptq "${CAL[@]}"
# Act-order with a g_idx per column: gptq only (compressed-tensors 0.19 removed actorder "group").
mk gptq-int4-g64-gptq-actorder-gidx --method gptq --group-size 64 --no-static-groups --format gptq "${CAL[@]}"
mk gptq-int4-g64-rtn --method rtn --group-size 64 --format gptq
mk awq-int4-g64-rtn --method rtn --group-size 64 --format awq
OURS_CT=(ct-int4-g128-rtn ct-int4-g64-gptq-actorder-static ct-int8-channel-rtn ct-fp8-rtn
  w8a8-int8-dynamic w8a8-int8-static w8a8-fp8-dynamic w8a8-fp8-static)
OURS_GPTQM=(gptq-int4-g128-gptq-actorder gptq-int4-g64-gptq-actorder-gidx gptq-int4-g64-rtn awq-int4-g64-rtn)

# llm-compressor's checkpoints from the same model and calibration text.
$LLMC scripts/interop/make_peer_checkpoints.py out/smollm2 "$C" "$O/peers" 64 512 >"$O/peers.log" 2>&1
GPTQMODEL_CPU_WORKERS=2 PYTHONPATH=$GPTQM $REF scripts/interop/make_gptqmodel_checkpoint.py out/smollm2 "$C" "$O/peers/gptqmodel-int4-g64" 16 512 >"$O/peers-gptqmodel.log" 2>&1
PEERS=()
for p in "$O"/peers/llmc-*; do [ -f "$p/config.json" ] && PEERS+=("$p"); done

# Here: every checkpoint in one pass over the windows (vLLM's activation rounding, the
# default, and compressed-tensors', for the W8A8 ones). Like the checkpoints, a result
# already in $O is kept (delete it to measure again).
here() { [ -f "$2" ] && return; $Q eval --model "${@:3}" --text "$T" --protocol llama.cpp --ctx 512 --max-windows "$W" --act-runtime "$1" --json "$2" >/dev/null 2>&1; }
ALL=(out/smollm2)
for n in "${OURS_CT[@]}" "${OURS_GPTQM[@]}"; do ALL+=("$O/$n"); done
here vllm "$O/here-vllm.json" "${ALL[@]}" "${PEERS[@]}"
here vllm "$O/here-gptqmodel-made.json" "$O/peers/gptqmodel-int4-g64"
W8A8=("$O/w8a8-int8-dynamic" "$O/w8a8-int8-static" "$O/w8a8-fp8-dynamic" "$O/w8a8-fp8-static")
for p in "${PEERS[@]}"; do case $p in *w8a8*|*fp8-dynamic*) W8A8+=("$p");; esac; done
here compressed-tensors "$O/here-ct.json" "${W8A8[@]}"

# There: transformers + compressed-tensors (llm-compressor's venv: transformers 5.17 +
# compressed-tensors 0.19.0; also transformers 5.24 + compressed-tensors 0.20.1 for the
# asymmetric int4 one), and transformers + optimum + GPTQModel for gptq / awq. The dynamic
# W8A8 ones also with the 1-ulp noise (the floor of agreement under activation rounding).
CT_DIRS=(out/smollm2)
for n in ct-int4-g128-rtn ct-int4-g64-gptq-actorder-static ct-int8-channel-rtn ct-fp8-rtn w8a8-int8-static w8a8-fp8-static; do CT_DIRS+=("$O/$n"); done
[ -f "$O/there-ct.json" ] || $LLMC scripts/interop/perplexity_hf.py "$T" "$W" "${CT_DIRS[@]}" "${PEERS[@]}" --json "$O/there-ct.json" 2>"$O/there-ct.log"
[ -f "$O/there-ct020.json" ] || $REF scripts/interop/perplexity_hf.py "$T" "$W" "$O/ct-int4-g128-rtn" "$O/ct-fp8-rtn" --json "$O/there-ct020.json" 2>"$O/there-ct020.log"
[ -f "$O/there-noise.json" ] || $LLMC scripts/interop/perplexity_hf.py "$T" "$W" "$O/w8a8-int8-dynamic" "$O/w8a8-fp8-dynamic" --noise 3 --json "$O/there-noise.json" 2>"$O/there-noise.log"
GM=()
for n in "${OURS_GPTQM[@]}"; do GM+=("$O/$n"); done
GM+=("$O/peers/gptqmodel-int4-g64")
[ -f "$O/there-gptqmodel.json" ] || PYTHONPATH=$GPTQM $REF scripts/interop/perplexity_hf.py "$T" "$W" "${GM[@]}" --json "$O/there-gptqmodel.json" 2>"$O/there-gptqmodel.log"
$REF scripts/interop/table.py "$O" | tee "$O/interop.md"
