"""The two sampling chains DOODL can optimize through, behind one small interface.

* :class:`EdictChain`: the EDICT pair ``(x, y)`` (exactly invertible; editing, the paper's chain);
* :class:`EulerChain`: one latent ``(x,)``, deterministic Euler/DDIM steps (one model call per step;
  the sampler few-step distilled models are trained for).

Both give ``sample(state, sigmas, start_index) -> outputs`` and ``value_and_grad(objective, state,
sigmas, start_index, mode, step_callback) -> (loss, grads, outputs)``, with states and outputs as
tuples. The objective always takes two final latents ``(x0, y0)``; the Euler chain passes its one
output twice (``objective(x0, x0)``), so an objective written for EDICT works unchanged (score one
image for Euler to avoid decoding it twice).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .backprop import Objective, PhaseCallback, edict_value_and_grad, euler_value_and_grad
from .edict import Denoiser, InputScale, edict_sample
from .euler import euler_sample

__all__ = ["CHAINS", "EdictChain", "EulerChain", "make_chain"]

CHAINS = ("edict", "euler")


@dataclass
class EdictChain:
    denoise: Denoiser
    p: float = 0.93
    leapfrog: bool = True
    input_scale: Optional[InputScale] = None
    name = "edict"

    def state(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        return (x, y)

    def pair(self, state: tuple) -> tuple:
        return state

    def _kw(self, start_index: int) -> dict:
        return dict(p=self.p, leapfrog=self.leapfrog, input_scale=self.input_scale,
                    start_index=start_index)

    def sample(self, state: tuple, sigmas: torch.Tensor, start_index: int = 0) -> tuple:
        return edict_sample(self.denoise, *state, sigmas, **self._kw(start_index))

    def value_and_grad(self, objective: Objective, state: tuple, sigmas: torch.Tensor,
                       start_index: int = 0, mode: str = "checkpoint",
                       step_callback: Optional[PhaseCallback] = None):
        loss, gx, gy, x0, y0 = edict_value_and_grad(
            self.denoise, objective, *state, sigmas, mode=mode, step_callback=step_callback,
            return_outputs=True, **self._kw(start_index))
        return loss, (gx, gy), (x0, y0)


@dataclass
class EulerChain:
    denoise: Denoiser
    name = "euler"

    def state(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        return (x,)

    def pair(self, state: tuple) -> tuple:
        return (state[0], state[0])

    def sample(self, state: tuple, sigmas: torch.Tensor, start_index: int = 0) -> tuple:
        return (euler_sample(self.denoise, state[0], sigmas),)

    def value_and_grad(self, objective: Objective, state: tuple, sigmas: torch.Tensor,
                       start_index: int = 0, mode: str = "checkpoint",
                       step_callback: Optional[PhaseCallback] = None):
        loss, gx, x0 = euler_value_and_grad(self.denoise, lambda a: objective(a, a), state[0], sigmas,
                                            mode=mode, step_callback=step_callback,
                                            return_outputs=True)
        return loss, (gx,), (x0,)


def make_chain(kind: str, denoise: Denoiser, *, p: float = 0.93, leapfrog: bool = True,
               input_scale: Optional[InputScale] = None):
    """The chain called ``kind`` ("edict" or "euler") for ``denoise``."""
    if kind == "edict":
        return EdictChain(denoise, p, leapfrog, input_scale)
    if kind == "euler":
        return EulerChain(denoise)
    raise ValueError(f"chain must be one of {CHAINS}, got {kind!r}")
