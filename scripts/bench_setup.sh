# Sourced by the bench scripts (from the repository root): the pinned assets, the release
# binary (or $QUANTIZE), the converted f32 SmolLM2 in out/smollm2, and the output folder.
# Sets Q (the binary), A (the asset cache) and O (the output folder: $1, or $default_out).
scripts/fetch_assets.sh >/dev/null
if [ -z "${QUANTIZE:-}" ]; then cargo build --release -q; fi
Q=${QUANTIZE:-target/release/quantize}
A=${QUANTIZE_ASSETS:-.cache/assets}
O=${1:-$default_out}
mkdir -p "$O"
[ -d out/smollm2 ] || $Q convert "$A/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" -o out/smollm2
