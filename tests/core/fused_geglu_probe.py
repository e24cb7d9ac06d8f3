"""Run in a subprocess with ``TRITON_INTERPRET=1``: the fused GEGLU kernels of
``doodl_nodes/core/fused_geglu.py`` on CPU tensors (Triton's interpreter) against PyTorch's
``a * gelu(g)`` in float64, and the hand-over to PyTorch when a kernel fails. Prints one JSON line
per case."""
import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
sys.path.insert(0, sys.argv[1])

import torch  # noqa: E402

from doodl_nodes.core import fused_geglu  # noqa: E402

# (shape of h, dtype): several blocks and a ragged tail (3 * 5 * 2 * 700 elements), a row narrower
# than a block, a 2-D input, bf16 (rounded once), values large enough for gelu's tails
CASES = [((3, 5, 1400), torch.float64, 1.0), ((2, 7, 6), torch.float64, 3.0), ((9, 64), torch.float64, 1.0),
         ((2, 16, 160), torch.bfloat16, 2.0)]


def run_case(shape, dtype, scale):
    g = torch.Generator().manual_seed(shape[-1])
    h64 = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    dy = torch.randn(shape[:-1] + (shape[-1] // 2,), generator=g, dtype=torch.float64)
    h = h64.to(dtype).requires_grad_(True)
    y = fused_geglu.geglu(h)
    (gh,) = torch.autograd.grad(y, h, dy.to(dtype))
    hr = h.detach().double().requires_grad_(True)
    yr = fused_geglu.geglu_reference(hr)
    (ghr,) = torch.autograd.grad(yr, hr, dy)
    return {"shape": list(shape), "dtype": str(dtype), "fused": type(y.grad_fn).__name__,
            "y_dtype": str(y.dtype), "grad_dtype": str(gh.dtype), "y_shape": list(y.shape),
            "y_rel": float((y.double() - yr).norm() / yr.norm()),
            "grad_rel": float((gh.double() - ghr).norm() / ghr.norm())}


for case in CASES:
    print(json.dumps(run_case(*case)), flush=True)

# no grad: the forward kernel alone
with torch.no_grad():
    h = torch.randn(4, 10, dtype=torch.float64)
    print(json.dumps({"no_grad_rel": float((fused_geglu.geglu(h) - fused_geglu.geglu_reference(h)).norm()
                                           / fused_geglu.geglu_reference(h).norm())}), flush=True)

# a kernel that fails to build: the call falls back to PyTorch, and so does every later call
original = fused_geglu._forward_kernel


class _Broken:
    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            raise RuntimeError("unsupported GPU (simulated)")
        return launch


fused_geglu._forward_kernel = _Broken()
h = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
y = fused_geglu.geglu(h)
after = fused_geglu.geglu(h)
fused_geglu._forward_kernel = original
print(json.dumps({"failure": "forward", "fallback": type(y.grad_fn).__name__, "later": type(after.grad_fn).__name__,
                  "reason": fused_geglu.geglu_failure(),
                  "rel": float((y - fused_geglu.geglu_reference(h)).norm() / fused_geglu.geglu_reference(h).norm())}),
      flush=True)
