#!/usr/bin/env python3
"""Re-run of the reference GPTQ (IST-DASLab/gptq, the authors' code) on SmolLM2-135M,
to measure its wall time on the same machine as our Rust tool.

What it does (mirrors `llama_sequential` of upstream llama.py with --true-sequential):
  * loads out/smollm2 as transformers LlamaForCausalLM in f32 (load time not counted);
  * tokenizes .cache/assets/brown/brown_calib.txt once with tokenizer.json (no BOS) and
    draws --nsamples windows of --seqlen tokens like gptq's get_loaders:
    random.seed(seed); i = random.randint(0, len(ids) - seqlen - 1); ids[i:i+seqlen];
  * captures block-0 inputs with the Catcher pattern (model run with use_cache=False,
    every window on its own: no KV cache shared across windows);
  * for each block, true-sequential groups [k,v,q], [o], [up,gate], [down]: add_batch
    hooks on the group's linears, all windows through the block one at a time,
    fasterquant(blocksize=128, percdamp, groupsize, actorder) for each, weights replaced;
    then the block is run again to produce the next block's inputs;
  * prints the wall time of the quantization (Catcher pass + all blocks, the span that
    upstream llama.py times) and the summed `error` (GPTQ Losses) over all layers.
Defaults: int4, asymmetric, per-channel quantizer with groupsize 128, damp 0.01,
no act-order, 2 threads. `--save DIR` writes the quantized model (dequantized f32, the
source directory's layout) so that `quantize eval --model DIR` scores it.

Setup (venv at /work/refenv): bash scripts/reference_gptq/setup_env.sh
  (python3 -m venv /work/refenv; pip install torch==2.15.0 -- the PyPI CUDA build, which
  needs its nvidia-* deps to import but runs on CPU -- then numpy transformers
  safetensors tokenizers).

Full job (about 8 min; run from the repository root):
  /work/refenv/bin/python scripts/reference_gptq/run_ref.py --nsamples 128 --seqlen 512 --threads 2
Tiny validation:
  /work/refenv/bin/python scripts/reference_gptq/run_ref.py --nsamples 4 --seqlen 128 --nblocks 2
"""

import argparse
import os
import random
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gptq_ref import GPTQ, Quantizer, find_layers  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))


def get_llama(path):
    def skip(*args, **kwargs):
        pass
    torch.nn.init.kaiming_uniform_ = skip
    torch.nn.init.uniform_ = skip
    torch.nn.init.normal_ = skip
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model


def get_calib(model_dir, calib_path, nsamples, seqlen, seed):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(model_dir, 'tokenizer.json'))
    with open(calib_path, 'r', encoding='utf-8') as f:
        text = f.read()
    ids = tok.encode(text, add_special_tokens=False).ids
    enc = torch.tensor([ids], dtype=torch.long)
    random.seed(seed)
    loader = []
    for _ in range(nsamples):
        i = random.randint(0, enc.shape[1] - seqlen - 1)
        j = i + seqlen
        inp = enc[:, i:j]
        tar = inp.clone()
        tar[:, :-1] = -100
        loader.append((inp, tar))
    return loader, enc.shape[1]


