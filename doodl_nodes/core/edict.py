"""EDICT (exactly invertible diffusion sampling) in ComfyUI's sigma space.

A *denoiser* is ``denoise(z, sigma) -> x0_prediction`` (ComfyUI's convention). The probability-flow
ODE direction is ``d(z, sigma) = (z - denoise(z, sigma)) / sigma`` for EPS, V and flow models alike,
and a deterministic Euler step ``z + (sigma_next - sigma) * d`` *is* DDIM. EDICT (paper eq. 5) couples
two sequences ``x`` and ``y``; one step from ``sigma`` to ``sigma_next`` is::

    x_inter = x + (sigma_next - sigma) * d(y, sigma)
    y_inter = y + (sigma_next - sigma) * d(r * x_inter, sigma),  r = c_in(sigma_next) / c_in(sigma)
    x_next  = p * x_inter + (1 - p) * y_inter            # mixing, always x then y
    y_next  = p * y_inter + (1 - p) * x_next

The factor ``r`` is what makes this the official alpha-space update. There the second model call
sees ``x_inter`` exactly as it was formed (already at the next noise level) and is labelled with the
current timestep. A model sees ``c_in(sigma) * z`` for a latent ``z`` (ComfyUI's
``model_sampling.calculate_input``), so calling ``denoise(x_inter, sigma)`` would show it
``x_inter * c_in(sigma)`` instead of ``x_inter * c_in(sigma_next)``: too small by
``sqrt(alpha_bar_t / alpha_bar_t-1)`` for EPS/V models (0.89 at the first of 50 SD steps). Passing
``r * x_inter`` shows the model exactly the official input; the direction read from that call is the
model's epsilon there. ``input_scale`` gives ``c_in``: :func:`vp_input_scale` (``1 / sqrt(1 +
sigma**2)``, EPS and V models with sigma_data 1: SD1.x, SD2.x, SDXL) is the default; the ComfyUI
bridge passes each model's own ``calculate_input``, which for flow models (c_in = 1) makes ``r = 1``
(chosen by measurement: see benchmarks/edict_flow_choice.py and the README's Fidelity section).

With ``leapfrog=True`` (the official code's default) odd steps swap the roles of x and y in the
first two lines (y is updated first, from d(x)); the inverse mirrors the parity. The inverse of a
step (eq. 6) undoes the mixing by linear solves and the updates by re-evaluating the same denoiser
calls on the same inputs, so ``edict_invert(edict_sample(x, y))`` returns ``(x, y)`` to float64
rounding for any deterministic denoiser. Keep the state in float64 for that; the denoiser may run
in any dtype (its output is cast back to the state dtype).

Steps are numbered by their index ``i`` into ``sigmas`` (step ``i`` goes from ``sigmas[i]`` to
``sigmas[i+1]``); ``start_index`` is the absolute index of ``sigmas[0]`` in the SIGMAS a chain was cut
from, so that every entry point (sampling, inversion, DOODL) gives a step the same parity.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = [
    "Denoiser", "InputScale", "StepCallback", "validate_chain", "ode_direction", "edict_step",
    "edict_step_inverse", "edict_step_parts", "edict_step_inverse_parts", "edict_sample", "edict_invert", "vp_input_scale", "unit_input_scale",
    "second_call_scale", "updates_x_first",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``c_in(sigma)``: the factor a model applies to a latent at ``sigma`` before its network
InputScale = Callable[[torch.Tensor], torch.Tensor]
# callback(i, total, x, y): called after step i (generation) or after undoing step i (inversion)
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def validate_chain(x: torch.Tensor, y: torch.Tensor, sigmas: torch.Tensor, p: float) -> None:
    """Raise ``ValueError`` naming the offending argument for an unusable EDICT chain."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError("x and y must be tensors")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype != y.dtype or x.device != y.device:
        raise ValueError(f"x and y must share dtype and device, got {x.dtype}/{x.device} and "
                         f"{y.dtype}/{y.device}")
    if not torch.is_floating_point(x):
        raise ValueError(f"x and y must be floating point, got {x.dtype}")
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1:
        raise ValueError("sigmas must be a 1-D tensor of noise levels (ComfyUI SIGMAS)")
    if sigmas.numel() < 2:
        raise ValueError(f"sigmas needs at least 2 entries (one step), got {sigmas.numel()}")
    if not bool(torch.isfinite(sigmas).all()):
        raise ValueError("sigmas contains NaN or infinite values")
    if not bool((sigmas[:-1] > 0).all()):
        raise ValueError("every sigma but the last must be > 0 (the last may be 0)")
    if bool((sigmas[-1] < 0).any()):
        raise ValueError("sigmas must not be negative")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas must be strictly descending (noisiest first), as ComfyUI schedulers give")
    if not isinstance(p, (int, float)) or not (0.0 < float(p) <= 1.0):
        raise ValueError(f"p (the EDICT mixing weight) must be in (0, 1], got {p!r}")
    if not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(y).all()):
        raise ValueError("x and y must be finite")


