"""Perplexity of checkpoints computed by transformers (with compressed-tensors, or GPTQModel
for the gptq / awq layouts), on the windows `quantize eval --protocol llama.cpp` scores:
the text tokenized without special tokens, consecutive windows of CTX tokens, each scoring
its second half (the predictions of tokens CTX/2+1 .. CTX-1).

  /work/refenv/bin/pip install compressed-tensors          # 0.20.1 when written
  /work/refenv/bin/python scripts/interop/perplexity_hf.py TEXT WINDOWS DIR [DIR ...] \
      [--json OUT] [--noise SEEDS]

`--noise SEEDS`: also score each checkpoint SEEDS more times with every linear's input
multiplied by (1 + 2^-24 · N(0, 1)) before the client quantizes it, i.e. moved by at most
about one f32 ulp: the spread is how much this text's perplexity depends on the last bit
of the arithmetic before activation rounding (W8A8), the floor of any agreement between two
runtimes that do not share every floating-point operation.

GPTQModel (gptq, awq layouts) on the CPU: put it on PYTHONPATH (see scripts/interop/run.sh).
For an FP8 `kv_cache_scheme` use transformers 4.57: 5.24 names the attention's cache
argument `cache`, which compressed-tensors 0.20.1 does not recognize (it then loads k_scale
and v_scale as unexpected keys and runs without KV quantization). Measured with
  pip install --target /tmp/ct_tf457 --no-deps transformers==4.57.1 tokenizers==0.22.1 \
      "huggingface_hub<1.0" accelerate pyyaml requests urllib3 idna certifi charset_normalizer
  PYTHONPATH=/tmp/ct_tf457 /work/refenv/bin/python scripts/interop/perplexity_hf.py ...
"""

import argparse
import importlib
import json
import math
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

CTX = 512


def versions():
    out = {"transformers": transformers.__version__, "torch": torch.__version__}
    for m in ("compressed_tensors", "gptqmodel"):
        try:
            out[m] = importlib.import_module(m).__version__
        except Exception:
            pass
    return out


def perplexity(model, ids, windows, noise=None):
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
    ap = argparse.ArgumentParser()
    ap.add_argument("text")
    ap.add_argument("windows", type=int)
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--json")
    ap.add_argument("--noise", type=int, default=0)
    a = ap.parse_args()
    text = open(a.text, encoding="utf-8").read()
    print(json.dumps(versions()))
    results = []
    for d in a.dirs:
        t0 = time.time()
        tok = AutoTokenizer.from_pretrained(d)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        try:
            model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
        except Exception as e:  # a client refusing a checkpoint is a result: say which and why
            r = {"dir": d, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            print(json.dumps(r), flush=True)
            results.append(r)
            continue
        model.eval()
        ppl, n = perplexity(model, ids, a.windows)
        r = {"dir": d, "perplexity": ppl, "tokens": n, "seconds": round(time.time() - t0, 1), "noise": []}
        if a.noise:
            state = {"gen": None}

            def jitter(mod, args):
                x = args[0]
                return (x * (1 + 2.0 ** -24 * torch.randn(x.shape, generator=state["gen"])),) + args[1:]

            hooks = [m.register_forward_pre_hook(jitter) for n_, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and n_ != "lm_head"]
            for seed in range(1, a.noise + 1):
                state["gen"] = torch.Generator().manual_seed(seed)
                r["noise"].append(perplexity(model, ids, a.windows)[0])
            for h in hooks:
                h.remove()
        print(json.dumps(r), flush=True)
        results.append(r)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"versions": versions(), "windows": a.windows, "ctx": CTX, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
