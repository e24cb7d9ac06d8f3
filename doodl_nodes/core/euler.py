"""The plain deterministic chain: one latent, Euler steps in sigma space (= DDIM for EPS/V models,
the flow-matching Euler sampler for flow models).

``z_next = z + (sigma_next - sigma) * (z - denoise(z, sigma)) / sigma``: the sampler few-step
distilled models (SD-Turbo, SDXL-Turbo, Flux-schnell) are trained for, and ComfyUI's ``euler``
sampler. It costs one model call per step (EDICT: two) and works from a single step up, but it has
no exact inverse, so it cannot edit an inverted image; DOODL differentiates it with per-step
checkpointing (``backprop.euler_value_and_grad``).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .edict import Denoiser, _sigmas_as, ode_direction, validate_chain

__all__ = ["euler_step", "euler_sample", "validate_euler_chain", "EulerCallback"]

# callback(i, total, x): called after step i
EulerCallback = Callable[[int, int, torch.Tensor], None]


def validate_euler_chain(x: torch.Tensor, sigmas: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the offending argument for an unusable chain."""
    validate_chain(x, x, sigmas, 1.0)


def euler_step(denoise: Denoiser, x: torch.Tensor, sigma: torch.Tensor,
               sigma_next: torch.Tensor) -> torch.Tensor:
    """One deterministic Euler step from ``sigma`` to ``sigma_next``."""
    return x + (sigma_next - sigma) * ode_direction(denoise, x, sigma)


def euler_sample(denoise: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                 callback: Optional[EulerCallback] = None) -> torch.Tensor:
    """Euler sampling from ``sigmas[0]`` to ``sigmas[-1]`` in the dtype of ``x``; returns x0."""
    validate_euler_chain(x, sigmas)
    s = _sigmas_as(sigmas, x)
    total = s.numel() - 1
    for k in range(total):
        x = euler_step(denoise, x, s[k], s[k + 1])
        if callback is not None:
            callback(k, total, x)
    return x
