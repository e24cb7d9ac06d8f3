"""Losses on embeddings and their reduction over multi-crops.

``spherical_distance`` is the paper's eq. 10 as the released DOODL code computes it
(``2 * arcsin(|x̂ - ŷ| / 2) ** 2`` on L2-normalized embeddings; the squared great-circle half-angle,
up to the constant 2). The paper's text renders the power as a square root, which is a typesetting
slip: the released code, and the CLIP-guided diffusion code it cites, square it. The paper's
``λ`` is DOODL's learning rate (``DoodlConfig.lr``) and is not part of this function.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["spherical_distance", "reduce_over_crops", "CROP_REDUCTIONS"]

CROP_REDUCTIONS = ("min", "mean")


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``2 * arcsin(|â - b̂| / 2) ** 2`` along the last dim (inputs broadcast; need not be unit).

    Ranges from 0 (same direction) to ``pi ** 2 / 2`` (opposite directions).
    """
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    half_chord = (a - b).norm(dim=-1).div(2)
    # clamp keeps arcsin's gradient finite for exactly antipodal vectors (|a-b|/2 == 1)
    return half_chord.clamp(max=1.0).arcsin().pow(2).mul(2)


def reduce_over_crops(values: torch.Tensor, num_crops: int, reduction: str = "min") -> torch.Tensor:
    """Reduce per-crop values in crop-major layout ``(num_crops * B,)`` to per-image ``(B,)``.

    ``reduction="min"`` keeps the best crop per image (the released DOODL code's CLIP losses);
    ``"mean"`` averages the crops (its WS-DAN loss; HF CLIP-guided diffusion). ``num_crops <= 1`` is
    a no-op. A scorer resolves the "auto" choice of ``CropConfig`` to one of these first.
    """
    if reduction not in CROP_REDUCTIONS:
        raise ValueError(f"crop reduction must be one of {CROP_REDUCTIONS}, got {reduction!r}")
    if num_crops <= 1:
        return values
    if values.shape[0] % num_crops:
        raise ValueError(f"{values.shape[0]} values cannot be split into {num_crops} crops")
    grid = values.reshape(num_crops, values.shape[0] // num_crops, *values.shape[1:])
    return grid.amin(dim=0) if reduction == "min" else grid.mean(dim=0)
