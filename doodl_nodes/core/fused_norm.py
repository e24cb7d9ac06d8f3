"""GroupNorm (optionally followed by SiLU) as two Triton kernels each way, in any memory layout.

Why: in the gradient pass of a UNet, PyTorch's CUDA GroupNorm returns an NCHW tensor whatever its
input's layout, so with channels-last convolution weights every norm costs two layout conversions
(the norm's input to NCHW, its output back to channels-last for the next convolution), and the
norm, the SiLU after it and their backward passes are separate kernels, each a full pass over the
activation. Here a norm is a statistics kernel and an apply kernel (the SiLU fused in), and its
backward is a reduction kernel and an apply kernel; every kernel reads the activation in the layout
it has (strides are arguments) and writes the output in the same layout, so a channels-last model
stays channels-last end to end. Measured on an H200 in benchmarks/RESULTS.md.

Only the gradient with respect to the input is computed: DOODL's weights are frozen (a weight or
bias that requires grad goes to PyTorch's ops). If the kernels fail to build or launch (a GPU or a
toolchain Triton does not support), the failure is logged once and PyTorch's ops run from then on
in the process, the failed call included. Statistics are accumulated in
float32 (sums of values shifted by one element of the group, so a large mean does not cancel the
variance); outputs are rounded once to the input's dtype. Without Triton, or for a tensor Triton
cannot run on, the same call falls back to ``torch.nn.functional.group_norm`` (+ ``silu``).

``TRITON_INTERPRET=1`` in the environment before this module is imported runs the kernels on CPU
tensors with Triton's interpreter (the test suite checks them that way against PyTorch).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from .triton_fallback import KernelFallback, tl, triton

__all__ = ["group_norm_act", "triton_available", "triton_failure"]

_MAX_SPLITS = 64          # programs per (sample, group) along H*W; the apply kernels reduce their partials
# Each distinct block size compiles its own kernels (once per machine: Triton caches them on disk), so
# the tile depends on the group width only and sizes and outer strides are not specialized on.
_TILE = 4096              # elements per loaded tile (BLOCK_HW * BLOCK_C)
_MAX_GROUP_CHANNELS = 1024  # wider groups (a tile row would not fit the registers): PyTorch's ops

#: the kernels' state in this process; after a failure (a GPU or toolchain Triton does not support)
#: every call runs PyTorch's ops
_FALLBACK = KernelFallback("GroupNorm", "PyTorch's GroupNorm runs")


def triton_available() -> bool:
    """Triton is importable and its kernels have not failed in this process."""
    return _FALLBACK.available()


def triton_failure() -> Optional[str]:
    """Why the kernels were given up in this process, or None."""
    return _FALLBACK.failure


def _runs_on_triton(x: torch.Tensor, groups: int) -> bool:
    return _FALLBACK.runs_on(x) and x.dim() >= 3 and x.shape[1] // groups <= _MAX_GROUP_CHANNELS


def _pytorch(x, groups, weight, bias, eps, act):
    y = F.group_norm(x, groups, weight, bias, eps)
    return F.silu(y) if act else y


if triton is not None:

    @triton.jit
    def _program(G):
        """This program's (sample x group) index, its split along H*W, the number of splits, and
        its sample and group."""
        pid_ng = tl.program_id(0)
        return pid_ng, tl.program_id(1), tl.num_programs(1), pid_ng // G, pid_ng % G

    @triton.jit
    def _sums(Buf, pid_ng, S, BLOCK_S: tl.constexpr):
        """The two sums of one (sample, group), added up from its S partial pairs."""
        offs = tl.arange(0, BLOCK_S)
        ms = offs < S
        s1 = tl.sum(tl.load(Buf + (pid_ng * S + offs) * 2, mask=ms, other=0.0), 0)
        s2 = tl.sum(tl.load(Buf + (pid_ng * S + offs) * 2 + 1, mask=ms, other=0.0), 0)
        return s1, s2

    @triton.jit
    def _store_sums(Buf, pid_ng, pid_s, S, acc1, acc2):
        tl.store(Buf + (pid_ng * S + pid_s) * 2, tl.sum(tl.sum(acc1, 1), 0))
        tl.store(Buf + (pid_ng * S + pid_s) * 2 + 1, tl.sum(tl.sum(acc2, 1), 0))

    @triton.jit
    def _moments(X, P, pid_ng, S, n, g, HW, Cg, eps, sxn, sxc, BLOCK_S: tl.constexpr):
        """Mean and 1/std of one (sample, group) from its partial sums of values shifted by the
        group's first element (the statistics kernel's shift)."""
        shift = tl.load(X + n * sxn + (g * Cg) * sxc).to(tl.float32)
        s1, s2 = _sums(P, pid_ng, S, BLOCK_S)
        M = HW * Cg
        mean_d = s1 / M
        var = tl.maximum(s2 / M - mean_d * mean_d, 0.0)
        return shift + mean_d, 1.0 / tl.sqrt(var + eps)

    @triton.jit
    def _affine(W, B, c, cmask, AFFINE: tl.constexpr, BLOCK_C: tl.constexpr):
        """The group's weight and bias as (1, BLOCK_C) rows in float32 (1 and 0 without them)."""
        if AFFINE:
            w = tl.load(W + c, mask=cmask, other=0.0).to(tl.float32)[None, :]
            b = tl.load(B + c, mask=cmask, other=0.0).to(tl.float32)[None, :]
        else:
            w = tl.full([1, BLOCK_C], 1.0, tl.float32)
            b = tl.zeros([1, BLOCK_C], dtype=tl.float32)
        return w, b

    @triton.jit
    def _group(X, W, B, P, HW, G, Cg, eps, sxn, sxc, AFFINE: tl.constexpr, BLOCK_C: tl.constexpr,
               BLOCK_S: tl.constexpr):
        """What an apply or gradient program needs of its group: program ids, sample, channels and
        their mask, mean, 1/std, weight and bias rows."""
        pid_ng, pid_s, S, n, g = _program(G)
        mean, rstd = _moments(X, P, pid_ng, S, n, g, HW, Cg, eps, sxn, sxc, BLOCK_S)
        cols = tl.arange(0, BLOCK_C)
        cmask = cols < Cg
        c = g * Cg + cols
        w, b = _affine(W, B, c, cmask, AFFINE, BLOCK_C)
        return pid_ng, pid_s, S, n, c, cmask, mean, rstd, w, b

    @triton.jit(do_not_specialize=["HW", "G", "Cg", "sxn", "rows_per_prog"])
    def _stats_kernel(X, P, HW, G, Cg, sxn, sxc, sxhw, rows_per_prog,
                      BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
        pid_ng, pid_s, S, n, g = _program(G)
        cols = tl.arange(0, BLOCK_C)
        cmask = cols < Cg
        base = X + n * sxn + (g * Cg + cols)[None, :] * sxc
        shift = tl.load(X + n * sxn + (g * Cg) * sxc).to(tl.float32)
        acc1 = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
        start = pid_s * rows_per_prog
        for r0 in range(start, start + rows_per_prog, BLOCK_HW):
            rows = r0 + tl.arange(0, BLOCK_HW)
            m = (rows < HW)[:, None] & cmask[None, :]
            x = tl.load(base + rows[:, None] * sxhw, mask=m, other=0.0).to(tl.float32)
            d = tl.where(m, x - shift, 0.0)
            acc1 += d
            acc2 += d * d
        _store_sums(P, pid_ng, pid_s, S, acc1, acc2)

    @triton.jit(do_not_specialize=["HW", "G", "Cg", "sxn", "syn", "rows_per_prog"])
    def _apply_kernel(X, Y, W, B, P, HW, G, Cg, eps, sxn, sxc, sxhw, syn, syc, syhw, rows_per_prog,
                      ACT: tl.constexpr, AFFINE: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
                      BLOCK_S: tl.constexpr):
        pid_ng, pid_s, S, n, c, cmask, mean, rstd, w, b = _group(X, W, B, P, HW, G, Cg, eps, sxn, sxc, AFFINE,
                                                                 BLOCK_C, BLOCK_S)
        scale = w * rstd
        offset = b - mean * scale
        start = pid_s * rows_per_prog
        for r0 in range(start, start + rows_per_prog, BLOCK_HW):
            rows = r0 + tl.arange(0, BLOCK_HW)
            m = (rows < HW)[:, None] & cmask[None, :]
            x = tl.load(X + n * sxn + c[None, :] * sxc + rows[:, None] * sxhw, mask=m, other=0.0).to(tl.float32)
            z = x * scale + offset
            if ACT:
                z = z * tl.sigmoid(z)
            tl.store(Y + n * syn + c[None, :] * syc + rows[:, None] * syhw, z.to(Y.dtype.element_ty), mask=m)

    @triton.jit
    def _grad_tile(X, DY, n, c, rows, m, sxn, sxc, sxhw, sdn, sdc, sdhw, mean, rstd, w, b, ACT: tl.constexpr):
        """(d loss / d x-hat, x-hat) of one tile of rows: x and the output gradient loaded, the
        SiLU's derivative taken at the recomputed pre-activation."""
        x = tl.load(X + n * sxn + c[None, :] * sxc + rows[:, None] * sxhw, mask=m, other=0.0).to(tl.float32)
        dy = tl.load(DY + n * sdn + c[None, :] * sdc + rows[:, None] * sdhw, mask=m, other=0.0).to(tl.float32)
        xhat = (x - mean) * rstd
        if ACT:
            z = xhat * w + b
            sg = tl.sigmoid(z)
            dz = dy * sg * (1.0 + z * (1.0 - sg))
        else:
            dz = dy
        return tl.where(m, dz * w, 0.0), xhat

    @triton.jit(do_not_specialize=["HW", "G", "Cg", "sxn", "sdn", "rows_per_prog"])
    def _grad_stats_kernel(X, DY, W, B, P, Q, HW, G, Cg, eps, sxn, sxc, sxhw, sdn, sdc, sdhw, rows_per_prog,
                           ACT: tl.constexpr, AFFINE: tl.constexpr, BLOCK_HW: tl.constexpr,
                           BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
        pid_ng, pid_s, S, n, c, cmask, mean, rstd, w, b = _group(X, W, B, P, HW, G, Cg, eps, sxn, sxc, AFFINE,
                                                                 BLOCK_C, BLOCK_S)
        acc1 = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_HW, BLOCK_C], dtype=tl.float32)
        start = pid_s * rows_per_prog
        for r0 in range(start, start + rows_per_prog, BLOCK_HW):
            rows = r0 + tl.arange(0, BLOCK_HW)
            m = (rows < HW)[:, None] & cmask[None, :]
            dxh, xhat = _grad_tile(X, DY, n, c, rows, m, sxn, sxc, sxhw, sdn, sdc, sdhw, mean, rstd, w, b, ACT)
            acc1 += dxh
            acc2 += dxh * xhat
        _store_sums(Q, pid_ng, pid_s, S, acc1, acc2)

    @triton.jit(do_not_specialize=["HW", "G", "Cg", "sxn", "sdn", "son", "rows_per_prog"])
    def _grad_apply_kernel(X, DY, DX, W, B, P, Q, HW, G, Cg, eps, sxn, sxc, sxhw, sdn, sdc, sdhw,
                           son, soc, sohw, rows_per_prog, ACT: tl.constexpr, AFFINE: tl.constexpr,
                           BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
        pid_ng, pid_s, S, n, c, cmask, mean, rstd, w, b = _group(X, W, B, P, HW, G, Cg, eps, sxn, sxc, AFFINE,
                                                                 BLOCK_C, BLOCK_S)
        q1, q2 = _sums(Q, pid_ng, S, BLOCK_S)
        m1 = q1 / (HW * Cg)
        m2 = q2 / (HW * Cg)
        start = pid_s * rows_per_prog
        for r0 in range(start, start + rows_per_prog, BLOCK_HW):
            rows = r0 + tl.arange(0, BLOCK_HW)
            m = (rows < HW)[:, None] & cmask[None, :]
            dxh, xhat = _grad_tile(X, DY, n, c, rows, m, sxn, sxc, sxhw, sdn, sdc, sdhw, mean, rstd, w, b, ACT)
            dx = rstd * (dxh - m1 - xhat * m2)
            tl.store(DX + n * son + c[None, :] * soc + rows[:, None] * sohw, dx.to(DX.dtype.element_ty), mask=m)


@functools.lru_cache(maxsize=None)
def _processors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _viewable(t: torch.Tensor) -> torch.Tensor:
    """t itself if it has an (N, C, H*W) view (NCHW or channels-last, say), else a dense copy."""
    try:
        t.view(t.shape[0], t.shape[1], -1)
        return t
    except RuntimeError:
        return t.contiguous()


def _launch_shape(x3: torch.Tensor, groups: int):
    n, c, hw = x3.shape
    cg = c // groups
    block_c = triton.next_power_of_2(cg)
    block_hw = max(16, _TILE // block_c)   # not from hw: one compiled variant per group width
    tiles = triton.cdiv(hw, block_hw)
    want = max(1, (4 * _processors(x3.device)) // (n * groups))
    splits = min(tiles, want, _MAX_SPLITS)
    rows_per_prog = triton.cdiv(tiles, splits) * block_hw
    splits = triton.cdiv(hw, rows_per_prog)
    return (n * groups, splits), dict(BLOCK_HW=block_hw, BLOCK_C=block_c, BLOCK_S=_MAX_SPLITS), rows_per_prog


class _GroupNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, groups: int, weight, bias, eps: float, act: bool):
        x = _viewable(x)
        x3 = x.view(x.shape[0], x.shape[1], -1)
        y = torch.empty_like(x)               # the input's layout (channels-last stays channels-last)
        y3 = y.view(x3.shape)
        grid, blocks, rows = _launch_shape(x3, groups)
        part = torch.empty(grid[0] * grid[1] * 2, device=x.device, dtype=torch.float32)
        affine = weight is not None
        w = weight.contiguous() if affine else x3
        b = bias.contiguous() if affine else x3
        hw, cg = x3.shape[2], x3.shape[1] // groups
        _stats_kernel[grid](x3, part, hw, groups, cg, *x3.stride(), rows,
                            BLOCK_HW=blocks["BLOCK_HW"], BLOCK_C=blocks["BLOCK_C"])
        _apply_kernel[grid](x3, y3, w, b, part, hw, groups, cg, eps, *x3.stride(), *y3.stride(), rows,
                            ACT=act, AFFINE=affine, **blocks)
        ctx.save_for_backward(x, w, b, part)
        ctx.groups, ctx.eps, ctx.act, ctx.affine = groups, eps, act, affine
        ctx.launch, ctx.hw, ctx.cg = (grid, blocks, rows), hw, cg   # the backward's grid is the forward's
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, w, b, part = ctx.saved_tensors
        try:
            return _GroupNormAct._input_grad(ctx, x, w, b, part, dy), None, None, None, None, None
        except Exception as exc:   # the backward kernels failed to build/launch: PyTorch's gradient
            _FALLBACK.give_up(exc)
        affine = (w, b) if ctx.affine else (None, None)
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            (dx,) = torch.autograd.grad(_pytorch(xx, ctx.groups, *affine, ctx.eps, ctx.act), xx, dy)
        return dx, None, None, None, None, None

    @staticmethod
    def _input_grad(ctx, x, w, b, part, dy):
        x3 = x.view(x.shape[0], x.shape[1], -1)
        dy3 = _viewable(dy).view(x3.shape)
        dx = torch.empty_like(x)
        dx3 = dx.view(x3.shape)
        (grid, blocks, rows), hw, cg = ctx.launch, ctx.hw, ctx.cg
        q = torch.empty_like(part)
        common = dict(ACT=ctx.act, AFFINE=ctx.affine, **blocks)
        _grad_stats_kernel[grid](x3, dy3, w, b, part, q, hw, ctx.groups, cg, ctx.eps, *x3.stride(),
                                 *dy3.stride(), rows, **common)
        _grad_apply_kernel[grid](x3, dy3, dx3, w, b, part, q, hw, ctx.groups, cg, ctx.eps, *x3.stride(),
                                 *dy3.stride(), *dx3.stride(), rows, **common)
        return dx


def group_norm_act(x: torch.Tensor, groups: int, weight: Optional[torch.Tensor] = None,
                   bias: Optional[torch.Tensor] = None, eps: float = 1e-5, act: bool = False) -> torch.Tensor:
    """``silu(group_norm(x))`` if ``act`` else ``group_norm(x)``, for x of shape (N, C, *spatial).

    Runs the Triton kernels on CUDA tensors (any layout; the output has the input's layout), else
    PyTorch's own ops: also for a weight or bias that requires grad in grad mode (the kernels
    compute only the input's gradient) and after the kernels failed once in this process."""
    if x.shape[1] % groups:
        raise ValueError(f"group_norm_act: {x.shape[1]} channels do not split into {groups} groups")
    # without grad mode nothing is differentiated, so weights that require grad (a freshly loaded
    # ComfyUI model in a sampling run) do not matter
    frozen = not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in (weight, bias))
    if (weight is None) != (bias is None):
        raise ValueError("group_norm_act: give both weight and bias or neither")
    if frozen and _runs_on_triton(x, groups):
        try:
            return _GroupNormAct.apply(x, groups, weight, bias, float(eps), bool(act))
        except Exception as exc:   # a GPU or toolchain Triton cannot build for: PyTorch from here on
            _FALLBACK.give_up(exc)
    return _pytorch(x, groups, weight, bias, eps, act)
