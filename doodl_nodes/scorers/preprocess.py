"""Differentiable image preprocessing shared by the scorers.

``resize_center_crop`` is CLIP's evaluation transform (resize the shorter side with bicubic
antialiasing, then center crop, with torchvision's size and offset arithmetic), written with
``F.interpolate`` so the gradient reaches the pixels.
Unlike ComfyUI's ``clip_preprocess`` it does not quantize to 8 bits (``.round()`` has no gradient).
An input already at ``size x size`` is passed through unchanged.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["resize_center_crop", "normalize", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD",
           "IMAGENET_MEAN", "IMAGENET_STD"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic-antialias resize of the shorter side to ``size``, then a centered ``size`` crop.

    Computed in float32 (bicubic antialias is not implemented for every half dtype) and returned
    in float32.
    """
    x = images.float()
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    # torchvision's Resize(size) / CenterCrop(size) arithmetic (what CLIP, BLIP and ImageReward
    # evaluate with): the longer side is truncated, the crop offset rounded
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True,
                          align_corners=False)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return x[:, :, top:top + size, left:left + size]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel, in the dtype of ``images``."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s
