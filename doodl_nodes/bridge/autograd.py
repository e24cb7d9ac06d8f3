"""The inference-tensor shim (docs/maintainers/comfyui-internals.md §1.2).

ComfyUI runs every node under ``torch.inference_mode()``, so weights loaded by its loaders are
inference tensors (or "hybrids" after a reload: ``is_inference()`` is False but reading
``_version`` raises). Autograd cannot save such tensors for backward. ``make_autograd_safe``
replaces each offending parameter/buffer with a normal clone and freezes every parameter. Run it
every time a node runs, *after* the model is loaded on its device: any later inference-mode load
brings the trap back.
"""
from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["needs_clone", "make_autograd_safe", "autograd_ready", "clone_tensor_tree"]


def needs_clone(t: torch.Tensor) -> bool:
    """True for inference tensors and for the hybrids an in-place ``.data`` swap leaves behind."""
    if t.is_inference():
        return True
    try:
        t._version
    except RuntimeError:
        return True
    return False


def _set_attr(module: torch.nn.Module, name: str, value) -> None:
    *path, leaf = name.split(".")
    for part in path:
        module = getattr(module, part)
    setattr(module, leaf, value)


def make_autograd_safe(modules: Iterable[torch.nn.Module] | torch.nn.Module) -> int:
    """Clone inference parameters/buffers of ``modules`` in place and freeze all parameters.

    Returns the number of tensors replaced. Cheap when nothing needs replacing (the second run).
    """
    if isinstance(modules, torch.nn.Module):
        modules = [modules]
    replaced = 0
    with torch.inference_mode(False):
        for module in modules:
            for name, param in list(module.named_parameters(remove_duplicate=False)):
                if needs_clone(param):
                    _set_attr(module, name, torch.nn.Parameter(param.detach().clone(),
                                                               requires_grad=False))
                    replaced += 1
            for name, buf in list(module.named_buffers(remove_duplicate=False)):
                if buf is not None and needs_clone(buf):
                    _set_attr(module, name, buf.detach().clone())
                    replaced += 1
            module.requires_grad_(False)
    return replaced


def autograd_ready(module: torch.nn.Module) -> bool:
    """True when no parameter or buffer of ``module`` would break autograd and none needs grad."""
    for p in module.parameters():
        if p.requires_grad or needs_clone(p):
            return False
    return not any(b is not None and needs_clone(b) for b in module.buffers())


def clone_tensor_tree(obj, device=None):
    """Deep-copy nested dict/list/tuple structures, cloning every tensor outside inference mode
    (moved to ``device`` when given). ComfyUI's cond wrappers (``CONDRegular`` and friends: a
    ``.cond`` payload and ``_copy_with``) are copied with their payload cloned."""
    with torch.inference_mode(False):
        return _clone(obj, device)


def _clone(obj, device):
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        return t.to(device).clone() if device is not None else t.clone()
    if isinstance(obj, dict):
        return {k: _clone(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v, device) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_clone(v, device) for v in obj)
    if hasattr(obj, "cond") and hasattr(obj, "_copy_with"):
        return obj._copy_with(_clone(obj.cond, device))
    return obj
