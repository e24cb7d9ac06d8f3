"""PickScore (Kirstain et al. 2023): a CLIP-H/14 fine-tuned on Pick-a-Pic human preferences.

Published layout: the Hugging Face repository ``yuvalkirstain/PickScore_v1``, a transformers
``CLIPModel`` folder (``config.json`` + weights), used with the processor of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (shorter side to 224 with bicubic resampling, center
crop 224, OpenAI CLIP mean/std; the CLIP BPE tokenizer, 77 tokens). The published score::

    score = exp(logit_scale) * cos(E_img(image), E_txt(prompt))      # about 18..24 for SD images

:class:`PickScoreScorer` computes exactly that, differentiably (see ``preference.py`` for the loss,
crops and preprocessing). With a plain CLIP folder instead of PickScore the same formula is the
logit-scaled CLIP score ReNO uses as its "CLIP" reward (``100 - score``, weight 0.01).
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F

from .clip_models import ClipBundle, load_clip_folder
from .encoders import ImageEncoder, TextEncoder
from .preference import PreferenceScorer, unit_text_embedding
from .weights import WeightsFileError

__all__ = ["PickScoreScorer", "load_pickscore", "PICKSCORE_REPO", "PICKSCORE_FOLDER",
           "PICKSCORE_FILES"]

PICKSCORE_REPO = "yuvalkirstain/PickScore_v1"
#: the folder name under models/doodl/clip a download creates
PICKSCORE_FOLDER = "PickScore_v1"
#: what a download fetches: the config and the first weights file the repository has
PICKSCORE_FILES = (("config.json",), ("model.safetensors", "pytorch_model.bin"))


def load_pickscore(folder: str | os.PathLike, dtype="fp32") -> ClipBundle:
    """A CLIP model folder (transformers or open_clip layout) with its text tower and logit scale."""
    bundle = load_clip_folder(folder, dtype=dtype)
    if bundle.text is None or bundle.logit_scale is None:
        raise WeightsFileError(
            f"{folder} is an image-only CLIP model: PickScore needs a full CLIP model (image and "
            f"text towers and a logit scale), e.g. a copy of huggingface.co/{PICKSCORE_REPO}")
    return bundle


class PickScoreScorer(PreferenceScorer):
    """``exp(logit_scale) * cos(E_img, E_txt)`` of a CLIP model (PickScore's formula)."""

    score_name = "pickscore"

    def __init__(self, image_encoder: ImageEncoder, text_embedding: torch.Tensor,
                 logit_scale: float, prompt: str, target: Optional[float] = None,
                 name: Optional[str] = None, score_name: Optional[str] = None):
        if score_name:
            self.score_name = score_name
        super().__init__(prompt, target, name, label=image_encoder.label)
        self.encoder = image_encoder
        self.text = unit_text_embedding(text_embedding, image_encoder)
        self.logit_scale = float(logit_scale)
        self.input_size = image_encoder.image_size

    @classmethod
    def from_bundle(cls, bundle: ClipBundle, prompt: str, target: Optional[float] = None,
                    score_name: Optional[str] = None) -> "PickScoreScorer":
        if bundle.text is None or bundle.logit_scale is None:
            raise ValueError(f"{bundle.label} has no text tower or logit scale")
        return cls(bundle.image, _text(bundle.text, prompt), bundle.logit_scale, prompt, target,
                   score_name=score_name)

    def score_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(self.encoder(pixels), dim=-1)
        return self.logit_scale * (emb @ self.text.to(emb.device))

    def _modules(self) -> list[torch.nn.Module]:
        return self.encoder.modules()

    def to(self, device) -> "PickScoreScorer":
        self.encoder.to(device)
        self.text = self.text.to(device)
        return self


def _text(text: TextEncoder, prompt: str) -> torch.Tensor:
    with torch.inference_mode(False):
        return text(prompt)
