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

from .edict import (Denoiser, InputScale, _sigmas_as, edict_step_inverse_parts, edict_step_parts,
                    ode_direction, second_call_scale, updates_x_first, validate_chain)
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
    """Pull the cotangent of step ``k``'s output back to its input ``state`` (plain autograd)."""
    with torch.enable_grad():
        inputs = tuple(t.detach().requires_grad_(True) for t in state)
        outputs = step(k, inputs)
        grads = torch.autograd.grad(outputs, inputs, grad_outputs=cotangent, allow_unused=True)
    return _zeros_for_none(grads, inputs)


def _chain_value_and_grad(forward, vjp, objective: Objective, state: State, total: int,
                          step_callback: Optional[PhaseCallback], inverse=None):
    """``(loss, grads, outputs)`` for ``objective(*chain(state))``.

    ``forward(k, state) -> (state, saved)`` makes step ``k`` (``saved``: whatever its VJP needs
    besides the input); ``vjp(k, state, saved, cotangent) -> cotangent`` pulls a cotangent through
    it. Checkpoint mode keeps every step's ``(input, saved)`` from the forward walk; with
    ``inverse(k, state) -> (input, saved)`` (reversible mode) only the final state is kept and the
    backward walk rebuilds each step's input."""
    state = tuple(t.detach() for t in state)
    kept: list = []
    with torch.no_grad():
        for k in range(total):
            new_state, saved = forward(k, state)
            if inverse is None:
                kept.append((state, saved))
            state = new_state
            if step_callback is not None:
                step_callback("forward", k, total)
    outputs = state
    loss, grads = _objective_grads(objective, outputs)
    for k in reversed(range(total)):
        if inverse is None:
            state, saved = kept.pop()
        else:
            with torch.no_grad():
                *inputs, saved = inverse(k, state)
                state = tuple(inputs)
        grads = vjp(k, state, saved, grads)
        if step_callback is not None:
            step_callback("backward", k, total)
    return loss, grads, outputs


def _direction_vjp(denoise: Denoiser, z: torch.Tensor, sigma: torch.Tensor,
                   cotangent: torch.Tensor) -> torch.Tensor:
    """``J^T cotangent`` of ``z -> ode_direction(denoise, z, sigma)``: one model call with grad."""
    with torch.enable_grad():
        zz = z.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(ode_direction(denoise, zz, sigma), zz, cotangent)
    return g.detach()


def _edict_step_vjp(denoise: Denoiser, x: torch.Tensor, y: torch.Tensor, first: torch.Tensor,
                    sigma: torch.Tensor, sigma_next: torch.Tensor, p: float, x_first: bool,
                    input_scale: Optional[InputScale], gx_n: torch.Tensor, gy_n: torch.Tensor):
    """The VJP of one EDICT step as two single-call VJPs, second call first (chain rule by hand;
    equal to autograd through the step). ``first`` is the step's intermediate (the half-step made
    first), so no model call is repeated; only one call's activations are alive at a time."""
    dt = sigma_next - sigma
    r = second_call_scale(input_scale, sigma, sigma_next)
    # mixing: x_n = p x_i + (1-p) y_i ; y_n = p y_i + (1-p) x_n
    g_xi = p * gx_n + (1 - p) * p * gy_n
    g_yi = (1 - p) * gx_n + (p + (1 - p) ** 2) * gy_n
    if x_first:   # x_i = x + dt d(y); y_i = y + dt d(r x_i)
        g_xi = g_xi + dt * r * _direction_vjp(denoise, r * first, sigma, g_yi)
        return g_xi, g_yi + dt * _direction_vjp(denoise, y, sigma, g_xi)
    # y_i = y + dt d(x); x_i = x + dt d(r y_i)
    g_yi = g_yi + dt * r * _direction_vjp(denoise, r * first, sigma, g_xi)
    return g_xi + dt * _direction_vjp(denoise, x, sigma, g_yi), g_yi


def edict_value_and_grad(denoise: Denoiser, objective: Objective, x: torch.Tensor, y: torch.Tensor,
                         sigmas: torch.Tensor, *, p: float = 0.93, leapfrog: bool = True,
                         mode: str = "checkpoint", start_index: int = 0,
                         step_callback: Optional[PhaseCallback] = None,
                         return_outputs: bool = False, input_scale: Optional[InputScale] = None):
    """``loss = objective(*edict_sample(denoise, x, y, sigmas))`` and ``d loss / d (x, y)``.

    Returns ``(loss, grad_x, grad_y)`` (``loss`` a detached 0-d tensor), plus ``(x0, y0)`` when
    ``return_outputs``. The objective sees ``(x0, y0)`` as leaves requiring grad; it may use either.
    ``start_index`` and ``input_scale`` mean what they mean for ``edict_sample``. Each step's VJP
    runs its two model calls' VJPs one after the other, so at most one model call's activations
    are alive at any time.
    """
    if mode not in GRAD_MODES:
        raise ValueError(f"mode must be one of {GRAD_MODES}, got {mode!r}")
    validate_chain(x, y, sigmas, p)
    s = _sigmas_as(sigmas, x)
    order = lambda k: updates_x_first(start_index + k, leapfrog)  # noqa: E731

    def forward(k, state):
        x_n, y_n, first = edict_step_parts(denoise, *state, s[k], s[k + 1], p, order(k), input_scale)
        return (x_n, y_n), first

    def inverse(k, state):
        return edict_step_inverse_parts(denoise, *state, s[k], s[k + 1], p, order(k), input_scale)

    def vjp(k, state, first, cotangent):
        return _edict_step_vjp(denoise, *state, first, s[k], s[k + 1], p, order(k), input_scale,
                               *cotangent)

    loss, (gx, gy), (x0, y0) = _chain_value_and_grad(
        forward, vjp, objective, (x, y), s.numel() - 1, step_callback,
        inverse if mode == "reversible" else None)
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

    loss, (gx,), (x0,) = _chain_value_and_grad(
        lambda k, state: (step(k, state), None),
        lambda k, state, saved, cotangent: _step_vjp(step, k, state, cotangent),
        objective, (x,), s.numel() - 1, step_callback)
    return (loss, gx, x0) if return_outputs else (loss, gx)
