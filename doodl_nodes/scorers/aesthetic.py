"""Aesthetic scoring: LAION aesthetic heads on CLIP image embeddings.

Heads (:func:`load_aesthetic_head` detects the layout from the state-dict keys):

* LAION aesthetic predictor v1, linear (LAION-AI/aesthetic-predictor, MIT):
  ``sa_0_4_vit_l_14_linear.pth`` (768-d, OpenAI CLIP ViT-L/14) and ``sa_0_4_vit_b_32_linear.pth``
  (512-d, OpenAI CLIP ViT-B/32). Keys ``weight``, ``bias``. This is the head DOODL used.
* Improved aesthetic predictor (christophschuhmann/improved-aesthetic-predictor, Apache-2.0):
  ``sac+logos+ava1-l14-linearMSE.pth``, an MLP 768-1024-128-64-16-1 (``layers.{0,2,4,6,7}``, dropout
  between, no activations) on OpenAI CLIP ViT-L/14 embeddings.

Every head L2-normalizes its input first, as both predictors were trained. Scores are on a 1-10
scale but the raw output is not bounded (the real test embeddings span about -2.5..11.3 for the
linear L/14 head).

:class:`AestheticScorer` loss, following the released DOODL code: per crop ``s = clamp(head(E(crop)),
1, 10)``, averaged over the crops, then ``-mean`` (maximize) or ``|mean - target|`` (target in 1..10,
L1 "to keep the same scale").
**The clamp zeroes the gradient of crops scored outside [1, 10]** (DOODL does the same); pass
``clamp=False`` to keep it. Reported score: the raw (unclamped) head output on the whole image.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.losses import reduce_over_crops
from .base import CropScorer, check_images, chunked, freeze, unique
from .encoders import ImageEncoder
from .weights import WeightsFileError, extract_state_dict, load_weights_file, strip_prefix

__all__ = ["AestheticHead", "LinearAestheticHead", "MLPAestheticHead", "load_aesthetic_head",
           "AestheticScorer", "AESTHETIC_HEADS", "SCORE_RANGE"]

SCORE_RANGE = (1.0, 10.0)

#: Known head files: name -> (embedding dim, CLIP backbone, download URL, licence).
AESTHETIC_HEADS = {
    "sa_0_4_vit_l_14_linear.pth": (
        768, "OpenAI CLIP ViT-L/14",
        "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_l_14_linear.pth",
        "MIT"),
    "sa_0_4_vit_b_32_linear.pth": (
        512, "OpenAI CLIP ViT-B/32",
        "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_b_32_linear.pth",
        "MIT"),
    "sac+logos+ava1-l14-linearMSE.pth": (
        768, "OpenAI CLIP ViT-L/14",
        "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
        "sac+logos+ava1-l14-linearMSE.pth",
        "Apache-2.0"),
}


class AestheticHead(nn.Module):
    """Maps CLIP image embeddings ``(N, D)`` to scores ``(N,)``, L2-normalizing the input first."""

    in_features: int

    def head(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.dim() != 2 or embeddings.shape[-1] != self.in_features:
            raise ValueError(f"aesthetic head expects (N, {self.in_features}) embeddings, got "
                             f"{tuple(embeddings.shape)}")
        p = next(self.parameters())
        x = F.normalize(embeddings.to(device=p.device, dtype=p.dtype), dim=-1)
        return self.head(x).squeeze(-1)


class LinearAestheticHead(AestheticHead):
    """LAION aesthetic predictor v1: one linear layer."""

    def __init__(self, in_features: int):
        super().__init__()
        self.in_features = in_features
        self.linear = nn.Linear(in_features, 1)

    def head(self, x):
        return self.linear(x)


class MLPAestheticHead(AestheticHead):
    """Improved aesthetic predictor: Linear-Dropout-Linear-Dropout-Linear-Dropout-Linear-Linear."""

    def __init__(self, in_features: int = 768):
        super().__init__()
        self.in_features = in_features
        self.layers = nn.Sequential(
            nn.Linear(in_features, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def head(self, x):
        return self.layers(x)


def load_aesthetic_head(path: str | os.PathLike) -> AestheticHead:
    """Load a LAION linear head or the improved MLP (frozen, eval mode, float32, CPU)."""
    name = os.path.basename(str(path))
    known = AESTHETIC_HEADS.get(name)
    hint = f"aesthetic head; download: {known[2]}" if known else "aesthetic head"
    where = f"{path}"
    sd = strip_prefix(extract_state_dict(load_weights_file(path, hint=hint), where=where),
                      "module.")
    sd = {k: v.float() for k, v in sd.items()}
    if set(sd) == {"weight", "bias"} and sd["weight"].dim() == 2 and sd["weight"].shape[0] == 1:
        head = LinearAestheticHead(sd["weight"].shape[1])
        head.linear.load_state_dict(sd)
    elif "layers.0.weight" in sd and "layers.7.weight" in sd:
        head = MLPAestheticHead(sd["layers.0.weight"].shape[1])
        try:
            head.load_state_dict(sd)
        except RuntimeError as exc:
            raise WeightsFileError(f"{where} looks like the improved aesthetic MLP but does not "
                                   f"match its 768-1024-128-64-16-1 layout: {exc}") from None
    else:
        raise WeightsFileError(
            f"{where} is not a known aesthetic head: expected keys weight/bias (LAION linear) or "
            f"layers.0..7 (improved MLP), found {sorted(sd)[:8]}")
    return freeze(head)


class AestheticScorer(CropScorer):
    """The released DOODL aesthetic loss: the clamped scores of the crops are averaged per image,
    then ``-mean`` (maximize) or ``|mean - target|`` (crop reduction "auto"). With "min" or "mean"
    the per-crop losses ``-clamp(score)`` / ``|clamp(score) - target|`` are reduced instead (the
    same as "auto" for maximizing with "mean"; different with a target)."""

    #: the released code's reduction: mean of the clamped scores, then the loss
    official_reduction = "mean_score"

    def __init__(self, image_encoder: ImageEncoder, head: AestheticHead,
                 target: Optional[float] = None, clamp: bool = True, name: Optional[str] = None):
        if head.in_features != image_encoder.embed_dim:
            raise ValueError(
                f"the aesthetic head expects {head.in_features}-d CLIP embeddings but the backbone "
                f"{image_encoder.label} gives {image_encoder.embed_dim}-d: use OpenAI CLIP "
                f"ViT-L/14 for 768-d heads, ViT-B/32 for 512-d heads")
        if target is not None and not SCORE_RANGE[0] <= float(target) <= SCORE_RANGE[1]:
            raise ValueError(f"aesthetic target must be in [1, 10], got {target}")
        self.encoder = image_encoder
        self.head = freeze(head)
        self.target = None if target is None else float(target)
        self.clamp = clamp
        self.input_size = image_encoder.image_size
        goal = "maximize" if target is None else f"target {float(target):g}"
        self.name = name or f"aesthetic ({image_encoder.label}, {goal})"

    def raw_score(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(pixels)).float()

    def clamped_score(self, pixels: torch.Tensor) -> torch.Tensor:
        s = self.raw_score(pixels)
        return s.clamp(*SCORE_RANGE) if self.clamp else s

    def score_loss(self, s: torch.Tensor) -> torch.Tensor:
        return -s if self.target is None else (s - self.target).abs()

    def crop_loss(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.score_loss(self.clamped_score(pixels))

    def reduce_crop_loss(self, pixels: torch.Tensor, num_crops: int, reduction: str,
                         chunk: int = 0) -> torch.Tensor:
        if reduction != "mean_score":
            return super().reduce_crop_loss(pixels, num_crops, reduction, chunk)
        per_crop = chunked(self.clamped_score, pixels, chunk).float()
        return self.score_loss(reduce_over_crops(per_crop, num_crops, "mean"))

    def scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        check_images(images)
        with torch.no_grad():
            return {"aesthetic_score": self.raw_score(images).cpu()}

    def modules(self) -> list[nn.Module]:
        return unique(self.encoder.modules() + [self.head])

    def owned_modules(self) -> list[nn.Module]:
        return unique(([] if self.encoder.managed else self.encoder.modules()) + [self.head])

    def comfy_models(self) -> list:
        return unique(self.encoder.comfy_models())

    def to(self, device) -> "AestheticScorer":
        self.encoder.to(device)
        self.head.to(device)
        return self
