"""Logits of a checkpoint in transformers (+ compressed-tensors, or GPTQModel on PYTHONPATH
for the gptq / awq layouts) against this tool's for the same tokens: prints the largest
|difference| relative to the largest |logit|.

  cargo run --release --example dump_logits -- DIR TOKENS OURS     # TOKENS: u32 LE
  /work/refenv/bin/python scripts/interop/compare_logits.py DIR TOKENS OURS
"""

import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main():
    model_dir, tokens_path, ours_path = sys.argv[1:4]
    tokens = np.fromfile(tokens_path, dtype="<u4").astype(np.int64)
    # Eager attention: transformers 5.17 runs gemma2 through SDPA by default, which drops its
    # attention soft-capping (0.32 of the largest logit on the gemma2 fixture); 5.24 refuses SDPA.
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = model(torch.from_numpy(tokens)[None]).logits[0].float().numpy()
    ours = np.fromfile(ours_path, dtype="<f4").reshape(theirs.shape)
    err = np.abs(ours - theirs).max() / np.abs(theirs).max()
    print(f"{model_dir}: max |ours - transformers| / max |logit| = {err:.3e}")


if __name__ == "__main__":
    main()
