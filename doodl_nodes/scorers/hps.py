"""Human Preference Score v2 / v2.1 (Wu et al. 2023): an open_clip ViT-H-14 fine-tuned on HPDv2.

Published files: ``HPS_v2_compressed.pt`` and ``HPS_v2.1_compressed.pt`` (Hugging Face
``xswu/HPSv2``), each a dict whose ``state_dict`` is the open_clip ``ViT-H-14`` model (the same
key layout as open_clip's own checkpoints; read here with the safe loader and open_clip's
checkpoint conversion). The ``hpsv2`` package scores an image as::

    image = normalize(pad_to_square(resize_longest_side(to_tensor(pil), 224), fill=0))
    score = <E_img(image) / |E_img|, E_txt(prompt) / |E_txt|>     # about 0.2..0.35

(``create_model_and_transforms(..., light_augmentation=True)``: ``ResizeMaxSize`` on the float
tensor, OpenAI CLIP mean/std, the open_clip tokenizer). :class:`HPSScorer` computes the same, with
the resize done differentiably (``preference.resize_longest_pad``); ReNO's HPS loss is
``1 - score`` (weight 5.0), i.e. this loss plus a constant.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F

from .clip_models import ClipBundle, load_open_clip
from .encoders import ImageEncoder
from .preference import PreferenceScorer, unit_text_embedding, resize_longest_pad

__all__ = ["HPSScorer", "load_hps", "HPS_ARCH", "HPS_FILES", "HPS_SOURCE"]

HPS_ARCH = "ViT-H-14"
HPS_SOURCE = "huggingface.co/xswu/HPSv2"
#: published checkpoint name -> download URL
HPS_FILES = {
    "HPS_v2.1_compressed.pt": "https://huggingface.co/xswu/HPSv2/resolve/main/HPS_v2.1_compressed.pt",
    "HPS_v2_compressed.pt": "https://huggingface.co/xswu/HPSv2/resolve/main/HPS_v2_compressed.pt",
}


def load_hps(path: str | os.PathLike, architecture: str = HPS_ARCH, dtype="fp32") -> ClipBundle:
    """An HPSv2/v2.1 checkpoint on its open_clip architecture (ViT-H-14 for the published ones)."""
    return load_open_clip(architecture, checkpoint=path, dtype=dtype)


class HPSScorer(PreferenceScorer):
    """The cosine of the normalized image and prompt embeddings of an HPS model (``hpsv2.score``)."""

    score_name = "hps"

    def __init__(self, image_encoder: ImageEncoder, text_embedding: torch.Tensor, prompt: str,
                 target: Optional[float] = None, name: Optional[str] = None):
        super().__init__(prompt, target, name, label=image_encoder.label)
        self.encoder = image_encoder
        self.text = unit_text_embedding(text_embedding, image_encoder)
        self.input_size = image_encoder.image_size

    @classmethod
    def from_bundle(cls, bundle: ClipBundle, prompt: str,
                    target: Optional[float] = None) -> "HPSScorer":
        if bundle.text is None:
            raise ValueError(f"{bundle.label} has no text tower")
        with torch.inference_mode(False):
            return cls(bundle.image, bundle.text(prompt), prompt, target)

    def fit(self, images: torch.Tensor) -> torch.Tensor:
        return resize_longest_pad(images, self.input_size, fill=0.0)

    def score_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(self.encoder(pixels), dim=-1)
        return emb @ self.text.to(emb.device)

    def _modules(self) -> list[torch.nn.Module]:
        return self.encoder.modules()

    def to(self, device) -> "HPSScorer":
        self.encoder.to(device)
        self.text = self.text.to(device)
        return self
