#!/usr/bin/env bash
# The project's test command (README, .ci/run): fetch the pinned assets (idempotent),
# then run every test in release mode (the real-model tests need optimized code).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_assets.sh
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
cargo test --release --all-targets "$@"
