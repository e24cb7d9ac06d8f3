"""Run a diffusion model's GEGLU feed-forward gates as the fused kernels of ``core/fused_geglu.py``
for the duration of a context.

ComfyUI's ``GEGLU.forward`` is ``a, g = proj(x).chunk(2, -1); return a * gelu(g)``. Inside the
context each GEGLU block (exactly that class, with that forward: :data:`KNOWN_FORWARDS`) runs
``geglu(proj(x))`` instead: the projection is ComfyUI's own layer (casts, patches and all), only the
gate is fused. The forwards are swapped on the modules and put back after.
"""
from __future__ import annotations

import contextlib
import functools
import logging

import torch

from ..core.fused_geglu import geglu
from .fingerprints import forward_fingerprint

__all__ = ["fused_geglus", "KNOWN_FORWARDS"]

log = logging.getLogger("doodl")

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
    cls = _geglu_class()
    known = cls is not None and forward_fingerprint(cls.forward) in KNOWN_FORWARDS
    if cls is not None and not known:
        log.debug("DOODL: GEGLU.forward is not the one fused_geglus.py knows; left as it is")
    swapped = []
    try:
        if known:
            for m in module.modules():
                if type(m) is cls and "forward" not in m.__dict__:
                    m.forward = functools.partial(_fused_forward, m)
                    swapped.append(m)
        yield len(swapped)
    finally:
        for m in swapped:
            with contextlib.suppress(AttributeError):
                del m.forward
