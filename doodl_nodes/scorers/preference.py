"""What the human-preference rewards (PickScore, HPSv2/2.1, ImageReward) share.

Each reward model scores an image against a prompt; :class:`PreferenceScorer` turns that score
into a DOODL loss:

* ``loss = -score`` (maximize, the default) or ``|score - target|``, per crop, reduced over crops
  (``auto`` = the mean: the models were trained on whole images, and DOODL's released code has no
  choice for them; ReNO scores the whole image once).
* ``CropConfig(num_crops=0)`` scores the whole image with **the model's own preprocessing**
  (:meth:`PreferenceScorer.fit`): the score is then exactly what the published package computes
  (up to resampling: ours is a differentiable bicubic on the float tensor, theirs PIL's on 8-bit
  images). Crops are drawn by the core at the model's input size, as for every other scorer.
* ``scores()`` reports the published score of the whole image under the scorer's ``score_name``.

Differentiable preprocessing shared by the models lives here too: :func:`resize_longest_pad`
(HPSv2's ``ResizeMaxSize``: longest side to the input size, zero padding to a square) next to
``preprocess.resize_center_crop`` (CLIP's and BLIP's shorter side + center crop).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..core.crops import CropConfig
from .base import DEFAULT_CROPS, CropScorer, check_images, plain_tensor, unique
from .preprocess import resize_center_crop

__all__ = ["PreferenceScorer", "resize_longest_pad", "unit_text_embedding", "GOALS"]

GOALS = ("maximize", "target")


def resize_longest_pad(images: torch.Tensor, size: int, fill: float = 0.0) -> torch.Tensor:
    """HPSv2's evaluation resize, differentiably: scale so the *longer* side is ``size`` (bicubic,
    antialiased, as torchvision resizes a float tensor), then pad the shorter side with ``fill``
    (0 = black, before normalization) to a centered ``size x size`` square. Float32 out; an input
    already at ``size x size`` is returned unchanged (as float32)."""
    x = images.float()
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    scale = size / max(h, w)
    new_h, new_w = round(h * scale), round(w * scale)
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    pad_h, pad_w = size - new_h, size - new_w
    if pad_h or pad_w:
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)
    return x


def unit_text_embedding(text_embedding, image_encoder) -> torch.Tensor:
    """A prompt's embedding as a flat unit vector, checked against the image encoder's width."""
    emb = torch.as_tensor(text_embedding).detach().float().reshape(-1)
    if emb.numel() != image_encoder.embed_dim:
        raise ValueError(f"the text embedding has {emb.numel()} dims but the image encoder "
                         f"{image_encoder.label} gives {image_encoder.embed_dim}")
    return plain_tensor(F.normalize(emb, dim=-1))


class PreferenceScorer(CropScorer):
    """A reward model ``score(image, prompt)`` as a DOODL loss. Subclasses set ``input_size`` and
    ``score_name`` and implement :meth:`score_pixels` (``(N, 3, S, S)`` in [0, 1] at the input
    size -> ``(N,)`` float32 scores); :meth:`fit` is the model's own resize (default: shorter side
    + center crop)."""

    official_reduction = "mean"
    score_name = "score"

    def __init__(self, prompt: str, target: Optional[float] = None, name: Optional[str] = None,
                 label: Optional[str] = None):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty: give the text the image should match")
        self.prompt = prompt
        self.target = None if target is None else float(target)
        goal = "maximize" if target is None else f"target {float(target):g}"
        self.name = name or f"{self.score_name} ({label + ', ' if label else ''}{goal})"

    # -------------------------------------------------------------------- to implement

    def score_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fit(self, images: torch.Tensor) -> torch.Tensor:
        """The model's own evaluation resize of whole images to ``input_size`` (differentiable)."""
        return resize_center_crop(images, self.input_size)

    # -------------------------------------------------------------------- the loss

    def score_loss(self, score: torch.Tensor) -> torch.Tensor:
        return -score if self.target is None else (score - self.target).abs()

    def crop_loss(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.score_loss(self.score_pixels(pixels))

    def loss(self, images: torch.Tensor, crops: CropConfig = DEFAULT_CROPS,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        check_images(images)
        if crops.num_crops == 0:  # the whole image, preprocessed as the model was evaluated
            return self.crop_loss(self.fit(images)).float().to(images.device)
        return super().loss(images, crops, generator)

    def scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        check_images(images)
        with torch.no_grad():
            return {self.score_name: self.score_pixels(self.fit(images)).float().cpu()}

    # -------------------------------------------------------------------- modules

    def modules(self) -> list[torch.nn.Module]:
        return unique(self._modules())

    def _modules(self) -> list[torch.nn.Module]:
        raise NotImplementedError

    def owned_modules(self) -> list[torch.nn.Module]:
        return self.modules()

    def to(self, device) -> "PreferenceScorer":
        for module in self.owned_modules():
            module.to(device)
        return self
