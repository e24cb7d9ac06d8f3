"""Differentiable multi-crop augmentation (DOODL's ``MakeCutouts``).

Each crop is a random square whose side is ``rand() ** cut_power * (max - min) + min`` pixels, at a
random offset, average-pooled to the scorer's input size. ``cut_power < 1`` favours large crops. Each
image gets its own crops, drawn image after image from ``generator`` (per crop: the size, then the x
and the y offset), exactly as the released code draws them when it calls its loss once per EDICT
image; so a call is a deterministic, differentiable function of the pixels given the generator
state. ``num_crops = 0`` means no augmentation: the whole image is resized (area-averaged when
shrinking, bilinear when enlarging) to ``cut_size``.

Output layout is crop-major: ``(num_crops * B, C, cut_size, cut_size)`` where rows
``k * B .. k * B + B - 1`` are crop ``k`` of every image. ``reduce_over_crops`` in ``losses.py``
undoes that layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["CropConfig", "CROP_CHOICES", "resize_square", "make_crops", "crop_boxes",
           "image_crop_boxes", "crops_from_boxes"]

#: what a user may ask for: each scorer's released reduction ("auto"), or one for all
CROP_CHOICES = ("auto", "min", "mean")


@dataclass(frozen=True)
class CropConfig:
    """How a scorer augments images: ``num_crops`` random crops (0 = none, just resize) whose size
    follows ``cut_power``; the crops are combined per image by ``reduction``: "auto" (each scorer's
    own reduction in the released code: the best crop for CLIP, the mean score for the aesthetic
    head, the mean cross-entropy for WS-DAN), "min" (the best crop's loss) or "mean" (the mean
    loss). Defaults are the DOODL ``gen()`` values (16 crops, 0.3)."""

    num_crops: int = 16
    cut_power: float = 0.3
    reduction: str = "auto"
    #: back-propagate the crops in chunks of this many (0: all at once): each chunk's scorer
    #: activations are recomputed in the backward pass instead of kept, so the scorer's memory is
    #: that of one chunk; values and gradients are unchanged, the cost is one more scorer forward
    chunk: int = 0

    def __post_init__(self):
        if self.num_crops < 0:
            raise ValueError(f"num_crops must be >= 0, got {self.num_crops}")
        if self.chunk < 0:
            raise ValueError(f"chunk must be >= 0, got {self.chunk}")
        if not self.cut_power > 0:
            raise ValueError(f"cut_power must be > 0, got {self.cut_power}")
        if self.reduction not in CROP_CHOICES:
            raise ValueError(f"crop reduction must be one of {CROP_CHOICES}, got {self.reduction!r}")


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


def image_crop_boxes(images: torch.Tensor, cut_size: int, num_crops: int, cut_power: float,
                     generator: Optional[torch.Generator] = None) -> list[list[tuple[int, int, int]]]:
    """``num_crops`` boxes for each image of the batch (a list per image), drawn image after image."""
    h, w = images.shape[-2:]
    return [crop_boxes(h, w, cut_size, num_crops, cut_power, generator)
            for _ in range(images.shape[0])]


def make_crops(images: torch.Tensor, cut_size: int, num_crops: int = 16, cut_power: float = 0.3,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random square crops of ``images``, drawn per image, pooled to ``cut_size`` (crop-major).

    ``num_crops == 0`` returns ``resize_square(images, cut_size)`` (one "crop": the whole image).
    """
    _check_images(images)
    if cut_size < 1:
        raise ValueError(f"cut_size must be >= 1, got {cut_size}")
    if num_crops == 0:
        return resize_square(images, cut_size)
    return crops_from_boxes(images, image_crop_boxes(images, cut_size, num_crops, cut_power,
                                                     generator), cut_size)


def crops_from_boxes(images: torch.Tensor, boxes: list[list[tuple[int, int, int]]],
                     cut_size: int) -> torch.Tensor:
    """Crop ``k`` of image ``i`` is ``boxes[i][k]`` (``(top, left, side)``), pooled to ``cut_size``;
    crop-major: ``(num_crops * B, C, cut_size, cut_size)``. Every image needs the same number."""
    if len(boxes) != images.shape[0] or len({len(b) for b in boxes}) > 1:
        raise ValueError(f"need one list of boxes (all of one length) per image: {images.shape[0]} "
                         f"images, {[len(b) for b in boxes]} boxes")
    out = []
    for k in range(len(boxes[0])):
        for i, per_image in enumerate(boxes):
            top, left, side = per_image[k]
            out.append(resize_square(images[i:i + 1, :, top:top + side, left:left + side], cut_size))
    return torch.cat(out, dim=0)


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}")
