"""The EDICT_LATENT socket type: an EDICT pair plus what is needed to regenerate from it.

EDICT inversion yields two latents ``(x, y)`` that differ; both are needed for an exact
reconstruction, and only with the same model, sigmas, p and leapfrog setting. The pair is kept in
float64 on the CPU, in model (``process_in``) space, at noise level ``sigmas[0]``. DOODL on the plain
Euler chain returns its latent in the same type (``chain="euler"``, ``y == x``), so EDICT Generate
regenerates any DOODL result with the chain it was optimized through.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["EdictLatent", "EdictLatentMismatch"]


class EdictLatentMismatch(ValueError):
    """An EDICT_LATENT used with another model, other sigmas or other EDICT settings."""


@dataclass
class EdictLatent:
    x: torch.Tensor            # (B, C, h, w) float64 CPU, model space, at sigmas[0]
    y: torch.Tensor
    sigmas: torch.Tensor       # float64 CPU, the descending chain it belongs to
    p: float
    leapfrog: bool
    model_key: str             # bridge.chain.model_fingerprint of the model that made it
    source: str = "inversion"  # "inversion" | "noise" | "doodl"
    chain: str = "edict"       # the chain that renders it: "edict", or "euler" (then y == x)

    def start_index(self, sigmas: torch.Tensor, input_name: str = "edict_latent") -> int:
        """Where this pair's chain starts within ``sigmas`` (its sigmas must be the tail of them:
        the whole chain after inversion, a suffix after DOODL with a start step); raises
        ``EdictLatentMismatch`` naming the input otherwise."""
        s = sigmas.detach().to("cpu", torch.float64)
        n, start = self.sigmas.numel(), s.numel() - self.sigmas.numel()
        if start >= 0 and torch.allclose(s[start:], self.sigmas, rtol=1e-6, atol=1e-9):
            return start
        raise EdictLatentMismatch(
            f"The {input_name} input was made with other sigmas ({n - 1} steps, "
            f"{float(self.sigmas[0]):.4g} -> {float(self.sigmas[-1]):.4g}) than the SIGMAS given "
            f"here ({s.numel() - 1} steps, {float(s[0]):.4g} -> {float(s[-1]):.4g}). Use the same "
            "scheduler, steps and denoise for inversion and generation.")

    def check_model(self, model_key: str, input_name: str = "edict_latent") -> None:
        """Raise ``EdictLatentMismatch`` naming the input if another model made this pair."""
        if model_key != self.model_key:
            raise EdictLatentMismatch(
                f"The {input_name} input was made with another model ({self.model_key}) than the one "
                f"connected here ({model_key}). Invert with the same model (and LoRAs) you generate with.")
