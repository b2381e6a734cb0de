"""Greedy generations of SmolLM2-135M-Instruct by transformers, for tests/generate.rs.

The model is this tool's f32 conversion of the pinned GGUF (the one every test uses):
  target/release/quantize convert .cache/assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf -o DIR
transformers loads that directory as it is (LlamaForCausalLM, f32, eager attention) and runs
`generate(do_sample=False, max_new_tokens=64)` with end-of-sequence stopping off, so every
prompt gives 64 tokens. Plain prompts are tokenized as `tokenizer(prompt)`; the chat prompt
through `apply_chat_template(add_generation_prompt=True)`. Written to
tests/fixtures/generate/greedy.json: prompt text, prompt ids, generated ids, decoded text.

Run in the venv of scripts/reference_gptq/setup_env.sh:
  /work/refenv/bin/python scripts/reference_generate/make_fixtures.py DIR
"""

import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "generate", "greedy.json")
NEW_TOKENS = 64

PROMPTS = [
    {"prompt": "The capital of France is", "chat": False},
    {"prompt": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n", "chat": False},
    {"prompt": "Once upon a time, in a small village by the sea,", "chat": False},
    {"prompt": "Explain in two sentences why the sky is blue.", "chat": True},
]


def main(model_dir):
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    cases = []
    for p in PROMPTS:
        if p["chat"]:
            text = tok.apply_chat_template([{"role": "user", "content": p["prompt"]}], tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            text = p["prompt"]
            ids = tok(text)["input_ids"]
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                eos_token_id=None,
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
            )
        new = out[0, len(ids):].tolist()
        assert len(new) == NEW_TOKENS, len(new)
        cases.append({**p, "rendered": text, "prompt_ids": ids, "generated_ids": new, "text": tok.decode(new)})
        print(repr(p["prompt"][:40]), "->", repr(tok.decode(new)[:80]))
    doc = {
        "made_by": "scripts/reference_generate/make_fixtures.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf converted to f32 by `quantize convert`",
        "new_tokens": NEW_TOKENS,
        "cases": cases,
    }
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
