"""DOODL: direct optimization of the EDICT starting pair (paper Algorithm 1, eqs. 8-9).

One iteration ``m``, in the released code's order (``doodl.py``, ``gen()``; proved equal to an
independent port of it in ``tests/reference/``)::

    loss, (g_x, g_y) = value_and_grad(chain + objective) at (x_m, y_m)     # backprop.py
    g   = -lr * grad                             # gradient of lr * loss (grad_scale)
    g   = mean(g_x, g_y) for both, if tie_latents   # tie first ...
    g   = clamp(g, -clip, clip)                  # ... then the element-wise clip
    b   = momentum * b + g                       # b starts at g
    x  += b_x + n ; y += b_y + n                 # n ~ perturbation * N(0, I), the same draw for x and y
    x = y = (x + y) / 2, if tie_latents
    rescale x and y to the starting noise's norms, if renormalize

Everything above acts on the *optimized variable* ``u = x / noise_scale``: pass the factor that makes
the starting noise unit-variance (``sqrt(1 + sigma_max**2)`` for an EPS/V chain in sigma space, 1 for
flow) so ``clip`` and ``perturbation`` mean what they mean in the paper, where x_T ~ N(0, I).

``start_step`` > 0 (the released ``opt_t``) first denoises that many steps without grad, ties the pair
if ``tie_latents`` (as the released code does), and then optimizes the partly denoised pair; the
renormalization target stays the norm of the starting noise (the released code's ``orig_norm``).
Step parity always counts from ``start_index``, the absolute index of ``sigmas[0]`` in the SIGMAS the
chain belongs to, so an optimized pair regenerates with EDICT exactly as it was scored.

The best iterate (lowest loss) is kept. After the last update, the final iterate is scored with a
forward-only pass (``evaluate_final``) so that ``best_*`` covers every iterate that was produced.
A non-finite loss or gradient stops the run: the last finite iterate and the best one are returned
and ``status == "nonfinite"``. An all-zero gradient is reported in ``warnings``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch

from .backprop import GRAD_MODES, Objective, PhaseCallback
from .chains import CHAINS, make_chain
from .edict import Denoiser, InputScale, _sigmas_as, validate_chain

__all__ = ["DoodlConfig", "DoodlResult", "IterationInfo", "doodl_optimize", "doodl_update"]


@dataclass
class DoodlConfig:
    """DOODL hyper-parameters; defaults are the paper's / released ``gen()`` values."""

    iterations: int = 50
    lr: float = 1.0                 # the paper's lambda / released grad_scale: multiplies the loss
    momentum: float = 0.9
    clip: float = 1e-3              # element-wise gradient clip; <= 0 disables it
    perturbation: float = 1e-4      # std of the Gaussian added each update; 0 disables it
    renormalize: bool = True        # rescale each latent to its initial norm after every update
    tie_latents: bool = True        # average the pair's gradients and set x = y after every update
    p: float = 0.93                 # EDICT mixing weight
    leapfrog: bool = True           # EDICT alternating update order (official code)
    grad_mode: str = "checkpoint"   # "checkpoint" or "reversible" (see backprop.py)
    seed: int = 0                   # seeds the perturbation noise
    start_step: int = 0             # optimize the latent after this many denoising steps (opt_t)
    evaluate_final: bool = True     # score the last iterate with a forward-only pass
    chain: str = "edict"            # "edict" (the pair, exactly invertible) or "euler" (one latent)

    def validate(self, num_steps: Optional[int] = None) -> None:
        def bad(name, why):
            raise ValueError(f"DoodlConfig.{name} {why}, got {getattr(self, name)!r}")
        if not isinstance(self.iterations, int) or self.iterations < 0:
            bad("iterations", "must be an integer >= 0")
        for name in ("lr", "clip", "perturbation"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(name, "must be a finite number")
        if self.lr < 0:
            bad("lr", "must be >= 0")
        if self.perturbation < 0:
            bad("perturbation", "must be >= 0")
        if not (0.0 <= self.momentum < 1.0):
            bad("momentum", "must be in [0, 1)")
        if not (0.0 < self.p <= 1.0):
            bad("p", "must be in (0, 1]")
        if self.grad_mode not in GRAD_MODES:
            bad("grad_mode", f"must be one of {GRAD_MODES}")
        if self.chain not in CHAINS:
            bad("chain", f"must be one of {CHAINS}")
        if self.chain == "euler" and self.grad_mode != "checkpoint":
            bad("grad_mode", "must be 'checkpoint' for the Euler chain (an Euler step has no exact "
                             "inverse to rebuild its input from)")
        if not isinstance(self.start_step, int) or self.start_step < 0:
            bad("start_step", "must be an integer >= 0")
        if num_steps is not None and self.start_step >= num_steps:
            raise ValueError(f"DoodlConfig.start_step ({self.start_step}) must be smaller than the "
                             f"number of sampling steps ({num_steps}): at least one step must remain "
                             "to optimize through")


@dataclass
class IterationInfo:
    """What the per-iteration callback sees (before the update of iteration ``iteration``)."""

    iteration: int
    iterations: int
    loss: float
    grad_norm: float
    best_loss: float
    x: torch.Tensor        # the iterate that was scored (state space)
    y: torch.Tensor
    x0: torch.Tensor       # the chain's output for it
    y0: torch.Tensor


@dataclass
class DoodlResult:
    x: torch.Tensor                 # final pair (state space, at sigmas[start_step])
    y: torch.Tensor
    best_x: torch.Tensor
    best_y: torch.Tensor
    best_loss: float
    losses: list[float] = field(default_factory=list)   # loss of iterate m, one per iteration
    final_loss: Optional[float] = None                  # loss of the final iterate, if evaluated
    best_iteration: int = 0                             # index of the best iterate (== len(losses) for the final one)
    status: str = "completed"       # "completed" | "stopped" (callback) | "nonfinite"
    warnings: list[str] = field(default_factory=list)
    start_step: int = 0
    sigmas: Optional[torch.Tensor] = None               # the sub-chain that was optimized through
    # the chain's outputs (x0, y0) for the final and the best pair, when they were computed
    # (``final_*`` is None when the final iterate was not scored, e.g. evaluate_final=False)
    final_x0: Optional[torch.Tensor] = None
    final_y0: Optional[torch.Tensor] = None
    best_x0: Optional[torch.Tensor] = None
    best_y0: Optional[torch.Tensor] = None


def doodl_update(u: tuple, grad: tuple, velocity: Optional[tuple], norms0, config: DoodlConfig,
                 generator: torch.Generator):
    """One DOODL update of the optimized latents ``u`` (the EDICT pair, or one latent for the Euler
    chain) from the loss gradient ``grad`` (w.r.t. ``u``).

    Returns ``(new_u, new_velocity)``. Pure function of its inputs and the generator state.
    """
    g = tuple(-config.lr * gi for gi in grad)
    tie = config.tie_latents and len(u) > 1
    if tie:  # the released order: tie, then clip
        g = (sum(g) / len(g),) * len(g)
    if config.clip > 0:
        g = tuple(gi.clamp(-config.clip, config.clip) for gi in g)
    b = g if velocity is None else tuple(config.momentum * vi + gi for vi, gi in zip(velocity, g))
    u = tuple(ui + bi for ui, bi in zip(u, b))
    if config.perturbation > 0:
        noise = torch.randn(u[0].shape, generator=generator, dtype=torch.float64, device="cpu")
        noise = noise.to(device=u[0].device, dtype=u[0].dtype) * config.perturbation
        u = tuple(ui + noise for ui in u)   # the same draw for x and y
    if tie:
        u = (sum(u) / len(u),) * len(u)
    if config.renormalize:
        u = tuple(_rescale(ui, ni) for ui, ni in zip(u, norms0))
    return u, b


def _norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).reshape(-1, *([1] * (t.dim() - 1)))


