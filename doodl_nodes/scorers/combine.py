"""Weighted sum of scorers: ``loss = sum_i w_i * loss_i``.

Each part draws its own crops from the shared generator, in order. Score names are prefixed with
the part's position, ``"1.clip_cosine"``, ``"2.aesthetic_score"``, ...; nested sums keep nesting
(``"2.1.clip_cosine"``). Modules and ComfyUI models are merged without repeats, so a model shared by
two parts is loaded and moved once.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..core.crops import CropConfig
from .base import DEFAULT_CROPS, DoodlScorer, check_images, unique

__all__ = ["CombinedScorer"]


class CombinedScorer(DoodlScorer):
    def __init__(self, scorers: Sequence[DoodlScorer], weights: Sequence[float],
                 name: Optional[str] = None):
        scorers, weights = list(scorers), [float(w) for w in weights]
        if not scorers:
            raise ValueError("CombinedScorer needs at least one scorer")
        if len(scorers) != len(weights):
            raise ValueError(f"{len(scorers)} scorers but {len(weights)} weights")
        for s in scorers:
            if not isinstance(s, DoodlScorer):
                raise TypeError(f"not a DOODL scorer: {type(s).__name__}")
        self.parts = list(zip(scorers, weights))
        self.name = name or " + ".join(f"{w:g}×{s.name}" for s, w in self.parts)

    def loss(self, images: torch.Tensor, crops: CropConfig = DEFAULT_CROPS,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        check_images(images)
        total = None
        for scorer, weight in self.parts:
            if weight == 0:
                continue
            part = scorer.loss(images, crops, generator).to(images.device) * weight
            total = part if total is None else total + part
        if total is None:  # every weight is zero: a constant loss, still (B,)
            total = images.new_zeros(images.shape[0], dtype=torch.float32)
        return total.float()

    def scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i, (scorer, _) in enumerate(self.parts, start=1):
            for key, value in scorer.scores(images).items():
                out[f"{i}.{key}"] = value
        return out

    def modules(self) -> list[torch.nn.Module]:
        return unique(m for s, _ in self.parts for m in s.modules())

    def owned_modules(self) -> list[torch.nn.Module]:
        return unique(m for s, _ in self.parts for m in s.owned_modules())

    def comfy_models(self) -> list:
        return unique(m for s, _ in self.parts for m in s.comfy_models())

    def to(self, device) -> "CombinedScorer":
        for scorer, _ in self.parts:
            scorer.to(device)
        return self
