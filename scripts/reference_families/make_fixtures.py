"""Tiny random-weight models of each decoder family, with the logits transformers computes.

Each model has the config keys of a published model of its family (the values that change
the computation: RoPE scaling, biases, q/k norms, sliding windows, fused projections,
head_dim), shrunk to 2 blocks and small widths. Weights are random with unit-scale
activations (std 1/sqrt(fan_in), norm weights around 1, biases std 0.1), so every part of
the block moves the logits. Written to tests/fixtures/families/<name>/:

  config.json, tokenizer.json, model.safetensors (or shards + index), reference.safetensors
  (`tokens` [SEQ] int32 and `logits` [SEQ, vocab] f32, transformers in f32).

Tokenizers are trained here with the `tokenizers` library on a public-domain text in each
family's scheme (byte-level BPE with the GPT-4-style split for llama3/qwen, a
SentencePiece-style Metaspace BPE for mistral/phi3/gemma): real hub tokenizer files are not
available offline and would not fit a 384-token vocabulary.

Run in the venv of scripts/reference_gptq/setup_env.sh:
  /work/refenv/bin/python scripts/reference_families/make_fixtures.py
"""

import copy
import json
import math
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "families")
VOCAB = 384
SEQ = 40

# Small widths shared by every family; each entry adds its family's own keys.
BASE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": VOCAB,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "use_cache": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

FAMILIES = {
    # Llama-3.2-1B: tied head, llama3 RoPE scaling (factor 32), rope_theta 5e5, head_dim given.
    "llama3": dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        head_dim=16,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        pretraining_tp=1,
        dtype="bfloat16",
    ),
    # A llama with every bias transformers allows and linear RoPE scaling, untied; no
    # grouped-query attention, so AWQ also scales v -> o (through v's bias).
    "llama_bias_linear": dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        num_key_value_heads=4,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        rope_scaling={"type": "linear", "factor": 4.0},
        tie_word_embeddings=False,
        attention_bias=True,
        mlp_bias=True,
        dtype="float32",
    ),
    # Qwen2.5-7B-Instruct with the YaRN setting its card gives (factor 4), q/k/v biases.
    "qwen2": dict(
        model_type="qwen2",
        architectures=["Qwen2ForCausalLM"],
        max_position_embeddings=131072,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        rope_scaling={"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"},
        sliding_window=131072,
        use_sliding_window=False,
        max_window_layers=28,
        tie_word_embeddings=True,
        attention_dropout=0.0,
        dtype="bfloat16",
    ),
    # Qwen3-0.6B: per-head q/k RMSNorm, head_dim 32 != hidden / heads (16), no biases.
    "qwen3": dict(
        model_type="qwen3",
        architectures=["Qwen3ForCausalLM"],
        head_dim=32,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        rope_scaling=None,
        attention_bias=False,
        sliding_window=None,
        use_sliding_window=False,
        max_window_layers=28,
        tie_word_embeddings=True,
        dtype="float16",
        shards=2,
    ),
    # Mistral-7B-v0.1: a sliding window (4096 there; 16 here so a 40-token sequence uses it).
    "mistral": dict(
        model_type="mistral",
        architectures=["MistralForCausalLM"],
        max_position_embeddings=32768,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        sliding_window=16,
        tie_word_embeddings=False,
        dtype="bfloat16",
    ),
    # Phi-3.5-mini / Phi-4-mini: fused qkv_proj and gate_up_proj, longrope with short and long
    # factors, partial rotary (Phi-4-mini: 0.75), a sliding window (2047 there; 24 here).
    "phi3": dict(
        model_type="phi3",
        architectures=["Phi3ForCausalLM"],
        num_key_value_heads=4,
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        partial_rotary_factor=0.75,
        rope_scaling={
            "type": "longrope",
            "short_factor": [1.0, 1.05, 1.1, 1.3, 1.9, 2.8],
            "long_factor": [1.0, 1.2, 1.8, 3.5, 9.0, 21.0],
        },
        sliding_window=24,
        embd_pdrop=0.0,
        resid_pdrop=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        pad_token_id=0,
        dtype="bfloat16",
    ),
    # Gemma-2-2B: GeGLU (tanh GELU), (1 + w) RMSNorms before and after attention and MLP,
    # the sqrt(hidden) embedding scale, tied head, head_dim 32 != hidden / heads (16),
    # query_pre_attn_scalar (256 there; 24 here so it is not head_dim), attention and final
    # soft-capping (50 and 30 there; 4 and 5 here, so that they bend this tiny model's
    # scores and logits), alternating sliding windows (4096 there; 16 here), q/k/v/o biases
    # off as there; f32 as Google stores it.
    "gemma2": dict(
        model_type="gemma2",
        architectures=["Gemma2ForCausalLM"],
        hidden_act="gelu_pytorch_tanh",
        hidden_activation="gelu_pytorch_tanh",
        head_dim=32,
        max_position_embeddings=8192,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        query_pre_attn_scalar=24,
        attn_logit_softcapping=4.0,
        final_logit_softcapping=5.0,
        sliding_window=16,
        attention_bias=False,
        attention_dropout=0.0,
        cache_implementation="hybrid",
        tie_word_embeddings=True,
        pad_token_id=0,
        dtype="float32",
    ),
    # Gemma-3-4B's text model as the hub writes it (`gemma3_text`, Gemma3ForCausalLM): gemma2's
    # block with (1 + w) q/k norms and no soft-capping, rope_theta 1e6 with linear scaling
    # (factor 8) on full blocks and rope_local_base_freq 1e4 on sliding ones; one block in
    # sliding_window_pattern (6 there; 2 here, so both kinds appear in 2 blocks) is full.
    "gemma3": dict(
        model_type="gemma3_text",
        architectures=["Gemma3ForCausalLM"],
        hidden_act=None,  # not in Gemma 3's config.json
        hidden_activation="gelu_pytorch_tanh",
        head_dim=32,
        max_position_embeddings=131072,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        rope_local_base_freq=10000.0,
        rope_scaling={"rope_type": "linear", "factor": 8.0},
        query_pre_attn_scalar=24,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        sliding_window=16,
        sliding_window_pattern=2,
        attention_bias=False,
        attention_dropout=0.0,
        cache_implementation="hybrid",
        tie_word_embeddings=True,
        pad_token_id=0,
        dtype="bfloat16",
    ),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def training_text():
    import this  # noqa: F401  (the Zen of Python, public domain), plus the license text
    import codecs

    zen = codecs.decode(this.s, "rot13")
    return [zen] * 4 + [open(os.__file__).read()[:20000]]


