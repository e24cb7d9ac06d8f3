"""WS-DAN fine-grained classifier (Hu et al. 2019, "See Better Before Looking Closer") as a scorer.

Architecture, as in wvinzh/WS_DAN_PyTorch ``model/inception_bap.py`` (the code DOODL vendors in
``fgvc_ws_dan_helpers/``): an Inception-v3 trunk up to ``Mixed_6e`` gives feature maps ``F``
(768 channels); the first ``num_parts`` (32) channels of ``Mixed_7a.branch3x3_1`` (a 1x1
conv-BN-ReLU on ``F``) are the attention maps ``A``. Bilinear attention pooling (BAP):
``phi = einsum(A, F) / (H * W)``, signed square root ``sign(phi) * sqrt(|phi| + eps)``, flatten to
``num_parts * 768``, L2-normalize, times 100, then the linear classifier ``fc_new``. The rest of
``Mixed_7a`` is loaded (it is in the checkpoints) but never evaluated: its output is unused.

Input: ImageNet-normalized pixels; with ``transform_input=True`` (what ``inception_v3_bap`` always
sets, in training too) the trunk re-maps them to ``(x - 0.5) / 0.5``. DOODL feeds 512 px crops.
``eps`` defaults to 1e-6, DOODL's change from the original 1e-12 (``d sqrt(|x| + eps)`` at 0 is
``1 / (2 sqrt(eps))``: 5e5 with 1e-12, which swamps the pixel gradient).

Checkpoints: ``{dataset}.pth.tar`` from the WS_DAN_PyTorch README (OneDrive), a dict with
``state_dict`` (``module.``-prefixed, DataParallel), ``epoch``, ``best_prec1``, ``optimizer``,
``center``; classes: CUB-200-2011 200, Stanford Dogs 120, FGVC-Aircraft 100 (Stanford Cars 196
also loads). Only tensors are read (``torch.load(weights_only=True)`` or safetensors).
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import CropScorer, check_images, freeze
from .encoders import module_device, module_dtype
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize
from .weights import WeightsFileError, extract_state_dict, load_weights_file, strip_prefix

__all__ = ["WSDAN", "BilinearAttentionPooling", "load_wsdan", "WSDANScorer", "WSDAN_DATASETS",
           "WSDAN_INPUT_SIZE", "WSDAN_SOURCE"]

WSDAN_INPUT_SIZE = 512
WSDAN_FEATURES = 768
#: number of classes -> (dataset, DOODL's checkpoint name)
WSDAN_DATASETS = {200: ("CUB-200-2011 birds", "bird.pth.tar"),
                  120: ("Stanford Dogs", "dog.pth.tar"),
                  100: ("FGVC-Aircraft", "aircraft.pth.tar"),
                  196: ("Stanford Cars", "car.pth.tar")}
WSDAN_SOURCE = ("the pretrained WS-DAN checkpoints linked from github.com/wvinzh/WS_DAN_PyTorch "
                "(README, OneDrive: bird/dog/aircraft .pth.tar), as used by salesforce/DOODL")


class BilinearAttentionPooling(nn.Module):
    """BAP: attention-weighted feature averages, signed sqrt, L2-normalized, scaled by 100."""

    def __init__(self, eps: float = 1e-6, scale: float = 100.0):
        super().__init__()
        self.eps, self.scale = eps, scale

    def forward(self, features: torch.Tensor, attention: torch.Tensor):
        n, _, h, w = features.shape
        phi = torch.einsum("imjk,injk->imn", attention, features) / float(h * w)
        phi = torch.sign(phi) * torch.sqrt(phi.abs() + self.eps)
        raw = F.normalize(phi.reshape(n, -1), dim=-1)
        return raw, raw * self.scale


class WSDAN(nn.Module):
    """Inception-v3 + BAP classifier, with the module names of the published checkpoints."""

    def __init__(self, num_classes: int, num_parts: int = 32, transform_input: bool = True,
                 eps: float = 1e-6):
        super().__init__()
        from torchvision.models.inception import (BasicConv2d, InceptionA, InceptionB,
                                                  InceptionC, InceptionD)
        self.num_classes, self.num_parts = num_classes, num_parts
        self.transform_input = transform_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.bap = BilinearAttentionPooling(eps)
        self.fc_new = nn.Linear(WSDAN_FEATURES * num_parts, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform_input:  # ImageNet-normalized -> (x - 0.5) / 0.5, as torchvision does
            x = torch.cat([x[:, 0:1] * (0.229 / 0.5) + (0.485 - 0.5) / 0.5,
                           x[:, 1:2] * (0.224 / 0.5) + (0.456 - 0.5) / 0.5,
                           x[:, 2:3] * (0.225 / 0.5) + (0.406 - 0.5) / 0.5], dim=1)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):
            x = block(x)
        return x

    def forward(self, x: torch.Tensor):
        """ImageNet-normalized ``(N, 3, H, W)`` -> ``(attention_maps, raw_features, logits)``."""
        feature_maps = self.features(x)
        attention = self.Mixed_7a.branch3x3_1(feature_maps)[:, :self.num_parts]
        raw, pooled = self.bap(feature_maps, attention)
        return attention, raw, self.fc_new(pooled)


def load_wsdan(path: str | os.PathLike, eps: float = 1e-6) -> WSDAN:
    """A frozen :class:`WSDAN` (CPU, float32) from a published-layout checkpoint."""
    where = f"{path}"
    obj = load_weights_file(path, hint=f"WS-DAN checkpoint; from {WSDAN_SOURCE}")
    sd = strip_prefix(extract_state_dict(obj, where=where), "module.")
    sd = {k: v for k, v in sd.items() if not k.startswith("AuxLogits.")}
    fc = sd.get("fc_new.weight")
    if fc is None or fc.dim() != 2 or fc.shape[1] % WSDAN_FEATURES:
        raise WeightsFileError(f"{where} is not a WS-DAN (Inception-v3 + BAP) checkpoint: no "
                               f"fc_new.weight of shape (classes, 768 * parts)")
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint
        model = WSDAN(fc.shape[0], fc.shape[1] // WSDAN_FEATURES, eps=eps)
    for name, _ in model.named_buffers():  # absent from checkpoints saved before PyTorch 0.4.1
        if name.endswith("num_batches_tracked") and name not in sd:
            sd[name] = torch.zeros((), dtype=torch.long)
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as exc:  # shape mismatches
        raise WeightsFileError(f"{where} does not match the WS-DAN layout: {exc}") from None
    if missing or unexpected:
        raise WeightsFileError(f"{where} does not match the WS-DAN layout: missing {missing[:5]}"
                               f" ({len(missing)}), unexpected {unexpected[:5]} "
                               f"({len(unexpected)})")
    return freeze(model.float())


class WSDANScorer(CropScorer):
    """Cross-entropy of the WS-DAN logits against ``class_index``, per crop at 512 px; the released
    code averages it over the crops ("auto" = "mean")."""

    official_reduction = "mean"

    def __init__(self, model: WSDAN, class_index: int, input_size: int = WSDAN_INPUT_SIZE,
                 name: Optional[str] = None):
        if not 0 <= int(class_index) < model.num_classes:
            raise ValueError(f"class_index {class_index} is out of range: this WS-DAN checkpoint "
                             f"has {model.num_classes} classes (0..{model.num_classes - 1})")
        self.model = freeze(model)
        self.class_index = int(class_index)
        self.input_size = int(input_size)
        dataset = WSDAN_DATASETS.get(model.num_classes, (f"{model.num_classes} classes",))[0]
        self.name = name or f"WS-DAN {dataset}, class {self.class_index}"

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        x = normalize(pixels.float(), IMAGENET_MEAN, IMAGENET_STD)
        x = x.to(device=module_device(self.model), dtype=module_dtype(self.model))
        return self.model(x)[2].float()

    def crop_loss(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.logits(pixels)
        target = torch.full((logits.shape[0],), self.class_index, device=logits.device,
                            dtype=torch.long)
        return F.cross_entropy(logits, target, reduction="none")

    def scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            logits = self.logits(self.resize_whole(check_images(images)))
            logp = logits.log_softmax(dim=-1)
        return {"class_probability": logp[:, self.class_index].exp().cpu(),
                "cross_entropy": (-logp[:, self.class_index]).cpu(),
                "top1_class": logits.argmax(dim=-1).float().cpu()}

    def modules(self) -> list[nn.Module]:
        return [self.model]
