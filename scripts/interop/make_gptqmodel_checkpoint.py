"""A checkpoint made by GPTQModel (on the CPU) from the same f32 SmolLM2 this tool
quantizes: int4, groups of 64 (128 does not divide SmolLM2's 576 columns), symmetric,
act-order, the gptq layout, calibrated on NSAMPLES windows of SEQLEN tokens of the Brown
calibration split. scripts/interop/run.sh evaluates it here and in transformers.

  GPTQMODEL_CPU_WORKERS=2 PYTHONPATH=/work/gptqm_site /work/refenv/bin/python \
      scripts/interop/make_gptqmodel_checkpoint.py MODEL_DIR CALIB_TXT OUT [NSAMPLES SEQLEN]
"""

import os
import sys
import time

from gptqmodel import GPTQModel, QuantizeConfig
from transformers import AutoTokenizer


def main():
    model_dir, calib, out = sys.argv[1:4]
    nsamples = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    seqlen = int(sys.argv[5]) if len(sys.argv) > 5 else 512
    if os.path.exists(out):
        print(f"{out}: exists, kept")
        return
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(open(calib, encoding="utf-8").read(), add_special_tokens=False)["input_ids"]
    data = [{"input_ids": ids[i * seqlen:(i + 1) * seqlen], "attention_mask": [1] * seqlen} for i in range(nsamples)]
    t0 = time.time()
    cfg = QuantizeConfig(bits=4, group_size=64, sym=True, desc_act=True)
    model = GPTQModel.load(model_dir, cfg, device="cpu")
    model.quantize(data, batch_size=1)
    model.save(out)
    tok.save_pretrained(out)
    print(f"{out}: made in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
