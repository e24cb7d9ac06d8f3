"""Differentiable multi-crop augmentation (DOODL's ``MakeCutouts``).

Each crop is a random square whose side is ``rand() ** cut_power * (max - min) + min`` pixels, at a
random offset, average-pooled to the scorer's input size. ``cut_power < 1`` favours large crops. The
crop layout is drawn once per call from ``generator``, so a call is a deterministic, differentiable
function of the pixels given the generator state. ``num_crops = 0`` means no augmentation: the whole
image is resized (area-averaged when shrinking, bilinear when enlarging) to ``cut_size``.

Output layout is crop-major: ``(num_crops * B, C, cut_size, cut_size)`` where rows
``k * B .. k * B + B - 1`` are crop ``k`` of every image. ``reduce_over_crops`` in ``losses.py``
undoes that layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["CropConfig", "resize_square", "make_crops", "crop_boxes", "crops_from_boxes"]


@dataclass(frozen=True)
class CropConfig:
    """How a scorer augments images: ``num_crops`` random crops (0 = none, just resize) whose size
    follows ``cut_power``; per-crop losses are reduced per image with ``reduction`` ("min" as the
    released DOODL code, or "mean"). Defaults are the DOODL ``gen()`` values (16 crops, 0.3)."""

    num_crops: int = 16
    cut_power: float = 0.3
    reduction: str = "min"

    def __post_init__(self):
        if self.num_crops < 0:
            raise ValueError(f"num_crops must be >= 0, got {self.num_crops}")
        if not self.cut_power > 0:
            raise ValueError(f"cut_power must be > 0, got {self.cut_power}")
        if self.reduction not in ("min", "mean"):
            raise ValueError(f"crop reduction must be 'min' or 'mean', got {self.reduction!r}")


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiably resize ``(B, C, H, W)`` images to ``(B, C, size, size)``.

    Shrinking uses adaptive average pooling (an exact box filter, as the reference code does for
    crops); enlarging uses bilinear interpolation. Non-square inputs are stretched, matching a plain
    ``Resize((size, size))``.
    """
    _check_images(images)
    h, w = images.shape[-2:]
    if h >= size and w >= size:
        return F.adaptive_avg_pool2d(images, size)
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=False)


def crop_boxes(height: int, width: int, cut_size: int, num_crops: int, cut_power: float,
               generator: Optional[torch.Generator] = None) -> list[tuple[int, int, int]]:
    """Draw ``num_crops`` square boxes ``(top, left, side)`` inside a ``height x width`` image."""
    if num_crops < 0:
        raise ValueError(f"num_crops must be >= 0, got {num_crops}")
    if not cut_power > 0:
        raise ValueError(f"cut_power must be > 0, got {cut_power}")
    max_size = min(height, width)
    min_size = min(height, width, cut_size)
    boxes = []
    for _ in range(num_crops):
        u = float(torch.rand((), generator=generator))
        side = int(u ** cut_power * (max_size - min_size) + min_size)
        side = max(1, min(side, max_size))
        left = int(torch.randint(0, width - side + 1, (), generator=generator))
        top = int(torch.randint(0, height - side + 1, (), generator=generator))
        boxes.append((top, left, side))
    return boxes


def make_crops(images: torch.Tensor, cut_size: int, num_crops: int = 16, cut_power: float = 0.3,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random square crops of ``images`` pooled to ``cut_size`` (crop-major layout).

    ``num_crops == 0`` returns ``resize_square(images, cut_size)`` (one "crop": the whole image).
    """
    _check_images(images)
    if cut_size < 1:
        raise ValueError(f"cut_size must be >= 1, got {cut_size}")
    if num_crops == 0:
        return resize_square(images, cut_size)
    h, w = images.shape[-2:]
    return crops_from_boxes(images, crop_boxes(h, w, cut_size, num_crops, cut_power, generator),
                            cut_size)


def crops_from_boxes(images: torch.Tensor, boxes, cut_size: int) -> torch.Tensor:
    """The crops ``boxes`` (``(top, left, side)`` each) of every image, pooled to ``cut_size``,
    crop-major: ``(len(boxes) * B, C, cut_size, cut_size)``."""
    out = [resize_square(images[:, :, top:top + side, left:left + side], cut_size)
           for top, left, side in boxes]
    return torch.cat(out, dim=0)


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}")
