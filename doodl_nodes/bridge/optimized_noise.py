"""DOODL's optimized starting noise as a ComfyUI NOISE, for SamplerCustomAdvanced.

ReNO's "transfer": optimize the noise through a fast few-step model (SDXL-Turbo), then sample that
noise with another model of the same latent space (SDXL base), which reads it as ordinary
unit-variance noise. The noise is the best iterate's starting latent divided by the factor
ComfyUI's own sampling puts on unit noise at that sigma (``model_sampling.noise_scaling``), so the
same model, SIGMAS and CFG through SamplerCustomAdvanced regenerate DOODL's chain start exactly
(up to float32 rounding).
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["OptimizedNoise"]


class OptimizedNoise:
    """A NOISE object (``generate_noise(latent) -> noise``, ``seed``) holding a fixed tensor, or the
    reason there is none (its use then raises a ``ValueError`` with that reason)."""

    def __init__(self, noise: Optional[torch.Tensor], seed: int = 0, reason: str = ""):
        self.noise = None if noise is None else noise.detach().to("cpu", torch.float32).clone()
        self.seed = int(seed)
        self.reason = reason

    @classmethod
    def from_result(cls, chain, plan, result) -> "OptimizedNoise":
        """The best iterate's unit noise, when the run optimized a starting noise."""
        if plan.config.start_step > 0:
            return cls(None, plan.config.seed, reason=(
                "DOODL's noise output is empty: with start_step > 0 it optimized a partly denoised "
                "latent, not a starting noise. Use start_step 0 to transfer the noise to a sampler."))
        sigma = chain.sigmas[plan.start].to(torch.float32).reshape(1)
        x = result.best_x.to(torch.float32)
        ones = torch.ones((1,) + tuple(x.shape[1:]), dtype=torch.float32, device=x.device)
        max_denoise = chain.max_denoise if plan.start == 0 else False
        factor = chain.model_sampling.noise_scaling(sigma, ones, torch.zeros_like(ones), max_denoise)
        return cls(x / factor, plan.config.seed)

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        if self.noise is None:
            raise ValueError(self.reason)
        samples = input_latent["samples"]
        if tuple(samples.shape) != tuple(self.noise.shape):
            raise ValueError(
                f"DOODL's optimized noise has shape {tuple(self.noise.shape)} but the latent_image given to "
                f"the sampler has shape {tuple(samples.shape)}: use a latent of the same size, batch and "
                "latent channels as the one DOODL optimized (models must share a latent space).")
        return self.noise.clone()
