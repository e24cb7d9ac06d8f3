"""Image encoders: ``images in [0, 1] -> CLIP image embeddings``, differentiably.

An :class:`ImageEncoder` owns the preprocessing of its model: a differentiable bicubic-antialias
resize of the shorter side plus a center crop to ``image_size`` (a no-op for crops already at that
size), normalization with the model's mean/std, and the cast to the model's device and dtype. It
returns unnormalized embeddings ``(N, D)`` in float32.

Implementations here wrap open_clip models (:class:`OpenCLIPImageEncoder`) and transformers CLIP
vision towers (:class:`HFCLIPImageEncoder`). The ComfyUI ``CLIP_VISION`` wrapper lives in
``doodl_nodes.bridge.clip_vision`` (it is the only one that touches ComfyUI) and subclasses
:class:`ImageEncoder` with ``managed = True``: ComfyUI, not the scorer, moves its weights.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .base import freeze
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize, resize_center_crop

__all__ = ["ImageEncoder", "OpenCLIPImageEncoder", "HFCLIPImageEncoder", "TextEncoder",
           "module_device", "module_dtype"]


def module_device(module: torch.nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    for t in module.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


class ImageEncoder:
    """Base class: preprocessing + ``encode_pixels`` (normalized pixels -> embeddings)."""

    #: True when ComfyUI manages (loads, moves) the weights; the scorer then never moves them.
    managed: bool = False

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float],
                 embed_dim: int, label: str):
        self.image_size = int(image_size)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.embed_dim = int(embed_dim)
        self.label = label

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 1] -> ``(N, embed_dim)`` float32 (not L2-normalized)."""
        pixels = normalize(resize_center_crop(images, self.image_size), self.mean, self.std)
        return self.encode_pixels(pixels).float()

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def modules(self) -> list[torch.nn.Module]:
        return []

    def comfy_models(self) -> list:
        return []

    def to(self, device) -> "ImageEncoder":
        if not self.managed:
            for module in self.modules():
                module.to(device)
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} {self.image_size}px {self.embed_dim}-d>"


class OpenCLIPImageEncoder(ImageEncoder):
    """The image tower of an open_clip ``CLIP``/``CustomTextCLIP`` (``model.visual``)."""

    def __init__(self, model: torch.nn.Module, label: str = "open_clip"):
        visual = model.visual
        cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
        size = cfg.get("size", getattr(visual, "image_size", 224))
        if isinstance(size, (tuple, list)):
            if len(set(size)) != 1:
                raise ValueError(f"{label}: non-square input size {tuple(size)} is not supported")
            size = size[0]
        embed_dim = getattr(visual, "output_dim", None)
        if embed_dim is None:
            with torch.no_grad():
                dummy = torch.zeros(1, 3, size, size, dtype=module_dtype(visual))
                embed_dim = visual(dummy).shape[-1]
        super().__init__(size, cfg.get("mean", OPENAI_CLIP_MEAN), cfg.get("std", OPENAI_CLIP_STD),
                         embed_dim, label)
        self.visual = freeze(visual)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        v = self.visual
        out = v(pixels.to(device=module_device(v), dtype=module_dtype(v)))
        if isinstance(out, (tuple, list)):  # some towers return (pooled, tokens)
            out = out[0]
        return out

    def modules(self) -> list[torch.nn.Module]:
        return [self.visual]


class HFCLIPImageEncoder(ImageEncoder):
    """A transformers CLIP vision tower plus its ``visual_projection``."""

    def __init__(self, vision_model: torch.nn.Module, visual_projection: torch.nn.Module,
                 image_size: int, mean: Sequence[float] = OPENAI_CLIP_MEAN,
                 std: Sequence[float] = OPENAI_CLIP_STD, label: str = "transformers CLIP"):
        super().__init__(image_size, mean, std, visual_projection.weight.shape[0], label)
        self.vision_model = freeze(vision_model)
        self.visual_projection = freeze(visual_projection)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        vm = self.vision_model
        out = vm(pixel_values=pixels.to(device=module_device(vm), dtype=module_dtype(vm)))
        pooled = out.pooler_output if hasattr(out, "pooler_output") else out[1]
        return self.visual_projection(pooled)

    def modules(self) -> list[torch.nn.Module]:
        return [self.vision_model, self.visual_projection]


class TextEncoder:
    """``prompt -> (D,)`` float32 text embedding (not L2-normalized), computed without grad."""

    def __init__(self, fn: Callable[[str], torch.Tensor], embed_dim: int, label: str,
                 modules: Optional[list[torch.nn.Module]] = None):
        self._fn = fn
        self.embed_dim = int(embed_dim)
        self.label = label
        self._modules = list(modules or [])

    def __call__(self, prompt: str) -> torch.Tensor:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty: give the text the image should match")
        with torch.inference_mode(False), torch.no_grad():
            return self._fn(prompt).detach().float().reshape(-1).clone()

    def modules(self) -> list[torch.nn.Module]:
        return list(self._modules)
