"""The scorers' own networks under ComfyUI's model management.

A scorer's open_clip / transformers / WS-DAN / aesthetic-head modules are wrapped, by reference, in
one :class:`comfy.model_patcher.ModelPatcher` per set of modules (made once, reused across runs), so
ComfyUI loads them with the diffusion model (``load_models_gpu``), counts them in its loaded-models
list and its memory budget, offloads them when another model needs the room, and frees them when
the scorer is gone (it keeps only weak references). The pack never moves them itself: a scorer
casts its small target tensors to the device of its embeddings when it uses them. ComfyUI's own
models a scorer uses (a CLIP_VISION input) come through ``scorer.comfy_models()`` unchanged.
"""
from __future__ import annotations

import torch

import comfy.model_management
import comfy.model_patcher

__all__ = ["ScorerModules", "scorer_patchers", "patchers_for"]


class ScorerModules(torch.nn.Module):
    """What the ModelPatcher manages: the scorer's own modules (the same objects, not copies)."""

    def __init__(self, modules):
        super().__init__()
        self.parts = torch.nn.ModuleList(modules)


#: attribute on a scorer's first own module holding ``(ids of the modules, patcher)``: the patcher
#: lives as long as the modules do (the reference cycle is freed by the garbage collector once the
#: model cache and every scorer let go of them; ComfyUI itself holds only weak references)
_ATTR = "_doodl_comfy_patcher"


def _patcher_for_modules(modules: list) -> "comfy.model_patcher.ModelPatcher":
    key = tuple(id(m) for m in modules)
    cached = getattr(modules[0], _ATTR, None)
    if cached is None or cached[0] != key:
        patcher = comfy.model_patcher.ModelPatcher(
            ScorerModules(modules), load_device=comfy.model_management.get_torch_device(),
            offload_device=comfy.model_management.unet_offload_device())
        cached = (key, patcher)
        object.__setattr__(modules[0], _ATTR, cached)
    return cached[1]


def scorer_patchers(scorer) -> list:
    """ComfyUI ModelPatchers for everything ``scorer`` runs: one for its own modules (made once
    for those modules) plus the ComfyUI models it uses. A combined scorer gives its parts'."""
    parts = getattr(scorer, "parts", None)
    if parts is not None:
        return patchers_for(s for s, _ in parts)
    patchers = list(scorer.comfy_models())
    own = scorer.owned_modules()
    if own:
        patchers.append(_patcher_for_modules(own))
    return patchers


def patchers_for(scorers) -> list:
    """The patchers of several scorers (None entries skipped), each object once."""
    out, seen = [], set()
    for s in scorers:
        if s is None:
            continue
        for p in scorer_patchers(s):
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out