def _rescale(t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return t * (target / _norms(t).clamp_min(torch.finfo(t.dtype).tiny))


def _finite(*ts: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in ts)


def _scale_at(noise_scale, sigma) -> float:
    v = float(noise_scale(float(sigma)) if callable(noise_scale) else noise_scale)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"noise_scale must be a positive finite number, got {v!r}")
    return v


def _record(result: DoodlResult, m: int, loss: float, pair: tuple, outputs: tuple) -> None:
    """Keep iterate ``m`` as the latest, and as the best if it scored lowest."""
    result.x, result.y = pair
    if loss < result.best_loss:
        result.best_loss, result.best_iteration = loss, m
        result.best_x, result.best_y = pair
        result.best_x0, result.best_y0 = outputs


def _evaluate_final(result: DoodlResult, ops, objective: Objective, state: tuple,
                    chain: torch.Tensor, start_index: int, m: int) -> None:
    """Score the final iterate with a forward-only pass (it may be the best)."""
    with torch.no_grad():
        outputs = ops.pair(ops.sample(state, chain, start_index))
    with torch.enable_grad():  # objectives may build graphs; we only need the value
        final = float(objective(*outputs).detach())
    if math.isfinite(final):
        result.final_loss = final
        result.final_x0, result.final_y0 = outputs
        _record(result, m, final, ops.pair(state), outputs)
    else:
        result.warnings.append("the final iterate's loss is not finite; best_* excludes it")


