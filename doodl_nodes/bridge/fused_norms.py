"""Run a diffusion model's GroupNorm layers (and the SiLU after them) as the fused kernels of
``core/fused_norm.py`` for the duration of a context.

Held for a whole graphed run by ``fast_unet.py``: the model then stays channels-last from the first
convolution to the last (PyTorch's GroupNorm would return NCHW), and each norm + SiLU is two kernels
forward and two backward instead of a dozen plus layout conversions. The forwards are swapped on the
modules only inside the context (the recorded graphs keep the kernels) and put back after; ComfyUI
never sees a changed model. A norm whose weights ComfyUI casts or patches at each call, or one
called under autocast, runs ComfyUI's own forward (:func:`_comfy_path`).
"""
from __future__ import annotations

import contextlib
import functools

import torch

from ..core.fused_norm import group_norm_act

__all__ = ["fused_group_norms"]


def _comfy_path(norm: torch.nn.GroupNorm, x: torch.Tensor) -> bool:
    """Whether the norm must run ComfyUI's own forward: weight patches, weights ComfyUI casts or
    moves at each call (manual cast, offloading), weights of another dtype or device than the input,
    or autocast (which runs group_norm in float32)."""
    w = norm.weight
    return bool(getattr(norm, "weight_function", None) or getattr(norm, "bias_function", None)
                or getattr(norm, "comfy_cast_weights", False) or torch.is_autocast_enabled(x.device.type)
                or (w is not None and (w.device != x.device or w.dtype != x.dtype)))


def _fused_forward(norm: torch.nn.GroupNorm, act: bool, original, x: torch.Tensor) -> torch.Tensor:
    if _comfy_path(norm, x):
        y = original(x)
        return torch.nn.functional.silu(y) if act else y
    return group_norm_act(x, norm.num_groups, norm.weight, norm.bias, norm.eps, act=act)


def _identity(x):
    return x


def _plan(module: torch.nn.Module) -> list[tuple[torch.nn.GroupNorm, object]]:
    """(GroupNorm, the SiLU it takes in or None) for every GroupNorm of ``module``. A GroupNorm
    directly followed by ``nn.SiLU`` inside an ``nn.Sequential`` takes the SiLU in, unless the
    Sequential's owner modulates the norm's output before the activation (a ResBlock with
    ``use_scale_shift_norm`` calls ``out_layers[0]`` alone)."""
    fused_silu: dict[int, torch.nn.Module] = {}
    for owner in module.modules():
        if getattr(owner, "use_scale_shift_norm", False):
            continue
        for seq in owner.children():
            if not isinstance(seq, torch.nn.Sequential):
                continue
            layers = list(seq)
            for norm, nxt in zip(layers, layers[1:]):
                if isinstance(norm, torch.nn.GroupNorm) and type(nxt) is torch.nn.SiLU:
                    fused_silu[id(norm)] = nxt
    return [(m, fused_silu.get(id(m))) for m in module.modules() if isinstance(m, torch.nn.GroupNorm)]


@contextlib.contextmanager
def fused_group_norms(module: torch.nn.Module):
    """Within the context the GroupNorm layers of ``module`` run ``group_norm_act`` (SiLU fused where
    a SiLU follows). Yields the number of norms swapped (0 for models without GroupNorm: SD3, Flux).
    A layer that already has an instance-level forward (someone else's patch) is left alone."""
    swapped = []
    try:
        for norm, silu in _plan(module):
            if "forward" in norm.__dict__ or (silu is not None and "forward" in silu.__dict__):
                continue
            norm.forward = functools.partial(_fused_forward, norm, silu is not None, norm.forward)
            swapped.append(norm)
            if silu is not None:
                silu.forward = _identity
                swapped.append(silu)
        yield sum(1 for m in swapped if isinstance(m, torch.nn.GroupNorm))
    finally:
        for m in swapped:
            with contextlib.suppress(AttributeError):
                del m.forward
