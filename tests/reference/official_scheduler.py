"""The DDIM schedule of the official code, in float64, as a plain list of steps.

Port of what ``SteppingLayer`` / ``coupled_stablediffusion`` read from diffusers' ``DDIMScheduler``
(``my_half_diffusers/schedulers/scheduling_ddim.py``: ``__init__`` and ``set_timesteps``) and of
``helper_functions.get_alpha_and_beta`` (DOODL) / ``edict_functions.get_alpha_and_beta`` (EDICT):

* betas "scaled_linear": ``linspace(sqrt(beta_start), sqrt(beta_end), 1000) ** 2``;
  ``alphas_cumprod = cumprod(1 - betas)``; ``final_alpha_cumprod = alphas_cumprod[0]``
  (``set_alpha_to_one=False``).
* ``set_timesteps(T)``: ``arange(0, 1000, 1000 // T)[::-1]`` (980, 960, ..., 0 for T = 50).
* A step at timestep ``t`` goes to ``t - 1000 / T`` (a float division); a negative target reads
  the final alpha, an integral one ``alphas_cumprod[int]`` and a fractional one the official
  interpolation (reproduced as written, see :func:`official_alpha`).

A step is ``Step(t, alpha, alpha_prev)``: the label the model is called with, alpha_bar at the
start point and alpha_bar at the end point. The EDICT/DOODL ports only read these three numbers,
so the same code runs on ComfyUI's schedules (:func:`schedule_from_sigmas`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012


@dataclass(frozen=True)
class Step:
    t: float  # timestep label given to the model (both calls of an EDICT step use it)
    alpha: float  # alpha_bar at the step's start
    alpha_prev: float  # alpha_bar at the step's end ("previous" timestep in diffusers' naming)


def sd_alphas_cumprod(n: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START,
                      beta_end: float = BETA_END) -> torch.Tensor:
    root = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float64)
    return torch.cumprod(1.0 - root * root, dim=0)


def ddim_timesteps(num_steps: int, n: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    stride = n // num_steps
    return list(range(0, n, stride))[::-1]


def official_alpha(t: float, alphas_cumprod: torch.Tensor) -> float:
    """alpha_bar for a (possibly fractional or negative) timestep, as get_alpha_and_beta reads it."""
    final = float(alphas_cumprod[0])  # set_alpha_to_one=False
    if t < 0:
        return final
    if float(t) == math.floor(t):
        return float(alphas_cumprod[int(t)])
    # Fractional timesteps (T not dividing 1000). The official weights are swapped relative to a
    # linear interpolation (low gets the remainder): kept as written.
    lo, hi = math.floor(t), math.ceil(t)
    rem = t - lo
    return float(alphas_cumprod[lo]) * rem + float(alphas_cumprod[hi]) * (1 - rem)


def ddim_schedule(num_steps: int) -> list[Step]:
    """The official T-step DDIM chain (SD 1.x betas)."""
    acp = sd_alphas_cumprod()
    jump = NUM_TRAIN_TIMESTEPS / num_steps
    return [Step(float(t), official_alpha(t, acp), official_alpha(t - jump, acp))
            for t in ddim_timesteps(num_steps)]


def sigma_of_alpha(alpha: float) -> float:
    """ComfyUI's noise level for alpha_bar: z = x_vp / sqrt(alpha) = x0 + sigma * eps."""
    return math.sqrt((1.0 - alpha) / alpha)


def alpha_of_sigma(sigma: float) -> float:
    return 1.0 / (1.0 + sigma * sigma)


def without_final_identity(steps: Sequence[Step]) -> list[Step]:
    """The official chain minus its last step, which goes nowhere.

    The official timesteps end at t = 0 and that step's target is ``final_alpha_cumprod =
    alphas_cumprod[0]`` (``set_alpha_to_one=False``), i.e. its own start: ``q = 1`` and
    ``forward_step`` returns ``sample`` unchanged, so the step reduces to the mixing layer. A
    strictly descending SIGMAS cannot hold a zero-length step; the pack's chain is this one, and
    the official output is ``mix`` of the pack's output (see test_edict_parity).
    """
    last = steps[-1]
    if last.alpha != last.alpha_prev:
        raise ValueError("the last step is not the official zero-length one")
    return list(steps[:-1])


def sigmas_of(steps: Sequence[Step]) -> torch.Tensor:
    """The SIGMAS (float64) of a chain: one per step start, then the end of the last step."""
    for a, b in zip(steps, steps[1:]):
        if a.alpha_prev != b.alpha:
            raise ValueError("not a chain: a step does not end where the next one starts")
    if any(s.alpha_prev <= s.alpha for s in steps):
        raise ValueError("a zero-length (or backwards) step has no place in a SIGMAS")
    values = [sigma_of_alpha(s.alpha) for s in steps] + [sigma_of_alpha(steps[-1].alpha_prev)]
    return torch.tensor(values, dtype=torch.float64)


def schedule_from_sigmas(sigmas: torch.Tensor, timestep_of: Callable[[float], float]) -> list[Step]:
    """Steps for an arbitrary descending SIGMAS (e.g. ComfyUI's): alpha_bar = 1 / (1 + sigma^2)
    (1 at sigma = 0) and the model label ``timestep_of(sigma)``."""
    s = [float(v) for v in sigmas.to(torch.float64)]
    return [Step(float(timestep_of(a)), alpha_of_sigma(a), alpha_of_sigma(b)) for a, b in zip(s, s[1:])]
