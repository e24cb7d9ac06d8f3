"""The three ways the demo generates a target digit, all through ``doodl_nodes.core`` as the nodes do:
unguided EDICT, one-step classifier guidance inside the EDICT chain (the paper's baseline; the
released code's ``one_step_baseline``), and DOODL on the EDICT starting noise."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..core.crops import CropConfig, make_crops, resize_square
from ..core.edict import edict_sample
from ..core.guidance import one_step_guided_denoiser
from ..core.losses import reduce_over_crops
from ..core.optimize import DoodlConfig, doodl_optimize
from .progress import progress

__all__ = ["CountingDenoiser", "Generation", "karras_sigmas", "initial_noise", "run_unguided",
           "run_one_step", "run_doodl", "guide_losses", "GuideLoss"]


class CountingDenoiser:
    """Wraps a denoiser and counts model evaluations per image: ``forward`` (calls, counting each
    batch row) and ``backward`` (vector-Jacobian products through the model, counted when a
    gradient actually flows back through an output)."""

    def __init__(self, denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.denoise = denoise
        self.forward = 0
        self.backward = 0

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = self.denoise(z, sigma)
        rows = z.shape[0]
        self.forward += rows
        if out.requires_grad:
            out.register_hook(lambda grad: self._count_backward(rows))
        return out

    def _count_backward(self, rows: int) -> None:
        self.backward += rows

    def reset(self) -> None:
        self.forward = self.backward = 0


@dataclass
class Generation:
    """Final images ``(B, 1, 8, 8)`` in [-1, 1] (clamped), with their cost per image."""

    images: torch.Tensor
    forward_per_image: float
    backward_per_image: float
    seconds: float
    extra: dict = field(default_factory=dict)


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM / ComfyUI "karras" schedule: ``steps`` descending sigmas plus a final 0 (float64)."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def initial_noise(seeds: list[int], device: torch.device) -> torch.Tensor:
    """Unit Gaussian noise ``(len(seeds), 1, 8, 8)`` float64, one independent draw per seed (the
    draw for a seed does not depend on the other seeds)."""
    rows = [torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(int(s)),
                        dtype=torch.float64) for s in seeds]
    return torch.cat(rows).to(device)


class GuideLoss:
    """Per-image cross-entropy of the guiding classifier for ``targets`` (differentiable), optionally
    over DOODL's multi-crop augmentation (``core.crops``): the 8x8 image is upsampled to
    ``crop_canvas`` pixels, cut into ``crops.num_crops`` random squares pooled back to 8x8, and the
    per-crop losses reduced per image (``core.losses.reduce_over_crops``). Crops are drawn from
    ``generator``, a fresh layout per call, as the released code draws new cutouts each time."""

    def __init__(self, guide: torch.nn.Module, targets: torch.Tensor, crops: Optional[CropConfig] = None,
                 crop_canvas: int = 16, seed: int = 0):
        self.guide, self.targets, self.crops, self.canvas = guide, targets, crops, crop_canvas
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float()
        if self.crops is None or self.crops.num_crops == 0:
            return F.cross_entropy(self.guide(images), self.targets, reduction="none")
        big = resize_square(images, self.canvas)
        cut = make_crops(big, images.shape[-1], self.crops.num_crops, self.crops.cut_power,
                         generator=self.generator)
        ce = F.cross_entropy(self.guide(cut), self.targets.repeat(self.crops.num_crops), reduction="none")
        return reduce_over_crops(ce, self.crops.num_crops, self.crops.reduction)


def guide_losses(guide: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-image cross-entropy of the guiding classifier on the plain images (no crops)."""
    return F.cross_entropy(guide(images.float()), targets, reduction="none")


def _finish(counter: CountingDenoiser, x0: torch.Tensor, n: int, t0: float, **extra) -> Generation:
    return Generation(x0.float().clamp(-1, 1), counter.forward / n, counter.backward / n,
                      time.perf_counter() - t0, extra)


