"""Check this tool's GGUF blocks against an independent dequantizer: llama.cpp's gguf-py
(`gguf.quants.dequantize`, numpy ports of ggml's dequantize_row_*).

    PYTHONPATH=llama.cpp/gguf-py python scripts/interop/check_gguf_dequant.py FILE.gguf DIR

FILE.gguf is written by `quantize --gguf-type ...`; DIR is `quantize convert FILE.gguf -o DIR`
(this tool's reader). Every block linear except q/k (whose rows convert un-permutes) must
dequantize to the same f32 values in both; prints the count per ggml type, exits 1 on any
difference. Needs numpy, safetensors and gguf-py (no torch).
"""
import sys

import gguf
import numpy as np
from gguf import quants
from safetensors.numpy import load_file

HF = {"attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj",
      "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def main(path, converted):
    reader = gguf.GGUFReader(path)
    st = load_file(f"{converted}/model.safetensors")
    counts, bad = {}, 0
    for t in reader.tensors:
        parts = t.name.split(".")
        if len(parts) != 4 or parts[2] not in HF:
            continue
        ours = st[f"model.layers.{parts[1]}.{HF[parts[2]]}.weight"]
        ref = quants.dequantize(t.data, t.tensor_type).reshape(ours.shape).astype(np.float32)
        same = np.array_equal(ref, ours)
        counts.setdefault(t.tensor_type.name, [0, 0])[0 if same else 1] += 1
        bad += not same
    for ty, (ok, diff) in sorted(counts.items()):
        print(f"{ty}: {ok} equal, {diff} different")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
