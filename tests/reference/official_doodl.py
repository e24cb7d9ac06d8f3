"""The DOODL optimization loop of the official ``gen()`` (``doodl.py``, ``latent_traversal=True``),
in float64, with the loss of a final latent given as a function.

What is reproduced (read from ``gen()``, re-written):

* start: novel generation uses the pair ``(latent, latent)`` and, with ``renormalize_latents``,
  ``orig_norm = latent.norm()``; editing (``source_im``) starts from a given (inverted) pair and the
  official code asserts ``not renormalize_latents`` and ``opt_t is None``.
* ``opt_t`` (partial optimization): the first ``T - opt_t`` official timesteps are denoised once
  with EDICT (no grad), the pair is tied (averaged) if ``tied_latents``, and the optimization then
  runs the chain over the remaining ``timesteps[-opt_t:]`` -- with ``enumerate`` restarting at 0,
  so the step parity of the optimized chain counts from the sub-chain's start
  (``opt_index_offset`` shifts it; see ``official_edict``).
* iteration m: run the chain from the pair, ``sum_loss = loss(x0) + loss(y0)`` (each image's loss
  already holds ``grad_scale``; ``optimize_first_edict_image_only`` keeps only x0's), backward,
  ``grad = -0.5 * d sum_loss / d pair``; tied: ``grad`` is averaged over the pair and repeated.
  Then per latent: ``g = clip(g, -clip_grad_val, clip_grad_val)``; momentum 0.9 without dampening
  (``b = g`` at m = 0, else ``0.9 * b_prev + g``; Nesterov ``g + 0.9 * b``); ``new = l + g +
  perturbation`` with ONE draw ``perturb_grad_scale * randn_like(latent)`` shared by x and y.
  Tied: both become their average. Renormalize: each latent is rescaled to ``orig_norm``.

Deliberate conventions: float64; the perturbation is drawn from the ``generator`` argument
(``torch.randn(shape, generator=..., dtype=float64)``) instead of the global RNG (in the official
code the crops of the loss, on the CPU generator, and the perturbation, ``randn_like`` of a CUDA
latent on the CUDA generator, both come from global state seeded with ``seed``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from tests.reference.official_edict import EpsFn, edict_generate
from tests.reference.official_scheduler import Step

ImageLoss = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class GenTrace:
    pairs: list = field(default_factory=list)  # the pair each iteration starts from (alpha space)
    losses: list = field(default_factory=list)  # sum_loss of each iteration (both images)
    image_losses: list = field(default_factory=list)  # (loss(x0), loss(y0)) of each iteration
    clipped_fraction: list = field(default_factory=list)  # share of gradient elements the clip bound
    final: Optional[tuple] = None  # the pair after the last update
    start_pair: Optional[tuple] = None  # the pair the optimization started from (after opt_t)
    orig_norm: Optional[float] = None


def doodl_gen(eps_fn: EpsFn, timesteps: Sequence[Step], image_loss: ImageLoss, *,
              num_traversal_steps: int, generator: torch.Generator,
              latent: Optional[torch.Tensor] = None, source_pair: Optional[tuple] = None,
              mix_weight: float = 0.93, tied_latents: bool = True, use_momentum: bool = True,
              use_nesterov: bool = False, renormalize_latents: bool = True,
              optimize_first_edict_image_only: bool = False, opt_t: Optional[int] = None,
              perturb_grad_scale: float = 1e-4, clip_grad_val: Optional[float] = 1e-3,
              opt_index_offset: int = 0) -> GenTrace:
    trace = GenTrace()
    if use_nesterov:
        use_momentum = True
    steps = list(timesteps)

    if source_pair is None:
        pair = (latent.clone(), latent.clone())
    else:
        assert not renormalize_latents and opt_t is None  # as the official editing branch asserts
        pair = tuple(v.clone() for v in source_pair)
    orig_norm = float(latent.norm()) if renormalize_latents else None
    trace.orig_norm = orig_norm

    if source_pair is None and opt_t is not None:
        initial = steps[:-opt_t] if opt_t != 0 else steps
        steps = steps[-opt_t:] if opt_t != 0 else []
        with torch.no_grad():
            pair = edict_generate(eps_fn, pair[0], pair[1], initial, mix_weight)
        if tied_latents:
            avg = 0.5 * (pair[0] + pair[1])
            pair = (avg, avg.clone())
    trace.start_pair = tuple(v.detach().clone() for v in pair)

    prev_b = [None, None]
    for m in range(num_traversal_steps):
        trace.pairs.append(tuple(v.detach().clone() for v in pair))
        leaves = [v.detach().clone().requires_grad_(True) for v in pair]
        with torch.enable_grad():
            out = edict_generate(eps_fn, leaves[0], leaves[1], steps, mix_weight,
                                 index_offset=opt_index_offset)
            losses = []
            for im in out:
                losses.append(image_loss(im))
                if optimize_first_edict_image_only:
                    break
            sum_loss = sum(losses)
            grads = torch.autograd.grad(sum_loss, leaves, allow_unused=True)
        grads = [torch.zeros_like(v) if g is None else g for v, g in zip(leaves, grads)]
        trace.losses.append(float(sum_loss.detach()))
        trace.image_losses.append(tuple(float(v.detach()) for v in losses))

        grad = [-0.5 * g for g in grads]
        if tied_latents:
            avg = 0.5 * (grad[0] + grad[1])  # grad.mean(dim=0) over the pair, then repeat(2)
            grad = [avg, avg.clone()]

        perturbation = (perturb_grad_scale * torch.randn(pair[0].shape, generator=generator,
                                                        dtype=torch.float64)
                        if perturb_grad_scale else 0)
        new = []
        clipped = 0
        for idx, (g, l) in enumerate(zip(grad, leaves)):
            if clip_grad_val is not None:
                clipped += int((g.abs() > clip_grad_val).sum())
                g = g.clip(-clip_grad_val, clip_grad_val)
            if use_momentum:
                b = g if m == 0 else 0.9 * prev_b[idx] + g
                g = g + 0.9 * b if use_nesterov else b
                prev_b[idx] = b.clone()
            new.append((l.detach() + g + perturbation).clone())
        trace.clipped_fraction.append(clipped / (2 * grad[0].numel()))
        if tied_latents:
            avg = 0.5 * (new[0] + new[1])
            new = [avg, avg.clone()]
        if renormalize_latents:
            new = [v * orig_norm / float(v.norm()) for v in new]
        pair = tuple(new)
    trace.final = tuple(v.detach().clone() for v in pair)
    return trace
