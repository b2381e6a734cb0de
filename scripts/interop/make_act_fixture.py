"""compressed-tensors' own activation quantization on hostile inputs, as a test fixture:
tests/fixtures/activations/compressed_tensors.safetensors holds the input `x` [rows, width]
f32 and, for each scheme W8A8 checkpoints declare, what compressed-tensors' forward
(`forward_quantize`: `compute_dynamic_scales_and_zp` for dynamic schemes, the stored
scale / zero point for static ones, then `fake_quantize`) makes of it. tests/activation.rs
checks `ActRuntime::CompressedTensors` against it bit for bit.

Rows: Gaussian, an outlier channel, all zeros, tiny values, all negative (the -128 code),
values on rounding ties of the static grids, a huge row.

  /work/refenv/bin/pip install compressed-tensors   # 0.20.1 when made
  /work/refenv/bin/python scripts/interop/make_act_fixture.py
"""

import os

import compressed_tensors
import torch
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.lifecycle.forward import fake_quantize
from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "activations", "compressed_tensors.safetensors")
ROWS, WIDTH = 9, 96

g = torch.Generator().manual_seed(0)
x = torch.randn(ROWS, WIDTH, generator=g)
x[1, 7] = 300.0                       # outlier channel
x[2] = 0.0                            # all zeros
x[3] = torch.randn(WIDTH, generator=g) * 1e-30  # tiny (below FP8's smallest scale)
x[4] = -torch.rand(WIDTH, generator=g) - 0.5    # all negative: amax from a negative value
x[5] = torch.arange(WIDTH) * 0.025 - 1.2        # halves of the static int8 grids (ties)
x[6] = torch.randn(WIDTH, generator=g) * 1e4    # huge
x[7, :48] = 0.0
x[8] = torch.randn(WIDTH, generator=g).abs()    # all positive

def args(kind, symmetric, dynamic):
    return QuantizationArgs(num_bits=8, type=kind, symmetric=symmetric,
                            strategy="token" if dynamic else "tensor", dynamic=dynamic)

out = {"x": x.contiguous()}
for name, kind, sym in [("int8_sym", "int", True), ("int8_asym", "int", False), ("fp8", "float", True)]:
    a = args(kind, sym, True)
    # forward_quantize sees [batch, tokens, width]; the per-token reduction keeps dims 0, 1.
    x3 = x[None]
    scale, zp = compute_dynamic_scales_and_zp(value=x3, args=a, module=torch.nn.Linear(1, 1))
    out[f"{name}_dynamic"] = fake_quantize(x=x3, scale=scale, zero_point=zp, args=a)[0].contiguous()

static = {"int8_sym": (0.05, 0), "int8_asym": (0.04, -7), "fp8": (0.01, 0)}
for name, (s, z) in static.items():
    kind = "float" if name == "fp8" else "int"
    a = args(kind, name != "int8_asym", False)
    scale = torch.tensor([s], dtype=torch.float32)
    zp = torch.tensor([z], dtype=torch.int8 if kind == "int" else torch.float8_e4m3fn)
    out[f"{name}_static"] = fake_quantize(x=x, scale=scale, zero_point=zp, args=a).contiguous()
    out[f"{name}_static_scale"] = scale
    out[f"{name}_static_zero"] = torch.tensor([z], dtype=torch.int32)

os.makedirs(os.path.dirname(OUT), exist_ok=True)
save_file(out, OUT, metadata={"compressed_tensors": compressed_tensors.__version__, "torch": torch.__version__})
print(OUT, {k: tuple(v.shape) for k, v in out.items()})
