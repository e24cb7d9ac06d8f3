"""GEGLU (``a * gelu(g)`` of the two halves of a projection) as one Triton kernel each way.

Why: a UNet transformer block's feed-forward splits its projection ``h`` into ``a, g`` and computes
``a * gelu(g)``: in PyTorch that is a GELU kernel and a multiply kernel forward (reading ``g`` twice
and writing ``gelu(g)`` in between), and backward a GELU-backward kernel, two multiplies and a
``cat`` that joins the two halves' gradients (SD1.5 on an H200: about 1.2 ms of a 17.8 ms gradient
call, benchmarks/RESULTS.md run 13). Here the forward reads ``h`` once and writes ``y``; the backward
reads ``h`` and ``dy`` once and writes both halves of ``dh`` in place. Values are computed in float32
and rounded once to the input's dtype (PyTorch rounds ``gelu(g)`` first, then the product). GELU is
the exact one (``erf``), as ComfyUI's ``GEGLU`` uses.

Without Triton, for a tensor Triton cannot run on, or after the kernels failed once in the process
(logged), the same call runs PyTorch's ops. ``TRITON_INTERPRET=1`` set before import runs the kernels
on CPU tensors through Triton's interpreter (the tests do that).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .triton_fallback import KernelFallback, tl, triton

__all__ = ["geglu", "geglu_reference", "geglu_failure"]

_BLOCK = 1024
_FALLBACK = KernelFallback("GEGLU", "PyTorch's ops run")


def geglu_failure() -> Optional[str]:
    """Why the kernels were given up in this process, or None."""
    return _FALLBACK.failure


def geglu_reference(h: torch.Tensor) -> torch.Tensor:
    """PyTorch's GEGLU of ``h``: ``a * gelu(g)`` with ``a, g = h.chunk(2, -1)``."""
    a, g = h.chunk(2, dim=-1)
    return a * F.gelu(g)


def _runs_on_triton(h: torch.Tensor) -> bool:
    return _FALLBACK.runs_on(h) and h.shape[-1] % 2 == 0 and h.is_floating_point()


if triton is not None:

    @triton.jit
    def _halves(offs, D):
        row = (offs // D).to(tl.int64)
        col = (offs % D).to(tl.int64)
        first = row * 2 * D + col
        return first, first + D

    @triton.jit(do_not_specialize=["N", "D"])
    def _forward_kernel(H, Y, N, D, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        ia, ig = _halves(offs, D)
        a = tl.load(H + ia, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(H + ig, mask=mask, other=0.0).to(tl.float32)
        y = a * g * 0.5 * (1.0 + tl.math.erf(g * 0.7071067811865476))
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["N", "D"])
    def _backward_kernel(H, DY, DH, N, D, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        ia, ig = _halves(offs, D)
        a = tl.load(H + ia, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(H + ig, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        cdf = 0.5 * (1.0 + tl.math.erf(g * 0.7071067811865476))
        pdf = tl.exp(-0.5 * g * g) * 0.3989422804014327
        tl.store(DH + ia, (dy * g * cdf).to(DH.dtype.element_ty), mask=mask)
        tl.store(DH + ig, (dy * a * (cdf + g * pdf)).to(DH.dtype.element_ty), mask=mask)


def _grid(n: int):
    return (triton.cdiv(n, _BLOCK),)


class _GEGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        h = h.contiguous()
        d = h.shape[-1] // 2
        y = torch.empty(h.shape[:-1] + (d,), dtype=h.dtype, device=h.device)
        n = y.numel()
        _forward_kernel[_grid(n)](h, y, n, d, BLOCK=_BLOCK)
        ctx.save_for_backward(h)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        (h,) = ctx.saved_tensors
        dy = dy.contiguous()
        dh = torch.empty_like(h)
        n = dy.numel()
        _backward_kernel[_grid(n)](h, dy, dh, n, h.shape[-1] // 2, BLOCK=_BLOCK)
        return dh


def geglu(h: torch.Tensor) -> torch.Tensor:
    """``a * gelu(g)`` for ``a, g = h.chunk(2, dim=-1)``: the Triton kernels on CUDA tensors (and on
    the CPU under ``TRITON_INTERPRET=1``), else :func:`geglu_reference`."""
    if _runs_on_triton(h):
        try:
            return _GEGLU.apply(h)
        except Exception as exc:   # a GPU or toolchain Triton cannot build for: PyTorch from here on
            _FALLBACK.give_up(exc)
    return geglu_reference(h)