def block_out(out):
    # transformers >= 5 returns a tensor from LlamaDecoderLayer, older ones a tuple.
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def llama_sequential(model, dataloader, args):
    dev = torch.device('cpu')
    print('Starting ...')

    use_cache = model.config.use_cache
    model.config.use_cache = False
    layers = model.model.layers

    dtype = next(iter(model.parameters())).dtype
    inps = torch.zeros(
        (args.nsamples, args.seqlen, model.config.hidden_size), dtype=dtype, device=dev
    )
    cache = {'i': 0, 'kwargs': None}

    class Catcher(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, inp, **kwargs):
            inps[cache['i']] = inp
            cache['i'] += 1
            cache['kwargs'] = kwargs
            raise ValueError

    layers[0] = Catcher(layers[0])
    for batch in dataloader:
        try:
            model(batch[0].to(dev), use_cache=False)
        except ValueError:
            pass
    layers[0] = layers[0].module
    assert cache['i'] == args.nsamples, cache['i']

    outs = torch.zeros_like(inps)
    kw = cache['kwargs']
    # What the current LlamaDecoderLayer needs; the same for every window since all
    # windows have the same length (llama.py likewise captures attention_mask once).
    layer_kwargs = {
        'attention_mask': kw.get('attention_mask'),
        'position_ids': kw.get('position_ids'),
        'position_embeddings': kw.get('position_embeddings'),
        'use_cache': False,
    }
    if layer_kwargs['position_embeddings'] is None:  # older transformers: compute it
        pos = torch.arange(args.seqlen, device=dev).unsqueeze(0)
        layer_kwargs['position_ids'] = pos
        layer_kwargs['position_embeddings'] = model.model.rotary_emb(inps[:1], pos)
    am = layer_kwargs['attention_mask']
    print('Ready. attn_implementation=%s attention_mask=%s' % (
        getattr(model.config, '_attn_implementation', None),
        None if am is None else tuple(am.shape)))

    total_error = 0.0
    nlayers = 0
    nblocks = len(layers) if args.nblocks is None else min(args.nblocks, len(layers))
    for i in range(nblocks):
        layer = layers[i].to(dev)
        full = find_layers(layer)

        sequential = [
            ['self_attn.k_proj', 'self_attn.v_proj', 'self_attn.q_proj'],
            ['self_attn.o_proj'],
            ['mlp.up_proj', 'mlp.gate_proj'],
            ['mlp.down_proj'],
        ]

        for names in sequential:
            subset = {n: full[n] for n in names}

            gptq = {}
            for name in subset:
                gptq[name] = GPTQ(subset[name])
                gptq[name].quantizer = Quantizer()
                gptq[name].quantizer.configure(
                    args.wbits, perchannel=True, sym=args.sym, mse=False
                )

            def add_batch(name):
                def tmp(_, inp, out):
                    gptq[name].add_batch(inp[0].data, out.data)
                return tmp
            handles = []
            for name in subset:
                handles.append(subset[name].register_forward_hook(add_batch(name)))
            for j in range(args.nsamples):
                outs[j] = block_out(layer(inps[j].unsqueeze(0), **layer_kwargs))[0]
            for h in handles:
                h.remove()

            for name in subset:
                print(i, name)
                print('Quantizing ...')
                gptq[name].fasterquant(
                    blocksize=args.blocksize, percdamp=args.percdamp,
                    groupsize=args.groupsize, actorder=args.act_order,
                )
                total_error += gptq[name].error
                nlayers += 1
                gptq[name].free()

        for j in range(args.nsamples):
            outs[j] = block_out(layer(inps[j].unsqueeze(0), **layer_kwargs))[0]

        layers[i] = layer
        del layer
        del gptq

        inps, outs = outs, inps

    model.config.use_cache = use_cache
    return total_error, nlayers, nblocks


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default=os.path.join(ROOT, 'out', 'smollm2'))
    p.add_argument('--calib', default=os.path.join(ROOT, '.cache', 'assets', 'brown', 'brown_calib.txt'))
    p.add_argument('--nsamples', type=int, default=128)
    p.add_argument('--seqlen', type=int, default=512)
    p.add_argument('--nblocks', type=int, default=None, help='quantize only the first N blocks (validation)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--wbits', type=int, default=4)
    p.add_argument('--groupsize', type=int, default=128)
    p.add_argument('--blocksize', type=int, default=128)
    p.add_argument('--percdamp', type=float, default=0.01)
    p.add_argument('--sym', action='store_true', help='symmetric (default: asymmetric)')
    p.add_argument('--act-order', action='store_true')
    p.add_argument('--save', default=None,
                   help='write the quantized (dequantized f32) model here as a plain HF directory, '
                        'for `quantize eval --model DIR`')
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    import transformers
    print('torch %s, transformers %s, threads %d' % (
        torch.__version__, transformers.__version__, torch.get_num_threads()))
    print('args', vars(args))

    t0 = time.time()
    model = get_llama(args.model)
    model.eval()
    print('model load %.2f s' % (time.time() - t0))

    t0 = time.time()
    dataloader, ntok = get_calib(args.model, args.calib, args.nsamples, args.seqlen, args.seed)
    print('calibration: %d tokens, %d windows of %d (%.2f s)' % (
        ntok, len(dataloader), args.seqlen, time.time() - t0))

    tick = time.time()
    total_error, nlayers, nblocks = llama_sequential(model, dataloader, args)
    wall = time.time() - tick
    print('blocks %d, linears %d' % (nblocks, nlayers))
    print('total error (sum of GPTQ Losses) %.6f' % total_error)
    print('quantize wall %.2f s' % wall)
    if args.save:
        save_dequantized(model, args.model, args.save)
        print('saved %s' % args.save)


def save_dequantized(model, src_dir, out_dir):
    """The quantized weights (fasterquant leaves Q in layer.weight, as f32) in the layout
    of the source directory: the same tensor names, the tied head left out."""
    import shutil
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=False)
    for f in os.listdir(src_dir):
        if f != 'model.safetensors':
            shutil.copy(os.path.join(src_dir, f), out_dir)
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if k != 'lm_head.weight'}
    save_file(sd, os.path.join(out_dir, 'model.safetensors'), metadata={'format': 'pt'})


if __name__ == '__main__':
    main()
