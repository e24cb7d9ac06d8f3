"""The scorer contract: what flows through the ``DOODL_SCORER`` socket.

A scorer maps images ``(B, 3, H, W)`` in ``[0, 1]`` (any device, any float dtype) to a per-image loss
``(B,)`` float32 that is differentiable with respect to the pixels, and reports human-meaningful
metrics through :meth:`DoodlScorer.scores`. Scorers never clamp the pixels (clamping kills the
gradient; do it upstream, straight-through, if you need it) and never build gradients on weights:
every weight is frozen (``requires_grad_(False)``).

Multi-crop comes from the core: :class:`CropScorer` draws crops with
``doodl_nodes.core.crops.make_crops`` (per image, crop-major layout) at the model's input size,
evaluates a per-crop loss, and reduces it per image with ``doodl_nodes.core.losses.reduce_over_crops``
or the scorer's own released reduction (``CropConfig.reduction == "auto"``).
``CropConfig(num_crops=0)`` means no crops: the whole image, differentiably resized.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..core.crops import CropConfig, crops_from_boxes, image_crop_boxes, make_crops, resize_square
from ..core.losses import reduce_over_crops

__all__ = ["DoodlScorer", "CropScorer", "DEFAULT_CROPS", "check_images", "plain_tensor",
           "freeze", "unique", "chunked"]

DEFAULT_CROPS = CropConfig()


def check_images(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Validate a ``(B, 3, H, W)`` floating-point image batch and return it unchanged."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor in [0, 1], got {images.dtype}")
    return images


def plain_tensor(t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A detached clone made outside inference mode (safe to keep and to use under autograd)."""
    with torch.inference_mode(False):
        return t.detach().to(dtype=dtype).clone()


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and ``requires_grad_(False)`` on every parameter."""
    module.eval()
    module.requires_grad_(False)
    return module


def chunked(fn, pixels: torch.Tensor, chunk: int) -> torch.Tensor:
    """``fn(pixels)`` (rows independent), evaluated in chunks of ``chunk`` rows whose activations
    are recomputed in the backward pass (``torch.utils.checkpoint``) when a gradient is being
    recorded: the same values and gradients with one chunk's activation memory. ``chunk <= 0``, no
    grad, or a batch that fits one chunk: a plain call."""
    if chunk <= 0 or pixels.shape[0] <= chunk or not (torch.is_grad_enabled() and pixels.requires_grad):
        return fn(pixels)
    from torch.utils.checkpoint import checkpoint

    return torch.cat([checkpoint(fn, part, use_reentrant=False) for part in pixels.split(chunk)])


def unique(items) -> list:
    """Drop repeated objects (by identity), keeping order."""
    seen, out = set(), []
    for item in items:
        if id(item) not in seen:
            seen.add(id(item))
            out.append(item)
    return out


class DoodlScorer:
    """Base class of every scorer. Subclasses implement :meth:`loss` and :meth:`scores`."""

    name: str = "scorer"

    def loss(self, images: torch.Tensor, crops: CropConfig = DEFAULT_CROPS,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Per-image loss ``(B,)`` float32, differentiable w.r.t. ``images``."""
        raise NotImplementedError

    def scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Human-meaningful metrics, each ``(B,)`` float32, on the whole image (no crops)."""
        raise NotImplementedError

    def modules(self) -> list[torch.nn.Module]:
        """Every torch module whose weights this scorer uses (owned or ComfyUI-managed)."""
        return []

    def owned_modules(self) -> list[torch.nn.Module]:
        """The modules this scorer moves itself in :meth:`to` (ComfyUI moves its own models)."""
        return self.modules()

    def comfy_models(self) -> list:
        """Opaque ComfyUI objects (e.g. CLIP_VISION ModelPatchers) the bridge must load."""
        return []

    def to(self, device) -> "DoodlScorer":
        """Move owned modules (and target tensors) to ``device``; inputs are cast internally."""
        for module in self.owned_modules():
            module.to(device)
        return self

    def __call__(self, images: torch.Tensor, crops: CropConfig = DEFAULT_CROPS,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.loss(images, crops, generator)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class CropScorer(DoodlScorer):
    """A scorer whose loss is a per-crop loss at a fixed square input size, reduced per image.

    Subclasses set :attr:`input_size` and :attr:`official_reduction` and implement
    :meth:`crop_loss` (``(N, 3, S, S)`` -> ``(N,)``); :meth:`loss` draws the crops and reduces them
    with the reduction the ``CropConfig`` asks for ("auto" = :attr:`official_reduction`, the released
    code's). Subclasses whose released reduction is not a plain min/mean of per-crop losses
    override :meth:`reduce_crop_loss` for it.
    """

    input_size: int = 224
    #: what ``CropConfig.reduction == "auto"`` means for this scorer (the released code's choice)
    official_reduction: str = "min"

    def crop_loss(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def crop_reduction(self, crops: CropConfig) -> str:
        """The reduction this scorer applies for ``crops`` ("auto" resolved)."""
        return self.official_reduction if crops.reduction == "auto" else crops.reduction

    def loss(self, images: torch.Tensor, crops: CropConfig = DEFAULT_CROPS,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        check_images(images)
        reduction = self.crop_reduction(crops)
        if (reduction == "min" and crops.num_crops > 1 and torch.is_grad_enabled()
                and images.requires_grad):
            return self._min_crop_loss(images, crops, generator)
        pixels = make_crops(images, self.input_size, crops.num_crops, crops.cut_power, generator)
        return self.reduce_crop_loss(pixels, max(crops.num_crops, 1), reduction, crops.chunk).to(
            device=images.device, dtype=torch.float32)

    def _min_crop_loss(self, images: torch.Tensor, crops: CropConfig,
                       generator: Optional[torch.Generator]) -> torch.Tensor:
        """Min over crops with a gradient: only the best crop of each image receives one, so every
        crop is scored without grad and just the best one again with grad: the same loss and
        gradient for 1/num_crops of the scorer's activation memory."""
        b = images.shape[0]
        boxes = image_crop_boxes(images, self.input_size, crops.num_crops, crops.cut_power,
                                 generator)
        with torch.no_grad():
            per_crop = self.crop_loss(crops_from_boxes(images.detach(), boxes, self.input_size))
        best = per_crop.float().reshape(crops.num_crops, b).argmin(dim=0).tolist()
        chosen = torch.cat([crops_from_boxes(images[i:i + 1], [[boxes[i][k]]], self.input_size)
                            for i, k in enumerate(best)])
        return self.crop_loss(chosen).float().to(device=images.device)

    def reduce_crop_loss(self, pixels: torch.Tensor, num_crops: int, reduction: str,
                         chunk: int = 0) -> torch.Tensor:
        """Per-image loss ``(B,)`` from crop-major crops ``pixels`` (``num_crops`` per image)."""
        per_crop = chunked(self.crop_loss, pixels, chunk).float()
        return reduce_over_crops(per_crop, num_crops, reduction)

    def resize_whole(self, images: torch.Tensor) -> torch.Tensor:
        """The no-crop view of the images at the input size (what ``num_crops=0`` scores)."""
        return resize_square(check_images(images), self.input_size)
