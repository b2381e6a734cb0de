#!/usr/bin/env bash
# Fault injection on real runs (issue 15, docs/RELIABILITY.md): signals while computing
# and while writing, a full disk, a read-only output, a read-only input, two runs on one
# output, broken shards and index. Prints one Markdown table row per case, PASS or FAIL.
# Needs root (tmpfs mounts) and the converted model. Usage:
#   scripts/fault_injection.sh [BIN] [MODEL_DIR] [GGUF]
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/release/quantize}
model=${2:-$root/target/test-models/smollm2-f32}
gguf=${3:-${QUANTIZE_ASSETS:-$root/.cache/assets}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
calib=${QUANTIZE_ASSETS:-$root/.cache/assets}/brown/brown_calib.txt
work=$(mktemp -d /tmp/fault-XXXXXX)
trap 'umount -q "$work"/mnt-* 2>/dev/null; rm -rf "$work"' EXIT
small=(--nsamples 8 --seqlen 128 --calib "$calib" --)

row() { # case, expectation, verdict(0=pass), detail
  local v=PASS; [ "$3" = 0 ] || v=FAIL
  printf '| %s | %s | %s | %s |\n' "$1" "$2" "$v" "$4"
}
leftovers() { find "$1" -maxdepth 1 -name '.*.tmp-*' | wc -l; }
wait_for() { # path pattern, seconds: wait until a glob matches
  local t=0; until compgen -G "$1" >/dev/null; do sleep 0.05; t=$((t + 1)); [ $t -gt $(($2 * 20)) ] && return 1; done
}

echo "| case | expected | result | detail |"
echo "|---|---|---|---|"

# 1. SIGINT while GPTQ computes.
d=$work/c1; mkdir "$d"
"$bin" --method gptq "$model" -o "$d/out" "${small[@]}" 2>"$d/log" >/dev/null & p=$!
sleep 4; kill -INT $p; wait $p; rc=$?
[ $rc = 130 ] && [ ! -e "$d/out" ] && [ "$(leftovers "$d")" = 0 ]; row "SIGINT while GPTQ computes" "exit 130, nothing at -o" $? "exit $rc; $(tail -1 "$d/log")"

# 2-3. SIGTERM / SIGINT while convert writes model.safetensors.
for sig in TERM INT; do
  d=$work/c-$sig; mkdir "$d"
  "$bin" convert "$gguf" -o "$d/out" 2>"$d/log" >/dev/null & p=$!
  wait_for "$d/.out.tmp-*/model.safetensors" 60; kill -$sig $p; wait $p; rc=$?
  [ $rc = 130 ] && [ ! -e "$d/out" ] && [ "$(leftovers "$d")" = 0 ]
  row "SIG$sig while convert writes" "exit 130, temporary removed" $? "exit $rc; $(tail -1 "$d/log")"
done

# 4. SIGKILL while writing: the temporary stays; the next run removes it.
d=$work/c4; mkdir "$d"
"$bin" convert "$gguf" -o "$d/out" 2>"$d/log" >/dev/null & p=$!
wait_for "$d/.out.tmp-*/model.safetensors" 60; kill -KILL $p; wait $p 2>/dev/null
left=$(leftovers "$d")
"$bin" convert "$gguf" -o "$d/out2" 2>"$d/log2" >/dev/null; rc=$?
[ "$left" = 1 ] && [ $rc = 0 ] && [ "$(leftovers "$d")" = 0 ] && [ ! -e "$d/out" ]
row "SIGKILL while convert writes, then a new run" "next run removes the dead run's temporary" $? "left $left; $(grep -m1 removed "$d/log2")"

# 5. Full disk (50 MB tmpfs; convert writes 538 MB).
m=$work/mnt-full; mkdir "$m"; mount -t tmpfs -o size=50m tmpfs "$m"
"$bin" convert "$gguf" -o "$m/out" 2>"$work/log5" >/dev/null; rc=$?
n=$(grep -o "No space left on device" "$work/log5" | wc -l)
[ $rc = 1 ] && [ ! -e "$m/out" ] && [ "$(leftovers "$m")" = 0 ] && [ "$n" = 1 ]
row "full disk during convert" "exit 1, error said once, nothing left" $? "$(tail -1 "$work/log5")"
umount "$m"

# 6. Read-only output location: refused before any work.
m=$work/mnt-ro; mkdir "$m"; mount -t tmpfs -o size=10m,ro tmpfs "$m"
s=$(date +%s)
"$bin" --method gptq "$model" -o "$m/out" "${small[@]}" 2>"$work/log6" >/dev/null; rc=$?
e=$(( $(date +%s) - s ))
[ $rc = 1 ] && ! grep -q "windows x" "$work/log6" && [ $e -lt 10 ]
row "read-only output (GPTQ)" "refused before calibration" $? "${e} s; $(tail -1 "$work/log6")"
umount "$m"

# 7. Read-only input: a run reads, never writes, a read-only model directory.
m=$work/mnt-in; mkdir "$m"; mount --bind -o ro "$model" "$m"
before=$(sha256sum "$model"/* | sha256sum)
"$bin" --method rtn "$m" -o "$work/o7" 2>"$work/log7" >/dev/null; rc=$?
after=$(sha256sum "$model"/* | sha256sum)
[ $rc = 0 ] && [ "$before" = "$after" ]
row "read-only input (RTN)" "runs; input bytes unchanged" $? "exit $rc"
umount "$m"

# 8. Two runs on one output at once: one wins whole, the other is refused.
d=$work/c8; mkdir "$d"
"$bin" --method rtn "$model" -o "$d/out" 2>"$d/a" >/dev/null & pa=$!
"$bin" --method rtn "$model" -o "$d/out" 2>"$d/b" >/dev/null & pb=$!
wait $pa; ra=$?; wait $pb; rb=$?
ok=$(( (ra == 0) + (rb == 0) ))
[ $ok = 1 ] && grep -q "already exists" "$d/a" "$d/b" && [ "$(leftovers "$d")" = 0 ] \
  && "$bin" eval --model "$d/out" --text "$calib" --max-windows 1 >/dev/null 2>&1
row "two runs on one output" "one completes (and evaluates), one is refused" $? "exits $ra, $rb"

# 9-11. Broken shards and index.
shard_dir() { # name: a sharded copy of the model (two files + index)
  local s=$work/$1; mkdir "$s"; cp "$model"/*.json "$s"/
  python3 - "$model/model.safetensors" "$s" <<'PY'
import json, struct, sys
src, out = sys.argv[1], sys.argv[2]
b = open(src, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n]); data = b[8 + n:]
h.pop('__metadata__', None); names = sorted(h)
wm = {}
for i, part in enumerate((names[:len(names) // 2], names[len(names) // 2:])):
    f = f"model-0000{i + 1}-of-00002.safetensors"; hdr = {}; blob = b''
    for k in part:
        a, e = h[k]['data_offsets']; hdr[k] = dict(h[k], data_offsets=[len(blob), len(blob) + e - a]); blob += data[a:e]; wm[k] = f
    j = json.dumps(hdr).encode(); j += b' ' * (-len(j) % 8)
    open(f"{out}/{f}", 'wb').write(struct.pack('<Q', len(j)) + j + blob)
json.dump({"metadata": {}, "weight_map": wm}, open(f"{out}/model.safetensors.index.json", 'w'))
PY
  echo "$s"
}
s=$(shard_dir ok9); "$bin" --method rtn "$s" -o "$work/o9" 2>"$work/log9" >/dev/null; rc=$?
row "sharded model (control)" "quantizes" $([ $rc = 0 ]; echo $?) "exit $rc"
s=$(shard_dir trunc); truncate -s -1000 "$s/model-00002-of-00002.safetensors"
"$bin" --method rtn "$s" -o "$work/o10" 2>"$work/log10" >/dev/null; rc=$?
[ $rc = 1 ] && [ ! -e "$work/o10" ] && grep -q "model-00002-of-00002" "$work/log10"
row "truncated shard" "error naming the shard" $? "$(tail -1 "$work/log10" | cut -c1-160)"
s=$(shard_dir wrongmap)
python3 -c "import json,sys; p=sys.argv[1]; j=json.load(open(p)); k=sorted(j['weight_map'])[0]; j['weight_map'][k]='model-00002-of-00002.safetensors'; j['weight_map']['model.layers.99.ghost.weight']='model-00001-of-00002.safetensors'; json.dump(j,open(p,'w'))" "$s/model.safetensors.index.json"
"$bin" --method rtn "$s" -o "$work/o11" 2>"$work/log11" >/dev/null; rc=$?
[ $rc = 1 ] && [ ! -e "$work/o11" ] && grep -q "weight_map puts" "$work/log11"
row "index.json naming the wrong shard" "error naming tensor and shards" $? "$(tail -1 "$work/log11" | cut -c1-160)"
s=$(shard_dir missing); rm "$s/model-00001-of-00002.safetensors"
"$bin" --method rtn "$s" -o "$work/o12" 2>"$work/log12" >/dev/null; rc=$?
[ $rc = 1 ] && grep -q "model-00001-of-00002" "$work/log12" && [ "$(grep -o 'No such file or directory' "$work/log12" | wc -l)" = 1 ]
row "index.json naming a missing shard" "error naming the shard, said once" $? "$(tail -1 "$work/log12" | cut -c1-160)"
