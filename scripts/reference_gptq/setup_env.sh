#!/usr/bin/env bash
# Creates the venv for run_ref.py (reference GPTQ, PyTorch on CPU).
# download.pytorch.org is not reachable here, so torch comes from PyPI: its Linux x86_64
# wheel is a CUDA build whose libtorch_cuda.so is linked against the nvidia-* libraries,
# so `--no-deps` torch does not import; the full dependency set (~5.3 GB venv) is needed.
# It runs on the CPU all the same (torch.cuda.is_available() is False).
set -euo pipefail
VENV=${1:-/work/refenv}
python3 -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip
"$VENV/bin/pip" install torch==2.15.0
"$VENV/bin/pip" install numpy==2.4.6 transformers==5.24.0 safetensors==0.8.0 tokenizers==0.23.3
"$VENV/bin/python" -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())"
