"""Run in a subprocess with ``TRITON_INTERPRET=1``: the fused GroupNorm(+SiLU) kernels of
``doodl_nodes/core/fused_norm.py`` on CPU tensors (Triton's interpreter) against PyTorch's
``group_norm`` (+ ``silu``) in float64. Prints one JSON line per case."""
import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
sys.path.insert(0, sys.argv[1])

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from doodl_nodes.core import fused_norm  # noqa: E402

# (shape, groups, channels_last, act, affine, dtype); the (1, 32, 40, 40) case splits each group's
# rows over several programs (7 partial sums per group), the others use one
CASES = [
    ((2, 64, 5, 7), 32, True, True, True, torch.float64),
    ((2, 60, 9, 9), 6, False, True, True, torch.float64),
    ((1, 48, 33, 3), 4, True, False, True, torch.float64),
    ((1, 32, 40, 40), 2, True, True, True, torch.float64),
    ((2, 24, 6, 6), 3, False, False, False, torch.float64),
    ((2, 40, 4, 4, 3), 5, False, True, True, torch.float64),
    ((2, 64, 8, 8), 32, True, True, True, torch.bfloat16),
]


def run_case(shape, groups, channels_last, act, affine, dtype):
    g = torch.Generator().manual_seed(len(shape) * 100 + shape[1])
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 3   # a mean well away from 0
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(shape[1], generator=g, dtype=torch.float64) if affine else None
    b = torch.randn(shape[1], generator=g, dtype=torch.float64) if affine else None
    dy = torch.randn(shape, generator=g, dtype=torch.float64)

    xf = x.to(dtype).requires_grad_(True)
    yf = fused_norm.group_norm_act(xf, groups, None if w is None else w.to(dtype),
                                   None if b is None else b.to(dtype), 1e-5, act=act)
    (gf,) = torch.autograd.grad(yf, xf, dy.to(dtype))

    xr = x.clone().requires_grad_(True)
    yr = F.group_norm(xr, groups, w, b, 1e-5)
    yr = F.silu(yr) if act else yr
    (gr,) = torch.autograd.grad(yr, xr, dy)

    fmt = torch.channels_last
    return {
        "shape": list(shape), "groups": groups, "channels_last": channels_last, "act": act, "affine": affine,
        "dtype": str(dtype), "fused": type(yf.grad_fn).__name__,
        "y_rel": float((yf.double() - yr).norm() / yr.norm()),
        "grad_rel": float((gf.double() - gr).norm() / gr.norm()),
        "y_dtype": str(yf.dtype), "grad_dtype": str(gf.dtype),
        "layout_kept": (yf.dim() != 4 or (yf.is_contiguous(memory_format=fmt) == channels_last
                                           and gf.is_contiguous(memory_format=fmt) == channels_last)),
    }


for case in CASES:
    print(json.dumps(run_case(*case)), flush=True)

# a weight that requires grad is PyTorch's business: the fallback path, with the weight's gradient
x = torch.randn(2, 8, 4, 4, dtype=torch.float64, requires_grad=True)
w = torch.randn(8, dtype=torch.float64, requires_grad=True)
b = torch.zeros(8, dtype=torch.float64)
y = fused_norm.group_norm_act(x, 4, w, b, act=True)
gw = torch.autograd.grad(y.sum(), w)[0]
ref = torch.autograd.grad(F.silu(F.group_norm(x, 4, w, b)).sum(), w)[0]
print(json.dumps({"trainable_weight": type(y.grad_fn).__name__, "weight_grad_rel": float((gw - ref).norm() / ref.norm())}))

# the same weights without grad mode (a sampling run on a freshly loaded model): the kernels run
launches = []
original_apply = fused_norm._GroupNormAct.apply
fused_norm._GroupNormAct.apply = lambda *args: launches.append(1) or original_apply(*args)
with torch.no_grad():
    y = fused_norm.group_norm_act(x, 4, w, b, act=True)
fused_norm._GroupNormAct.apply = original_apply
print(json.dumps({"trainable_weight_no_grad_launches": len(launches),
                  "no_grad_rel": float((y - F.silu(F.group_norm(x, 4, w, b))).norm() / y.norm())}))

# groups wider than a tile row can hold: PyTorch's ops
x = torch.randn(1, 2048, 2, 2, dtype=torch.float64, requires_grad=True)
print(json.dumps({"wide_groups": type(fused_norm.group_norm_act(x, 1, act=True).grad_fn).__name__}))


# the kernels failing to build or launch (a GPU or toolchain Triton does not support): logged once,
# PyTorch's ops from then on, in the forward and in the backward
class _Broken:
    def __init__(self, exc):
        self.exc = exc

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            raise self.exc
        return launch


def _native_grad(x, w, b, dy):
    xr = x.detach().clone().requires_grad_(True)
    return torch.autograd.grad(F.silu(F.group_norm(xr, 4, w, b)), xr, dy)[0]


x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
w, b, dy = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64), torch.randn(2, 8, 4, 4, dtype=torch.float64)
kernels = fused_norm._grad_stats_kernel, fused_norm._stats_kernel

fused_norm._grad_stats_kernel = _Broken(RuntimeError("backward kernel: unsupported GPU"))
xx = x.clone().requires_grad_(True)
y = fused_norm.group_norm_act(xx, 4, w, b, act=True)
forward_fused = type(y.grad_fn).__name__
g = torch.autograd.grad(y, xx, dy)[0]
ref = _native_grad(x, w, b, dy)
print(json.dumps({"failure": "backward", "forward": forward_fused, "reason": fused_norm.triton_failure(),
                  "available_after": fused_norm.triton_available(),
                  "grad_rel": float((g - ref).norm() / ref.norm())}))

fused_norm._grad_stats_kernel = kernels[0]
fused_norm._FALLBACK.failure = None
fused_norm._stats_kernel = _Broken(RuntimeError("forward kernel: no compiler"))
xx = x.clone().requires_grad_(True)
y = fused_norm.group_norm_act(xx, 4, w, b, act=True)
reason = fused_norm.triton_failure()
fused_norm._stats_kernel = kernels[1]   # working again, but the process has given up on them
y2 = fused_norm.group_norm_act(xx, 4, w, b, act=True)
print(json.dumps({"failure": "forward", "forward": type(y.grad_fn).__name__, "reason": reason,
                  "second_call": type(y2.grad_fn).__name__,
                  "y_equal": bool(torch.equal(y, F.silu(F.group_norm(xx, 4, w, b))))}))

fused_norm._FALLBACK.failure = None
fused_norm._stats_kernel = _Broken(torch.OutOfMemoryError("CUDA out of memory"))
try:
    fused_norm.group_norm_act(x, 4, w, b, act=True)
    oom = "swallowed"
except torch.OutOfMemoryError:
    oom = "raised"
print(json.dumps({"failure": "oom", "outcome": oom, "reason": fused_norm.triton_failure()}))
