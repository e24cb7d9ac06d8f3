"""What a graphed, uncompiled run does to the diffusion model for its duration (``chain.py`` holds
it around the whole run, so the recorded graphs and any eager call inside the run compute the same
function; ComfyUI gets its model back as it was).

- ``channels_last``: the model runs channels-last end to end (``channels_last.py``: its 4-D weights
  re-laid in place, its ``SpatialTransformer`` blocks handing back channels-last images);
- ``fused_kernels``: its GroupNorm(+SiLU) layers (``fused_norms.py``) and GEGLU gates
  (``fused_geglus.py``) run the pack's Triton kernels, which keep whatever layout they are given.

Measured on an H200 (SD1.5, benchmarks/RESULTS.md runs 13 and 16): 11.8 -> 7.5 ms per no-grad
call and 20.6 -> 17.4 ms per gradient call, DOODL 3.4 -> 2.7 s per iteration (T=50).
"""
from __future__ import annotations

import contextlib

import torch

from .channels_last import channels_last_weights, layout_keeping_transformers
from .fused_geglus import fused_geglus
from .fused_norms import fused_group_norms

__all__ = ["fast_unet"]


@contextlib.contextmanager
def fast_unet(diffusion_model: torch.nn.Module, channels_last: bool = True, fused_kernels: bool = True):
    """Yields the counts ``{"channels_last_weights", "layout_keeping_transformers",
    "fused_group_norms", "fused_geglus"}`` (0 for what is off or absent)."""
    def on(flag, make):
        return make(diffusion_model) if flag else contextlib.nullcontext(0)

    with on(channels_last, channels_last_weights) as w, on(channels_last, layout_keeping_transformers) as t, \
            on(fused_kernels, fused_group_norms) as n, on(fused_kernels, fused_geglus) as g:
        yield {"channels_last_weights": w, "layout_keeping_transformers": t, "fused_group_norms": n,
               "fused_geglus": g}
