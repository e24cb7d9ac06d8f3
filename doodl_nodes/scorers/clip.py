"""CLIP scorers: text reinforcement (paper eq. 10) and image personalization (an ensemble).

* :class:`CLIPTextScorer`: ``loss = spherical_distance(E_img(crop), E_txt(prompt))`` per crop,
  reduced over crops (by default, ``auto``, the best crop, as the released DOODL code). Score: the cosine similarity
  of the whole image (CLIP's evaluation crop) with the prompt.
* :class:`CLIPImageScorer`: up to any number of image encoders with weights. Each encoder's target
  is the L2-normalized mean of the L2-normalized embeddings of the reference images (each
  center-cropped as CLIP evaluates). Per encoder the spherical distance is reduced over crops; the
  loss is the weighted mean ``sum_i w_i * d_i / sum_i w_i`` (the released code's formula). The paper
  uses ViT-B/32, L/14 and g/14 at 0.5/0.25/0.25; the released code only ever loaded B/32.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..core.crops import CropConfig, make_crops, resize_square
from ..core.losses import reduce_over_crops, spherical_distance
from .base import DEFAULT_CROPS, CropScorer, check_images, chunked, plain_tensor, unique
from .encoders import ImageEncoder, TextEncoder

__all__ = ["CLIPTextScorer", "CLIPImageScorer", "reference_embedding"]


def _distance(encoder: ImageEncoder, target: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    emb = encoder(pixels)
    return spherical_distance(emb, target.to(emb.device))


def _encoder_modules(encoders: Sequence[ImageEncoder], owned_only: bool) -> list:
    out = []
    for enc in encoders:
        if owned_only and enc.managed:
            continue
        out.extend(enc.modules())
    return unique(out)


class CLIPTextScorer(CropScorer):
    """Spherical distance between the image embedding and a fixed text embedding."""

    def __init__(self, image_encoder: ImageEncoder, text_embedding: torch.Tensor,
                 prompt: Optional[str] = None, name: Optional[str] = None):
        emb = torch.as_tensor(text_embedding).detach().float().reshape(-1)
        if emb.numel() != image_encoder.embed_dim:
            raise ValueError(
                f"the text embedding has {emb.numel()} dims but the image encoder "
                f"{image_encoder.label} gives {image_encoder.embed_dim}: both must come from the "
                f"same CLIP model (e.g. SDXL clip_g with clip_vision_g, both 1280-d)")
        self.encoder = image_encoder
        self.target = plain_tensor(F.normalize(emb, dim=-1))  # a normal tensor in any mode
        self.prompt = prompt
        self.input_size = image_encoder.image_size
        self.name = name or f"CLIP text ({image_encoder.label})"

    @classmethod
    def from_text(cls, image_encoder: ImageEncoder, text_encoder: TextEncoder, prompt: str,
                  name: Optional[str] = None) -> "CLIPTextScorer":
        return cls(image_encoder, text_encoder(prompt), prompt=prompt, name=name)

    def crop_loss(self, pixels: torch.Tensor) -> torch.Tensor:
        return _distance(self.encoder, self.target, pixels)

    def scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        check_images(images)
        with torch.no_grad():
            emb = self.encoder(images)
            target = self.target.to(emb.device)
            cos = F.cosine_similarity(emb, target.expand_as(emb), dim=-1)
            dist = spherical_distance(emb, target)
        return {"clip_cosine": cos.float().cpu(), "spherical_distance": dist.float().cpu()}

    def modules(self) -> list[torch.nn.Module]:
        return _encoder_modules([self.encoder], owned_only=False)

    def owned_modules(self) -> list[torch.nn.Module]:
        return _encoder_modules([self.encoder], owned_only=True)

    def comfy_models(self) -> list:
        return unique(self.encoder.comfy_models())

    def to(self, device) -> "CLIPTextScorer":
        self.encoder.to(device)
        self.target = self.target.to(device)
        return self


def reference_embedding(encoder: ImageEncoder, reference_images: torch.Tensor,
                        batch_size: int = 16) -> torch.Tensor:
    """Normalized mean of the normalized embeddings of ``reference_images`` ``(R, 3, H, W)``."""
    check_images(reference_images, "reference_images")
    if reference_images.shape[0] == 0:
        raise ValueError("reference_images is empty: give at least one reference image")
    with torch.inference_mode(False), torch.no_grad():
        embs = [F.normalize(encoder(chunk.detach().clone()), dim=-1)
                for chunk in reference_images.split(batch_size)]
        mean = torch.cat(embs).mean(dim=0)
        return plain_tensor(F.normalize(mean, dim=-1))


class CLIPImageScorer(CropScorer):
    """Weighted ensemble of spherical distances to per-encoder reference-image targets."""

    def __init__(self, encoders: Sequence[ImageEncoder], weights: Sequence[float],
                 reference_images: Optional[torch.Tensor] = None,
                 targets: Optional[Sequence[torch.Tensor]] = None, name: Optional[str] = None):
        encoders, weights = list(encoders), [float(w) for w in weights]
        if not encoders:
            raise ValueError("CLIPImageScorer needs at least one image encoder")
        if len(weights) != len(encoders):
            raise ValueError(f"{len(encoders)} encoders but {len(weights)} weights")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"encoder weights must be >= 0 with a positive sum, got {weights}")
        if targets is None:
            if reference_images is None:
                raise ValueError("give reference_images (or precomputed targets)")
            targets = [reference_embedding(enc, reference_images) for enc in encoders]
        self.targets = [plain_tensor(F.normalize(t.detach().float().reshape(-1), dim=-1))
                        for t in targets]
        for enc, t in zip(encoders, self.targets):
            if t.numel() != enc.embed_dim:
                raise ValueError(f"target for {enc.label} has {t.numel()} dims, expected "
                                 f"{enc.embed_dim}")
        self.encoders, self.weights = encoders, weights
        self.input_size = max(enc.image_size for enc in encoders)
        labels = ", ".join(f"{enc.label}×{w:g}" for enc, w in zip(encoders, weights))
        self.name = name or f"CLIP image ({labels})"

    def loss(self, images: torch.Tensor, crops: CropConfig = DEFAULT_CROPS,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        check_images(images)
        # One set of crops for every encoder: drawn at the largest input size, pooled down for
        # smaller ones (an area filter, like the crops themselves).
        pixels = make_crops(images, self.input_size, crops.num_crops, crops.cut_power, generator)
        reduction = self.crop_reduction(crops)
        total = None
        for enc, w, target in zip(self.encoders, self.weights, self.targets):
            if w == 0:
                continue
            px = pixels if enc.image_size == self.input_size else resize_square(pixels,
                                                                                enc.image_size)
            dist = chunked(functools.partial(_distance, enc, target), px, crops.chunk).float()
            per_image = reduce_over_crops(dist, max(crops.num_crops, 1), reduction)
            per_image = per_image.to(images.device) * w
            total = per_image if total is None else total + per_image
        return (total / sum(self.weights)).float()

    def scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        check_images(images)
        out, weighted = {}, 0.0
        with torch.no_grad():
            for i, (enc, w, target) in enumerate(zip(self.encoders, self.weights, self.targets)):
                emb = enc(images)
                cos = F.cosine_similarity(emb, target.to(emb.device).expand_as(emb), dim=-1)
                out[f"clip_image_cosine_{i + 1}"] = cos.float().cpu()
                weighted = weighted + w * out[f"clip_image_cosine_{i + 1}"]
        out["clip_image_cosine"] = weighted / sum(self.weights)
        return out

    def modules(self) -> list[torch.nn.Module]:
        return _encoder_modules(self.encoders, owned_only=False)

    def owned_modules(self) -> list[torch.nn.Module]:
        return _encoder_modules(self.encoders, owned_only=True)

    def comfy_models(self) -> list:
        return unique(m for enc in self.encoders for m in enc.comfy_models())

    def to(self, device) -> "CLIPImageScorer":
        for enc in self.encoders:
            enc.to(device)
        self.targets = [t.to(device) for t in self.targets]
        return self
