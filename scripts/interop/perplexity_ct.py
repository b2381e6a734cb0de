"""Perplexity of checkpoints this tool wrote, computed by transformers + compressed-tensors,
on the windows `quantize eval --protocol llama.cpp` scores: the text tokenized without
special tokens, consecutive windows of CTX tokens, each scoring its second half (the
predictions of tokens CTX/2+1 .. CTX-1). Checks that compressed-tensors reads a checkpoint
(weights, and an FP8 `kv_cache_scheme` with its k_scale/v_scale) as this tool evaluates it.

  /work/refenv/bin/pip install compressed-tensors          # 0.20.1 when written
  /work/refenv/bin/python scripts/interop/perplexity_ct.py TEXT WINDOWS DIR [DIR ...]

For an FP8 `kv_cache_scheme` use transformers 4.57: 5.24 names the attention's cache
argument `cache`, which compressed-tensors 0.20.1 does not recognize (it then loads k_scale
and v_scale as unexpected keys and runs without KV quantization). Measured with
  pip install --target /tmp/ct_tf457 --no-deps transformers==4.57.1 tokenizers==0.22.1 \
      "huggingface_hub<1.0" accelerate pyyaml requests urllib3 idna certifi charset_normalizer
  PYTHONPATH=/tmp/ct_tf457 /work/refenv/bin/python scripts/interop/perplexity_ct.py ...
"""

import math
import sys

import compressed_tensors
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

CTX = 512


def perplexity(model_dir, text, windows):
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    nll, count = 0.0, 0
    first = CTX // 2
    with torch.no_grad():
        for w in range(windows):
            x = torch.tensor([ids[w * CTX:(w + 1) * CTX]])
            # use_cache: the KV cache (and compressed-tensors' hooks on it) is in the path.
            logits = model(x, use_cache=True).logits[0].double()
            logp = torch.log_softmax(logits[first:CTX - 1], dim=-1)
            target = x[0, first + 1:CTX]
            nll -= logp.gather(1, target[:, None]).sum().item()
            count += CTX - 1 - first
    return math.exp(nll / count), count


def main():
    text_path, windows, dirs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    text = open(text_path, encoding="utf-8").read()
    print(f"transformers {transformers.__version__}, compressed-tensors {compressed_tensors.__version__}, torch {torch.__version__}")
    for d in dirs:
        ppl, n = perplexity(d, text, windows)
        print(f"{d}: perplexity {ppl:.4f} over {n} tokens")


if __name__ == "__main__":
    main()