def make_tokenizer(scheme):
    if scheme == "bytelevel":
        tok = Tokenizer(models.BPE())
        split = Regex(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(split, behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(training_text(), trainer)
    assert tok.get_vocab_size() <= VOCAB, tok.get_vocab_size()
    return tok


def randomize(model, gen, norm_center):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(norm_center + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
            else:
                raise SystemExit(f"unexpected parameter {name} {tuple(p.shape)}")


def write(name, spec):
    spec = dict(spec)
    dtype = spec.pop("dtype")
    shards = spec.pop("shards", 1)
    cfg_dict = {k: v for k, v in {**BASE, **spec, "torch_dtype": dtype}.items() if v is not None or k != "hidden_act"}
    out = os.path.join(OUT, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    cfg = AutoConfig.for_model(**copy.deepcopy({k: v for k, v in cfg_dict.items() if k != "torch_dtype"}))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    # Gemma's RMSNorm multiplies by (1 + w): its weights are centred on 0.
    randomize(model, gen, 0.0 if spec["model_type"].startswith("gemma") else 1.0)
    # Round the parameters (not the RoPE buffers) to the stored dtype, so transformers (in
    # f32, as from_pretrained(dtype=float32) runs a bf16 checkpoint) and this tool read the same values.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(DTYPES[dtype]).to(torch.float32))
    model = model.eval()
    state = {k: v.to(DTYPES[dtype]).contiguous() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    names = sorted(state)
    if shards == 1:
        save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    else:
        per = math.ceil(len(names) / shards)
        weight_map = {}
        total = 0
        for i in range(shards):
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: state[k] for k in names[i * per : (i + 1) * per]}
            save_file(part, os.path.join(out, file), metadata={"format": "pt"})
            for k, v in part.items():
                weight_map[k] = file
                total += v.numel() * v.element_size()
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2)
    scheme = "metaspace" if spec["model_type"] in ("mistral", "phi3", "gemma2", "gemma3_text") else "bytelevel"
    make_tokenizer(scheme).save(os.path.join(out, "tokenizer.json"))

    tokens = torch.tensor([(7 * i * i + 3 * i + 5) % VOCAB for i in range(SEQ)], dtype=torch.int64)
    with torch.no_grad():
        logits = model(tokens[None]).logits[0].float()
    save_file(
        {"tokens": tokens.to(torch.int32), "logits": logits.contiguous()},
        os.path.join(out, "reference.safetensors"),
        metadata={"transformers": __import__("transformers").__version__, "torch": torch.__version__},
    )
    print(f"{name}: {dtype}, {shards} shard(s), logits std {logits.std():.3f}")


def main():
    only = sys.argv[1:]
    for name, spec in FAMILIES.items():
        if not only or name in only:
            write(name, spec)


if __name__ == "__main__":
    main()
