"""Run a diffusion model's GEGLU feed-forward gates as the fused kernels of ``core/fused_geglu.py``
for the duration of a context.

ComfyUI's ``GEGLU.forward`` is ``a, g = proj(x).chunk(2, -1); return a * gelu(g)``. Inside the
context each GEGLU block (exactly that class, with that forward: :data:`KNOWN_FORWARDS`) runs
``geglu(proj(x))`` instead: the projection is ComfyUI's own layer (casts, patches and all), only the
gate is fused. The forwards are swapped on the modules and put back after.
"""
from __future__ import annotations

import contextlib

import torch

from ..core.fused_geglu import geglu
from .fingerprints import replaced_forwards

__all__ = ["fused_geglus", "KNOWN_FORWARDS"]

#: fingerprints of the ``GEGLU.forward`` that :func:`_fused_forward` reproduces (ComfyUI 0.3.64)
KNOWN_FORWARDS = frozenset({"eab6538beff8b8cf"})


def _fused_forward(block, x):
    return geglu(block.proj(x))


def _geglu_class():
    try:
        from comfy.ldm.modules.attention import GEGLU
    except ImportError:  # pragma: no cover - ComfyUI always has it
        return None
    return GEGLU


@contextlib.contextmanager
def fused_geglus(module: torch.nn.Module):
    """Within the context the GEGLU blocks of ``module`` run the fused gate. Yields how many."""
    with replaced_forwards(module, _geglu_class(), KNOWN_FORWARDS, _fused_forward) as n:
        yield n