def doodl_optimize(denoise: Denoiser, objective: Objective, x: torch.Tensor, sigmas: torch.Tensor,
                   config: DoodlConfig, *, y: Optional[torch.Tensor] = None,
                   callback: Optional[Callable[[IterationInfo], Optional[bool]]] = None,
                   noise_scale: Union[float, Callable[[float], float]] = 1.0,
                   step_callback: Optional[PhaseCallback] = None, start_index: int = 0,
                   input_scale: Optional[InputScale] = None) -> DoodlResult:
    """Optimize the chain's starting latent(s) to minimize ``objective(x0, y0)`` (Algorithm 1).

    ``config.chain`` picks the chain: "edict" (the pair; ``y=None`` means ``y = x``, text-to-image; a
    pair from ``edict_invert`` is editing) or "euler" (one latent ``x``; ``y`` must be None, and the
    objective receives its one output twice, ``objective(x0, x0)``).
    ``noise_scale`` is a number, or a function of a sigma (the scale at ``sigmas[start_step]`` sets
    the optimized variable, the one at ``sigmas[0]`` the renormalization target).
    ``start_index`` is the absolute index of ``sigmas[0]`` in the SIGMAS the pair belongs to (step
    parity); ``input_scale`` the model's ``c_in`` (see ``edict.py``).
    ``callback(info)`` runs once per iteration; returning True stops the run.
    ``step_callback(phase, k, total)`` runs after every chain step (progress, interrupts).
    """
    if config.chain == "euler" and y is not None:
        raise ValueError("the Euler chain optimizes one latent: pass y=None (an EDICT pair needs "
                         "chain='edict')")
    y = x if y is None else y
    validate_chain(x, y, sigmas, config.p)
    config.validate(sigmas.numel() - 1)
    ops = make_chain(config.chain, denoise, p=config.p, leapfrog=config.leapfrog,
                     input_scale=input_scale)
    s = _sigmas_as(sigmas, x)
    k0 = config.start_step
    state = ops.state(x.detach(), y.detach())
    scale0 = _scale_at(noise_scale, s[0])
    norms0 = tuple(_norms(t / scale0) for t in state)   # the released code's orig_norm
    if k0 > 0:
        with torch.no_grad():
            state = ops.sample(state, s[:k0 + 1], start_index)
        if config.tie_latents and len(state) > 1:
            state = (sum(state) / len(state),) * len(state)
    chain = s[k0:]
    scale = _scale_at(noise_scale, chain[0])
    generator = torch.Generator(device="cpu").manual_seed(int(config.seed))
    u = tuple(t / scale for t in state)
    velocity = None
    x, y = ops.pair(state)
    result = DoodlResult(x=x, y=y, best_x=x, best_y=y, best_loss=math.inf, start_step=k0,
                         sigmas=chain)
    zero_grad_iters = []

    for m in range(config.iterations):
        loss_t, grads, outputs = ops.value_and_grad(objective, tuple(t * scale for t in u), chain,
                                                    start_index + k0, config.grad_mode, step_callback)
        loss = float(loss_t)
        pair, out_pair = ops.pair(tuple(t * scale for t in u)), ops.pair(outputs)
        if not (math.isfinite(loss) and _finite(*grads)):
            what = "loss" if not math.isfinite(loss) else "gradient"
            result.status = "nonfinite"
            result.warnings.append(f"iteration {m}: the {what} is not finite (NaN or inf); stopped "
                                   "and returned the best finite iterate so far")
            if result.losses:
                result.x, result.y = result.best_x, result.best_y
                result.final_x0, result.final_y0 = result.best_x0, result.best_y0
            break
        result.losses.append(loss)
        _record(result, m, loss, pair, out_pair)
        grad_norm = float(torch.sqrt(sum(g.pow(2).sum() for g in grads))) * scale
        if grad_norm == 0.0:
            zero_grad_iters.append(m)
        if callback is not None:
            info = IterationInfo(m, config.iterations, loss, grad_norm, result.best_loss, *pair,
                                 *out_pair)
            if callback(info):
                result.status = "stopped"
                result.final_x0, result.final_y0 = out_pair
                break
        u, velocity = doodl_update(u, tuple(g * scale for g in grads), velocity, norms0, config,
                                   generator)
        result.x, result.y = ops.pair(tuple(t * scale for t in u))
    else:
        if config.evaluate_final and config.iterations > 0:
            _evaluate_final(result, ops, objective, tuple(t * scale for t in u), chain,
                            start_index + k0, config.iterations)
    if zero_grad_iters:
        result.warnings.append(
            f"the gradient was exactly zero at {len(zero_grad_iters)} of {len(result.losses)} "
            "iterations: the objective does not depend on the latent there (a scorer without a "
            "gradient path, or a loss saturated/clamped), so only the perturbation moved it")
    if config.iterations == 0:
        result.best_loss = math.nan
    return result
