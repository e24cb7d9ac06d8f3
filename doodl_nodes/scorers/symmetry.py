"""Symmetry scorer: mean squared difference between the image and its mirror image.

The released DOODL code's "fun throw-in": ``MSE(im, im.flip(-1))`` (left-right). There it acts on
the VAE output in [-1, 1]; here images are in [0, 1], so the same learning rate moves 4x less.
Crops are ignored (a random crop of a symmetric image is not symmetric). Loss 0 = perfectly symmetric.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..core.crops import CropConfig
from .base import DEFAULT_CROPS, DoodlScorer, check_images

__all__ = ["SymmetryScorer", "SYMMETRY_AXES"]

#: axis name -> the image dimension that is flipped
SYMMETRY_AXES = {"left-right": -1, "top-bottom": -2}


class SymmetryScorer(DoodlScorer):
    """Per-image ``mean((x - flip(x)) ** 2)`` over channels and pixels."""

    def __init__(self, axis: str = "left-right", name: Optional[str] = None):
        if axis not in SYMMETRY_AXES:
            raise ValueError(f"axis must be one of {sorted(SYMMETRY_AXES)}, got {axis!r}")
        self.axis = axis
        self.name = name or f"symmetry ({axis})"

    def loss(self, images: torch.Tensor, crops: CropConfig = DEFAULT_CROPS,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        x = check_images(images).float()
        return (x - x.flip(SYMMETRY_AXES[self.axis])).pow(2).mean(dim=(1, 2, 3))

    def scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"symmetry_mse": self.loss(images).cpu()}