def ode_direction(denoise: Denoiser, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``(z - denoise(z, sigma)) / sigma``, computed in ``z``'s dtype."""
    den = denoise(z, sigma)
    if den.shape != z.shape:
        raise RuntimeError(f"the denoiser returned shape {tuple(den.shape)} for input {tuple(z.shape)}")
    return (z - den.to(z.dtype)) / sigma


def vp_input_scale(sigma: torch.Tensor) -> torch.Tensor:
    """``c_in = 1 / sqrt(1 + sigma**2)``: EPS and V-prediction models (sigma_data 1) in sigma space,
    where ``c_in * z`` is the official alpha-space latent ``sqrt(alpha_bar) * z``."""
    return torch.rsqrt(1 + sigma * sigma)


def unit_input_scale(sigma: torch.Tensor) -> torch.Tensor:
    """``c_in = 1``: models that see the latent as it is (flow models: SD3, Flux)."""
    return torch.ones_like(sigma)


def second_call_scale(input_scale: Optional[InputScale], sigma: torch.Tensor,
                      sigma_next: torch.Tensor) -> torch.Tensor:
    """``r = c_in(sigma_next) / c_in(sigma)``: the factor on ``x_inter`` for the step's second model
    call (see the module docstring)."""
    c_in = vp_input_scale if input_scale is None else input_scale
    return c_in(sigma_next) / c_in(sigma)


def updates_x_first(i: int, leapfrog: bool) -> bool:
    """Whether step ``i`` (absolute index in SIGMAS) updates x before y."""
    return (not leapfrog) or (i % 2 == 0)


def edict_step_parts(denoise: Denoiser, x: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor,
                     sigma_next: torch.Tensor, p: float, x_first: bool = True,
                     input_scale: Optional[InputScale] = None):
    """:func:`edict_step` that also returns its intermediate: ``(x_next, y_next, first)`` where
    ``first`` is the half-step made first (``x_inter`` if ``x_first``, else ``y_inter``), the input
    of the second model call (times ``r``)."""
    dt = sigma_next - sigma
    r = second_call_scale(input_scale, sigma, sigma_next)
    if x_first:
        x_i = x + dt * ode_direction(denoise, y, sigma)
        y_i = y + dt * ode_direction(denoise, r * x_i, sigma)
        first = x_i
    else:
        y_i = y + dt * ode_direction(denoise, x, sigma)
        x_i = x + dt * ode_direction(denoise, r * y_i, sigma)
        first = y_i
    x_n = p * x_i + (1 - p) * y_i
    y_n = p * y_i + (1 - p) * x_n
    return x_n, y_n, first


def edict_step(denoise: Denoiser, x: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor,
               sigma_next: torch.Tensor, p: float, x_first: bool = True,
               input_scale: Optional[InputScale] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One EDICT step from ``sigma`` to ``sigma_next`` (eq. 5, the official update; see the module
    docstring). ``x_first=False`` is the leapfrog variant: y is updated first (from d(x)), then x
    (from d(y_inter))."""
    x_n, y_n, _ = edict_step_parts(denoise, x, y, sigma, sigma_next, p, x_first, input_scale)
    return x_n, y_n


def edict_step_inverse_parts(denoise: Denoiser, x_n: torch.Tensor, y_n: torch.Tensor,
                             sigma: torch.Tensor, sigma_next: torch.Tensor, p: float,
                             x_first: bool = True, input_scale: Optional[InputScale] = None):
    """:func:`edict_step_inverse` that also returns the step's intermediate (as
    :func:`edict_step_parts` does): ``(x, y, first)``."""
    dt = sigma_next - sigma
    r = second_call_scale(input_scale, sigma, sigma_next)
    y_i = (y_n - (1 - p) * x_n) / p
    x_i = (x_n - (1 - p) * y_i) / p
    if x_first:
        y = y_i - dt * ode_direction(denoise, r * x_i, sigma)
        x = x_i - dt * ode_direction(denoise, y, sigma)
        return x, y, x_i
    x = x_i - dt * ode_direction(denoise, r * y_i, sigma)
    y = y_i - dt * ode_direction(denoise, x, sigma)
    return x, y, y_i


def edict_step_inverse(denoise: Denoiser, x_n: torch.Tensor, y_n: torch.Tensor,
                       sigma: torch.Tensor, sigma_next: torch.Tensor, p: float,
                       x_first: bool = True, input_scale: Optional[InputScale] = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inverse of :func:`edict_step` with the same arguments (eq. 6)."""
    x, y, _ = edict_step_inverse_parts(denoise, x_n, y_n, sigma, sigma_next, p, x_first, input_scale)
    return x, y


def _sigmas_as(sigmas: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # a plain (non-inference) copy in the state dtype: ComfyUI hands out inference-tensor SIGMAS
    with torch.inference_mode(False):
        return sigmas.detach().to(device=like.device, dtype=like.dtype).clone()


def edict_sample(denoise: Denoiser, x: torch.Tensor, y: torch.Tensor, sigmas: torch.Tensor, *,
                 p: float = 0.93, leapfrog: bool = True, callback: Optional[StepCallback] = None,
                 start_index: int = 0, input_scale: Optional[InputScale] = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """EDICT generation from ``sigmas[0]`` to ``sigmas[-1]``; returns ``(x0, y0)``.

    The coupled state is computed in the dtype of ``x`` (pass float64 for exact inversion).
    ``start_index`` is the absolute index of ``sigmas[0]`` in the SIGMAS the chain was cut from
    (leapfrog parity). ``input_scale`` is the model's ``c_in`` (default :func:`vp_input_scale`).
    """
    validate_chain(x, y, sigmas, p)
    s = _sigmas_as(sigmas, x)
    total = s.numel() - 1
    for k in range(total):
        x, y = edict_step(denoise, x, y, s[k], s[k + 1], p, updates_x_first(start_index + k, leapfrog),
                          input_scale)
        if callback is not None:
            callback(k, total, x, y)
    return x, y


def edict_invert(denoise: Denoiser, x0: torch.Tensor, y0: torch.Tensor, sigmas: torch.Tensor, *,
                 p: float = 0.93, leapfrog: bool = True, callback: Optional[StepCallback] = None,
                 start_index: int = 0, input_scale: Optional[InputScale] = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inverse of :func:`edict_sample` with the same ``sigmas`` (descending, as given to the
    generator): walks the steps backwards from ``sigmas[-1]`` to ``sigmas[0]``.

    For a real image, pass ``x0 = y0 = latent`` (model space). The callback receives the index of the
    step just undone, counting down.
    """
    validate_chain(x0, y0, sigmas, p)
    s = _sigmas_as(sigmas, x0)
    total = s.numel() - 1
    x, y = x0, y0
    for k in reversed(range(total)):
        x, y = edict_step_inverse(denoise, x, y, s[k], s[k + 1], p,
                                  updates_x_first(start_index + k, leapfrog), input_scale)
        if callback is not None:
            callback(k, total, x, y)
    return x, y