def run_unguided(denoise, noise: torch.Tensor, sigmas: torch.Tensor, *, p: float,
                 show_progress: bool = True, desc: str = "unguided EDICT") -> Generation:
    counter = CountingDenoiser(denoise)
    t0 = time.perf_counter()
    x = noise * sigmas[0]
    with torch.no_grad(), progress(len(sigmas) - 1, desc, disable=not show_progress) as bar:
        x0, _ = edict_sample(counter, x, x, sigmas, p=p, callback=lambda *a: bar.update(1),
                             input_scale=denoise.input_scale)
    return _finish(counter, x0, noise.shape[0], t0)


def run_one_step(denoise, loss: GuideLoss, noise: torch.Tensor, sigmas: torch.Tensor, scale: float,
                 *, p: float, show_progress: bool = True, desc: Optional[str] = None) -> Generation:
    """One-step classifier guidance: every denoiser call inside the EDICT chain is replaced by its
    guided version ``D - scale * sigma^2 * grad_z CE(guide(D(z)), target)`` (core.guidance)."""
    counter = CountingDenoiser(denoise)
    guided = one_step_guided_denoiser(counter, loss, scale)
    t0 = time.perf_counter()
    x = noise * sigmas[0]
    with torch.no_grad(), progress(len(sigmas) - 1, desc or f"one-step guidance (scale {scale:g})",
                                   disable=not show_progress) as bar:
        x0, _ = edict_sample(guided, x, x, sigmas, p=p, callback=lambda *a: bar.update(1),
                             input_scale=denoise.input_scale)
    return _finish(counter, x0, noise.shape[0], t0, scale=scale)


def run_doodl(denoise, loss: GuideLoss, noise: torch.Tensor, sigmas: torch.Tensor,
              config: DoodlConfig, *, show_progress: bool = True, desc: str = "DOODL") -> Generation:
    """DOODL: optimize the EDICT starting noise so that the *final* images minimize the guiding
    classifier's cross-entropy, ``0.5 * (CE(x0) + CE(y0))`` summed over the batch (each image's
    gradient is its own: clip, momentum, tying and renormalization act per element / per image).
    The recorded per-iteration losses are the plain (no-crop) guide CE, comparable across settings.

    The batch is optimized in one ``doodl_optimize`` call; the final iterate (not the best one,
    which is chosen on the batch total) is generated once more for the returned images. ``extra``
    holds ``objective`` (the optimized loss per iteration, divided by the batch size) and
    ``per_image_losses`` (iterations x B: the plain guide CE of each image's current x0/y0, averaged).
    """
    counter = CountingDenoiser(denoise)
    n = noise.shape[0]
    sigma_max = float(sigmas[0])

    def objective(x0: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
        return 0.5 * (loss(x0).sum() + loss(y0).sum())

    per_image = []
    t0 = time.perf_counter()
    with progress(config.iterations, desc, disable=not show_progress) as bar:
        def callback(info) -> None:
            with torch.no_grad():
                ce = 0.5 * (guide_losses(loss.guide, info.x0, loss.targets)
                            + guide_losses(loss.guide, info.y0, loss.targets))
            per_image.append(ce.cpu())
            bar.update(1)
            bar.set_postfix_str(f"mean CE {info.loss / n:.3f}")

        result = doodl_optimize(counter, objective, noise * sigma_max, sigmas, config,
                                callback=callback, noise_scale=sigma_max,
                                input_scale=denoise.input_scale)
    with torch.no_grad():
        x0, _ = edict_sample(counter, result.x, result.y, sigmas, p=config.p, leapfrog=config.leapfrog,
                             input_scale=denoise.input_scale)
    return _finish(counter, x0, n, t0, objective=[v / n for v in result.losses],
                   per_image_losses=torch.stack(per_image) if per_image else torch.empty(0, n),
                   status=result.status, warnings=list(result.warnings))
