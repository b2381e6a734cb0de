"""Checkpoints made by llm-compressor from the same f32 SmolLM2 this tool quantizes, for
`scripts/interop/run.sh` to evaluate here and in transformers (the other direction of the
interop check): W4A16 with groups of 64 and 128 (GPTQ), FP8_DYNAMIC (no calibration) and
W8A8 INT8 (SmoothQuant + GPTQ, dynamic per-token activations). Calibration: NSAMPLES
windows of SEQLEN tokens of the Brown calibration split, the text this tool calibrates on.

Own venv (llm-compressor pins torch <= 2.14, transformers <= 5.17, compressed-tensors 0.19):
  python3 -m venv /work/llmcenv && /work/llmcenv/bin/pip install llmcompressor==0.14.0.1
  /work/llmcenv/bin/python scripts/interop/make_peer_checkpoints.py MODEL_DIR CALIB_TXT OUT_DIR [NSAMPLES SEQLEN]
"""

import os
import sys
import time

import torch
from datasets import Dataset
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
from llmcompressor.modifiers.smoothquant import SmoothQuantModifier
from transformers import AutoModelForCausalLM, AutoTokenizer


def calibration(tok, path, nsamples, seqlen):
    ids = tok(open(path, encoding="utf-8").read(), add_special_tokens=False)["input_ids"]
    rows = [ids[i * seqlen:(i + 1) * seqlen] for i in range(nsamples)]
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * seqlen for _ in rows]})


def main():
    model_dir, calib, out = sys.argv[1:4]
    nsamples = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    seqlen = int(sys.argv[5]) if len(sys.argv) > 5 else 512
    tok = AutoTokenizer.from_pretrained(model_dir)
    ds = calibration(tok, calib, nsamples, seqlen)
    recipes = {
        "llmc-w4a16-g64": [GPTQModifier(targets="Linear", ignore=["lm_head"], config_groups={
            "group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                                                            "strategy": "group", "group_size": 64}}})],
        "llmc-w4a16-g128": [GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])],
        "llmc-fp8-dynamic": [QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"])],
        "llmc-w8a8-int8": [SmoothQuantModifier(smoothing_strength=0.8),
                           GPTQModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"])],
    }
    for name, recipe in recipes.items():
        dest = os.path.join(out, name)
        if os.path.exists(dest):
            print(f"{dest}: exists, kept")
            continue
        t0 = time.time()
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        try:
            oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length=seqlen,
                    num_calibration_samples=nsamples)
            model.save_pretrained(dest, save_compressed=True)
            tok.save_pretrained(dest)
            print(f"{dest}: made in {time.time() - t0:.0f} s")
        except Exception as e:  # a refusal is a result too (g128 on 576 columns)
            print(f"{dest}: llm-compressor refused: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
