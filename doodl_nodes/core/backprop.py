"""Gradient of a loss on the EDICT chain's output w.r.t. its starting pair, at constant memory.

``edict_value_and_grad`` returns the same numbers as plain autograd through ``edict_sample`` but never
holds more than one step's activations:

- ``mode="checkpoint"`` runs the chain without grad, keeping each step's *input state* (two latent
  tensors per step: bytes, not activations), then walks back recomputing one step at a time with
  grad and pulling the cotangent through it (what the released DOODL code does via memcnn with
  ``keep_input=True``). Cost: one extra forward of each step.
- ``mode="reversible"`` keeps only the final state and rebuilds each step's input with the exact EDICT
  inverse during the backward walk (the paper's framing). Cost: two extra denoiser calls per step
  more than ``checkpoint``; memory independent of the number of steps even for the states.

Gradients are taken with ``torch.autograd.grad`` w.r.t. the latents only, so no model weight ever
receives a ``.grad`` (freeze weights anyway: it saves the weight-gradient FLOPs).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .edict import (Denoiser, InputScale, _sigmas_as, edict_step, edict_step_inverse, updates_x_first,
                    validate_chain)

__all__ = ["GRAD_MODES", "Objective", "edict_value_and_grad"]

GRAD_MODES = ("checkpoint", "reversible")
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# step_callback(phase, k, total): phase is "forward" or "backward"; for progress and interrupts
PhaseCallback = Callable[[str, int, int], None]


def _objective_grads(objective: Objective, x0: torch.Tensor, y0: torch.Tensor):
    with torch.enable_grad():
        x0 = x0.detach().requires_grad_(True)
        y0 = y0.detach().requires_grad_(True)
        loss = objective(x0, y0)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("the objective must return a scalar tensor")
        loss = loss.reshape(())
        if loss.requires_grad:
            gx, gy = torch.autograd.grad(loss, (x0, y0), allow_unused=True)
        else:
            gx = gy = None
    gx = torch.zeros_like(x0) if gx is None else gx
    gy = torch.zeros_like(y0) if gy is None else gy
    return loss.detach(), gx.detach(), gy.detach()


def _step_vjp(denoise: Denoiser, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor,
              s_next: torch.Tensor, p: float, x_first: bool, gx: torch.Tensor,
              gy: torch.Tensor, input_scale: Optional[InputScale] = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pull the cotangent (gx, gy) of a step's output back to its input (x, y)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = y.detach().requires_grad_(True)
        x_n, y_n = edict_step(denoise, x, y, s, s_next, p, x_first, input_scale)
        ax, ay = torch.autograd.grad((x_n, y_n), (x, y), grad_outputs=(gx, gy), allow_unused=True)
    ax = torch.zeros_like(x) if ax is None else ax
    ay = torch.zeros_like(y) if ay is None else ay
    return ax.detach(), ay.detach()


def edict_value_and_grad(denoise: Denoiser, objective: Objective, x: torch.Tensor, y: torch.Tensor,
                         sigmas: torch.Tensor, *, p: float = 0.93, leapfrog: bool = True,
                         mode: str = "checkpoint", start_index: int = 0,
                         step_callback: Optional[PhaseCallback] = None,
                         return_outputs: bool = False, input_scale: Optional[InputScale] = None):
    """``loss = objective(*edict_sample(denoise, x, y, sigmas))`` and ``d loss / d (x, y)``.

    Returns ``(loss, grad_x, grad_y)`` (``loss`` a detached 0-d tensor), plus ``(x0, y0)`` when
    ``return_outputs``. The objective sees ``(x0, y0)`` as leaves requiring grad; it may use either.
    ``start_index`` and ``input_scale`` mean what they mean for ``edict_sample``.
    """
    if mode not in GRAD_MODES:
        raise ValueError(f"mode must be one of {GRAD_MODES}, got {mode!r}")
    validate_chain(x, y, sigmas, p)
    s = _sigmas_as(sigmas, x)
    total = s.numel() - 1
    x = x.detach()
    y = y.detach()

    inputs: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.no_grad():
        for k in range(total):
            if mode == "checkpoint":
                inputs.append((x, y))
            x, y = edict_step(denoise, x, y, s[k], s[k + 1], p,
                              updates_x_first(start_index + k, leapfrog), input_scale)
            if step_callback is not None:
                step_callback("forward", k, total)
    x0, y0 = x, y

    loss, gx, gy = _objective_grads(objective, x0, y0)

    for k in reversed(range(total)):
        x_first = updates_x_first(start_index + k, leapfrog)
        if mode == "checkpoint":
            x, y = inputs.pop()
        else:
            with torch.no_grad():
                x, y = edict_step_inverse(denoise, x, y, s[k], s[k + 1], p, x_first, input_scale)
        gx, gy = _step_vjp(denoise, x, y, s[k], s[k + 1], p, x_first, gx, gy, input_scale)
        if step_callback is not None:
            step_callback("backward", k, total)
    if return_outputs:
        return loss, gx, gy, x0, y0
    return loss, gx, gy
