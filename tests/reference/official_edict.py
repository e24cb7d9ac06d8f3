"""EDICT stepping of the official code, in alpha space (diffusers DDIM conventions).

Sources (read, re-written here):

* ``helper_functions.forward_step`` / ``reverse_step`` (DOODL; identical in EDICT's
  ``edict_functions.py``): the DDIM update written with ``q = sqrt(alpha_t / alpha_prev)``.
* ``doodl.SteppingLayer.forward`` (DOODL) and the step loop of
  ``edict_functions.coupled_stablediffusion`` (EDICT): the two coupled updates of a step. With
  leapfrog, an even step index updates x first from eps(y), then y from eps(x_inter) -- the second
  call sees the freshly formed x_inter and is labelled with the SAME timestep t; an odd index swaps
  the roles. Without leapfrog (EDICT's ``leapfrog_steps=False``) x always goes first.
* ``doodl.MixingLayer`` (forward / inverse) and the inline mixing of ``coupled_stablediffusion``.
* The inverse: undo the mixing, then undo the two updates in mirrored order, with the parity of the
  step being undone: ``orig_i = n - (i + 1)``, ``offset = (orig_i + 1) % 2`` where ``i`` counts the
  reversed loop and ``n`` is the number of steps in it.

``eps_fn(x_vp, t)`` is the (already guided) noise prediction; :func:`cfg` builds the official
classifier-free guidance ``eps_u + s * (eps_c - eps_u)`` from a conditional model.

Parity counting: the official loops use ``enumerate`` over the timesteps they run, so a sub-chain
(EDICT's ``timesteps[t_limit:]``, DOODL's partial optimization ``timesteps[-opt_t:]``) restarts the
count at 0. ``index_offset`` adds a fixed offset to that count: 0 reproduces the official
behaviour, the sub-chain's absolute start index reproduces the pack's convention (parity of the
absolute index in the full SIGMAS). Both are the same when the offset is even.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from tests.reference.official_scheduler import Step

EpsFn = Callable[[torch.Tensor, float], torch.Tensor]


def cfg(eps_model: Callable[[torch.Tensor, float, bool], torch.Tensor], scale: float) -> EpsFn:
    """Classifier-free guidance as SteppingLayer does it (both passes always evaluated)."""
    def eps(x, t):
        uncond = eps_model(x, t, False)
        cond = eps_model(x, t, True)
        return uncond + scale * (cond - uncond)
    return eps


def forward_step(step: Step, eps: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    q = (step.alpha / step.alpha_prev) ** 0.5
    return (1.0 / q) * sample - (1.0 / q) * (1.0 - step.alpha) ** 0.5 * eps \
        + (1.0 - step.alpha_prev) ** 0.5 * eps


def reverse_step(step: Step, eps: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    q = (step.alpha / step.alpha_prev) ** 0.5
    return q * sample + (1.0 - step.alpha) ** 0.5 * eps - q * (1.0 - step.alpha_prev) ** 0.5 * eps


def mix(x: torch.Tensor, y: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    x_new = p * x + (1 - p) * y
    y_new = (1 - p) * x_new + p * y
    return x_new, y_new


def unmix(x: torch.Tensor, y: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    y_old = (y - (1 - p) * x) / p
    x_old = (x - (1 - p) * y_old) / p
    return x_old, y_old


def _coupled_updates(update, eps_fn: EpsFn, pair: list, first: int, t: float) -> list:
    """Update ``pair[first]`` from eps(the other), then the other from eps(the new one)."""
    other = 1 - first
    out = list(pair)
    out[first] = update(eps_fn(pair[other], t), pair[first])
    out[other] = update(eps_fn(out[first], t), pair[other])
    return out


def edict_step(eps_fn: EpsFn, x, y, step: Step, index: int, p: float, leapfrog: bool = True):
    """One generative EDICT step (SteppingLayer.forward then MixingLayer.forward)."""
    first = index % 2 if leapfrog else 0
    x, y = _coupled_updates(lambda e, s: forward_step(step, e, s), eps_fn, [x, y], first, step.t)
    return mix(x, y, p)


def edict_unstep(eps_fn: EpsFn, x, y, step: Step, orig_index: int, p: float, leapfrog: bool = True):
    """Undo :func:`edict_step` of the step whose forward index was ``orig_index``
    (MixingLayer.inverse then SteppingLayer.forward(reverse=True))."""
    x, y = unmix(x, y, p)
    first = (orig_index + 1) % 2 if leapfrog else 1
    x, y = _coupled_updates(lambda e, s: reverse_step(step, e, s), eps_fn, [x, y], first, step.t)
    return x, y


def edict_generate(eps_fn: EpsFn, x, y, steps: Sequence[Step], p: float = 0.93,
                   leapfrog: bool = True, index_offset: int = 0):
    for i, step in enumerate(steps):
        x, y = edict_step(eps_fn, x, y, step, i + index_offset, p, leapfrog)
    return x, y


def edict_invert(eps_fn: EpsFn, x, y, steps: Sequence[Step], p: float = 0.93,
                 leapfrog: bool = True, index_offset: int = 0):
    n = len(steps)
    for i, step in enumerate(reversed(list(steps))):
        orig_i = n - (i + 1)
        x, y = edict_unstep(eps_fn, x, y, step, orig_i + index_offset, p, leapfrog)
    return x, y
