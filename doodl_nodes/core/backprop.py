"""Gradient of a loss on a sampling chain's output w.r.t. its starting state, at constant memory.

``edict_value_and_grad`` (the EDICT pair) and ``euler_value_and_grad`` (one latent, deterministic
Euler/DDIM) return the same numbers as plain autograd through ``edict_sample`` / ``euler_sample`` but
never hold more than one step's activations:

- ``mode="checkpoint"`` runs the chain without grad, keeping each step's *input state* (one or two
  latent tensors per step: bytes, not activations), then walks back recomputing one step at a time
  with grad and pulling the cotangent through it (what the released DOODL code does via memcnn with
  ``keep_input=True``). Cost: one extra forward of each step.
- ``mode="reversible"`` (EDICT only) keeps only the final state and rebuilds each step's input with
  the exact EDICT inverse during the backward walk (the paper's framing). Cost: two extra denoiser
  calls per step more than ``checkpoint``; memory independent of the number of steps even for the
  states. An Euler step has no exact inverse, so the Euler chain refuses it.

Gradients are taken with ``torch.autograd.grad`` w.r.t. the latents only, so no model weight ever
receives a ``.grad`` (freeze weights anyway: it saves the weight-gradient FLOPs).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from .edict import (Denoiser, InputScale, _sigmas_as, edict_step, edict_step_inverse, updates_x_first,
                    validate_chain)
from .euler import euler_step, validate_euler_chain

__all__ = ["GRAD_MODES", "Objective", "PhaseCallback", "edict_value_and_grad", "euler_value_and_grad"]

GRAD_MODES = ("checkpoint", "reversible")
Objective = Callable[..., torch.Tensor]
# step_callback(phase, k, total): phase is "forward" or "backward"; for progress and interrupts
PhaseCallback = Callable[[str, int, int], None]
State = tuple  # of tensors: (x, y) for EDICT, (x,) for Euler
Step = Callable[[int, State], State]


def _zeros_for_none(grads: Sequence[Optional[torch.Tensor]], like: State) -> State:
    return tuple(torch.zeros_like(t) if g is None else g.detach() for g, t in zip(grads, like))


def _objective_grads(objective: Objective, outputs: State):
    with torch.enable_grad():
        leaves = tuple(t.detach().requires_grad_(True) for t in outputs)
        loss = objective(*leaves)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("the objective must return a scalar tensor")
        loss = loss.reshape(())
        grads = (torch.autograd.grad(loss, leaves, allow_unused=True) if loss.requires_grad
                 else (None,) * len(leaves))
    return loss.detach(), _zeros_for_none(grads, leaves)


def _step_vjp(step: Step, k: int, state: State, cotangent: State) -> State:
    """Pull the cotangent of step ``k``'s output back to its input ``state``."""
    with torch.enable_grad():
        inputs = tuple(t.detach().requires_grad_(True) for t in state)
        outputs = step(k, inputs)
        grads = torch.autograd.grad(outputs, inputs, grad_outputs=cotangent, allow_unused=True)
    return _zeros_for_none(grads, inputs)


def _chain_value_and_grad(step: Step, inverse: Optional[Step], objective: Objective, state: State,
                          total: int, mode: str, step_callback: Optional[PhaseCallback]):
    """``(loss, grads, outputs)`` for ``objective(*chain(state))``; ``inverse`` rebuilds the inputs
    in reversible mode (None: checkpoint mode)."""
    state = tuple(t.detach() for t in state)
    inputs: list[State] = []
    with torch.no_grad():
        for k in range(total):
            if inverse is None:
                inputs.append(state)
            state = step(k, state)
            if step_callback is not None:
                step_callback("forward", k, total)
    outputs = state
    loss, grads = _objective_grads(objective, outputs)
    for k in reversed(range(total)):
        if inverse is None:
            state = inputs.pop()
        else:
            with torch.no_grad():
                state = inverse(k, state)
        grads = _step_vjp(step, k, state, grads)
        if step_callback is not None:
            step_callback("backward", k, total)
    return loss, grads, outputs


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

    def step(k, state):
        return edict_step(denoise, *state, s[k], s[k + 1], p,
                          updates_x_first(start_index + k, leapfrog), input_scale)

    def inverse(k, state):
        return edict_step_inverse(denoise, *state, s[k], s[k + 1], p,
                                  updates_x_first(start_index + k, leapfrog), input_scale)

    loss, (gx, gy), (x0, y0) = _chain_value_and_grad(
        step, inverse if mode == "reversible" else None, objective, (x, y), s.numel() - 1, mode,
        step_callback)
    return (loss, gx, gy, x0, y0) if return_outputs else (loss, gx, gy)


def euler_value_and_grad(denoise: Denoiser, objective: Objective, x: torch.Tensor,
                         sigmas: torch.Tensor, *, mode: str = "checkpoint",
                         step_callback: Optional[PhaseCallback] = None,
                         return_outputs: bool = False):
    """``loss = objective(euler_sample(denoise, x, sigmas))`` and ``d loss / d x``, checkpointed
    per step. Returns ``(loss, grad_x)``, plus ``x0`` when ``return_outputs``."""
    if mode != "checkpoint":
        raise ValueError(f"the Euler chain supports only mode='checkpoint' (an Euler step has no exact "
                         f"inverse to rebuild its input from), got {mode!r}")
    validate_euler_chain(x, sigmas)
    s = _sigmas_as(sigmas, x)

    def step(k, state):
        return (euler_step(denoise, state[0], s[k], s[k + 1]),)

    loss, (gx,), (x0,) = _chain_value_and_grad(step, None, objective, (x,), s.numel() - 1, mode,
                                                step_callback)
    return (loss, gx, x0) if return_outputs else (loss, gx)
