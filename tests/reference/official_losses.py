"""The official DOODL guidance losses (``doodl.py``), re-written; images are given in [0, 1].

* :func:`make_cutouts` -- ``MakeCutouts.forward``: per crop ``size = int(rand() ** cut_power *
  (max_size - min_size) + min_size)`` with ``max_size = min(W, H)``, ``min_size = min(W, H,
  cut_size)``, then ``offsetx = randint(0, W - size + 1)``, ``offsety = randint(0, H - size + 1)``,
  the crop ``[:, :, oy:oy+size, ox:ox+size]`` average-pooled to ``cut_size``. Draw order per crop:
  rand, randint (x), randint (y). The official draws from the global RNG; here from ``generator``.
* :func:`spherical_dist_loss` -- ``spherical_dist_loss``: ``2 * arcsin(|x^ - y^| / 2) ** 2``, the
  MIN over the crops when several.
* :func:`clip_loss` -- ``clip_loss_fn(...).loss_fn`` with cutouts: normalize (OpenAI CLIP mean/std),
  ``get_image_features``, L2-normalize, spherical distance to the normalized target (min over
  crops), ``sum(l * w) / sum(weights)`` over models (``zip`` truncates to the models present), times
  ``grad_scale``.
* :func:`aesthetic_loss` -- ``aesthetic_loss_fn(...).loss_fn`` + ``aesthetic_score``: per model
  ``head(normalize(encode(crops))).clip(1, 10).mean()``, ``sum(w * p) / len(predictions)``, then
  ``-prediction`` or ``|prediction - target|``, times ``grad_scale``.
* :func:`fgvc_loss` -- ``fgvc_loss_fn(...).loss_fn``: ImageNet mean/std, the last output of the
  WS-DAN net, mean cross-entropy over the crops to ``class_idx``, times ``grad_scale``.
* :func:`one_step_cond_grad` -- the ``one_step_baseline`` branch of ``get_generic_cond_fn``'s
  ``cond_fn`` and how ``SteppingLayer.forward`` applies it (:func:`one_step_guided_eps`).

Skipped on purpose: the official ``((im / 2) + 0.5).clamp(0, 1)`` (the VAE decode's [-1, 1] to
[0, 1]; our scorers receive [0, 1] images) and the ``use_cutouts=False`` resize path.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - m) / s


def make_cutouts(pixels: torch.Tensor, cut_size: int, num_cutouts: int, cut_power: float,
                 generator: torch.Generator) -> torch.Tensor:
    side_y, side_x = pixels.shape[2:4]
    max_size = min(side_x, side_y)
    min_size = min(side_x, side_y, cut_size)
    out = []
    for _ in range(num_cutouts):
        size = int(torch.rand([], generator=generator) ** cut_power * (max_size - min_size) + min_size)
        offsetx = int(torch.randint(0, side_x - size + 1, (), generator=generator))
        offsety = int(torch.randint(0, side_y - size + 1, (), generator=generator))
        crop = pixels[:, :, offsety:offsety + size, offsetx:offsetx + size]
        out.append(F.adaptive_avg_pool2d(crop, cut_size))
    return torch.cat(out)


def spherical_dist_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x, dim=-1)
    y = F.normalize(y, dim=-1)
    dist = (x - y).norm(dim=-1).div(2).arcsin().pow(2).mul(2)
    return dist.min() if dist.numel() > 1 else dist


def clip_loss(im: torch.Tensor, encoders: Sequence[Callable], targets: Sequence[torch.Tensor], *,
              cut_size: int, num_cuts: int, cut_power: float, generator: torch.Generator,
              weights: Sequence[float] = (1,), grad_scale: float = 1.0) -> torch.Tensor:
    """One image ``(1, 3, H, W)``; ``targets`` the (text or mean image) embedding per model."""
    x = normalize(make_cutouts(im, cut_size, num_cuts, cut_power, generator), OPENAI_MEAN, OPENAI_STD)
    z_is = [enc(x) for enc in encoders]
    z_is = [z / z.norm(p=2, dim=-1, keepdim=True) for z in z_is]
    z_ts = [t / t.norm(p=2, dim=-1, keepdim=True) for t in targets]
    losses = [spherical_dist_loss(z_i, z_t).mean() for z_i, z_t in zip(z_is, z_ts)]
    loss = sum(l * w for l, w in zip(losses, weights)) / sum(weights)
    return loss * grad_scale


def aesthetic_loss(im: torch.Tensor, models: Sequence[tuple], *, cut_size: int, num_cuts: int,
                   cut_power: float, generator: torch.Generator, target: Optional[float] = None,
                   weights: Sequence[float] = (1, 1), grad_scale: float = 1.0,
                   raw_scores: Optional[list] = None) -> torch.Tensor:
    """``models``: ``(encode, linear_head)`` pairs (the official CLIP stem + LAION linear head).
    ``raw_scores``, if a list, receives each model's unclamped per-crop predictions."""
    x = normalize(make_cutouts(im, cut_size, num_cuts, cut_power, generator), OPENAI_MEAN, OPENAI_STD)
    predictions = []
    for encode, head in models:
        feats = encode(x)
        feats = feats / feats.norm(dim=-1, keepdim=True)
        scores = head(feats)
        if raw_scores is not None:
            raw_scores.append(scores.detach().reshape(-1))
        predictions.append(scores.clip(1, 10).mean())
    prediction = sum(w * p for w, p in zip(weights, predictions)) / len(predictions)
    loss = -1 * prediction if target is None else abs(prediction - target)
    return loss * grad_scale


def fgvc_loss(im: torch.Tensor, net: torch.nn.Module, class_idx: int, *, cut_size: int, num_cuts: int,
              cut_power: float, generator: torch.Generator, grad_scale: float = 1.0) -> torch.Tensor:
    x = normalize(make_cutouts(im, cut_size, num_cuts, cut_power, generator), IMAGENET_MEAN, IMAGENET_STD)
    _, _, output = net(x)
    target = torch.full((output.size(0),), class_idx, dtype=torch.long, device=output.device)
    return F.cross_entropy(output, target) * grad_scale


def one_step_cond_grad(x: torch.Tensor, t: float, alpha: float, eps_uncond: Callable,
                       loss_fn: Callable[[torch.Tensor], torch.Tensor], blend: bool = True) -> torch.Tensor:
    """``cond_fn`` with ``one_step_baseline=True``: x0 from the UNCONDITIONAL prediction at the
    model input ``x`` (alpha space), the loss of ``sample = x0 * sqrt(1 - a) + x * (1 - sqrt(1 - a))``
    (``blend=False``: of x0 itself), and ``-1 * d loss / d x``. ``loss_fn`` holds ``grad_scale``."""
    with torch.enable_grad():
        l = x.detach().clone().requires_grad_(True)
        noise_pred = eps_uncond(l, t)
        fac = (1 - alpha) ** 0.5
        pred_original = (l - fac * noise_pred) / alpha ** 0.5
        sample = pred_original * fac + l * (1 - fac) if blend else pred_original
        (grad,) = torch.autograd.grad(loss_fn(sample), l)
    return -1 * grad


def one_step_guided_eps(eps_cfg: torch.Tensor, cond_grad: torch.Tensor, alpha: float) -> torch.Tensor:
    """``SteppingLayer.forward``: ``noise_pred - sqrt(1 - alpha_t) * clip_grad``."""
    return eps_cfg - (1 - alpha) ** 0.5 * cond_grad
