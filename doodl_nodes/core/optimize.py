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

from .backprop import GRAD_MODES, Objective, PhaseCallback, edict_value_and_grad
from .edict import Denoiser, InputScale, _sigmas_as, edict_sample, validate_chain

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


def doodl_update(u: tuple[torch.Tensor, torch.Tensor], grad: tuple[torch.Tensor, torch.Tensor],
                 velocity: Optional[tuple[torch.Tensor, torch.Tensor]], norms0, config: DoodlConfig,
                 generator: torch.Generator):
    """One DOODL update of the optimized pair ``u`` from the loss gradient ``grad`` (w.r.t. ``u``).

    Returns ``(new_u, new_velocity)``. Pure function of its inputs and the generator state.
    """
    gx, gy = (-config.lr * g for g in grad)
    if config.tie_latents:  # the released order: tie, then clip
        gx = gy = (gx + gy) / 2
    if config.clip > 0:
        gx, gy = gx.clamp(-config.clip, config.clip), gy.clamp(-config.clip, config.clip)
    if velocity is None:
        bx, by = gx, gy
    else:
        bx, by = config.momentum * velocity[0] + gx, config.momentum * velocity[1] + gy
    ux, uy = u[0] + bx, u[1] + by
    if config.perturbation > 0:
        noise = torch.randn(ux.shape, generator=generator, dtype=torch.float64, device="cpu")
        noise = noise.to(device=ux.device, dtype=ux.dtype) * config.perturbation
        ux, uy = ux + noise, uy + noise
    if config.tie_latents:
        ux = uy = (ux + uy) / 2
    if config.renormalize:
        ux = _rescale(ux, norms0[0])
        uy = _rescale(uy, norms0[1])
    return (ux, uy), (bx, by)


def _norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).reshape(-1, *([1] * (t.dim() - 1)))


def _rescale(t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return t * (target / _norms(t).clamp_min(torch.finfo(t.dtype).tiny))


def _finite(*ts: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in ts)


def doodl_optimize(denoise: Denoiser, objective: Objective, x: torch.Tensor, sigmas: torch.Tensor,
                   config: DoodlConfig, *, y: Optional[torch.Tensor] = None,
                   callback: Optional[Callable[[IterationInfo], Optional[bool]]] = None,
                   noise_scale: Union[float, Callable[[float], float]] = 1.0,
                   step_callback: Optional[PhaseCallback] = None, start_index: int = 0,
                   input_scale: Optional[InputScale] = None) -> DoodlResult:
    """Optimize the EDICT starting pair to minimize ``objective(x0, y0)`` (Algorithm 1).

    ``y=None`` means ``y = x`` (text-to-image); a pair from ``edict_invert`` is editing.
    ``noise_scale`` is a number, or a function of a sigma (the scale at ``sigmas[start_step]`` sets
    the optimized variable, the one at ``sigmas[0]`` the renormalization target).
    ``start_index`` is the absolute index of ``sigmas[0]`` in the SIGMAS the pair belongs to (step
    parity); ``input_scale`` the model's ``c_in`` (see ``edict.py``).
    ``callback(info)`` runs once per iteration; returning True stops the run.
    ``step_callback(phase, k, total)`` runs after every chain step (progress, interrupts).
    """
    y = x if y is None else y
    validate_chain(x, y, sigmas, config.p)
    num_steps = sigmas.numel() - 1
    config.validate(num_steps)
    s = _sigmas_as(sigmas, x)
    k0 = config.start_step
    chain_kw = dict(p=config.p, leapfrog=config.leapfrog, input_scale=input_scale)

    def scale_at(sigma) -> float:
        v = float(noise_scale(float(sigma)) if callable(noise_scale) else noise_scale)
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"noise_scale must be a positive finite number, got {v!r}")
        return v

    x, y = x.detach(), y.detach()
    scale0 = scale_at(s[0])
    norms0 = (_norms(x / scale0), _norms(y / scale0))   # the released code's orig_norm
    if k0 > 0:
        with torch.no_grad():
            x, y = edict_sample(denoise, x, y, s[:k0 + 1], start_index=start_index, **chain_kw)
        if config.tie_latents:
            x = y = (x + y) / 2
    chain = s[k0:]
    scale = scale_at(chain[0])

    def value_and_grad(ux, uy):
        return edict_value_and_grad(denoise, objective, ux * scale, uy * scale, chain,
                                    mode=config.grad_mode, start_index=start_index + k0,
                                    step_callback=step_callback, return_outputs=True, **chain_kw)

    generator = torch.Generator(device="cpu").manual_seed(int(config.seed))
    u = (x / scale, y / scale)
    velocity = None
    result = DoodlResult(x=x, y=y, best_x=x, best_y=y, best_loss=math.inf, start_step=k0,
                         sigmas=chain)
    zero_grad_iters = []

    for m in range(config.iterations):
        loss_t, gx, gy, x0, y0 = value_and_grad(*u)
        loss = float(loss_t)
        if not (math.isfinite(loss) and _finite(gx, gy)):
            what = "loss" if not math.isfinite(loss) else "gradient"
            result.status = "nonfinite"
            result.warnings.append(f"iteration {m}: the {what} is not finite (NaN or inf); stopped "
                                   "and returned the best finite iterate so far")
            if result.losses:
                result.x, result.y = result.best_x, result.best_y
                result.final_x0, result.final_y0 = result.best_x0, result.best_y0
            break
        result.losses.append(loss)
        result.x, result.y = u[0] * scale, u[1] * scale
        if loss < result.best_loss:
            result.best_loss, result.best_iteration = loss, m
            result.best_x, result.best_y = result.x, result.y
            result.best_x0, result.best_y0 = x0, y0
        grad_norm = float(torch.sqrt(gx.pow(2).sum() + gy.pow(2).sum())) * scale
        if grad_norm == 0.0:
            zero_grad_iters.append(m)
        if callback is not None:
            info = IterationInfo(m, config.iterations, loss, grad_norm, result.best_loss,
                                 result.x, result.y, x0, y0)
            if callback(info):
                result.status = "stopped"
                result.final_x0, result.final_y0 = x0, y0
                break
        u, velocity = doodl_update(u, (gx * scale, gy * scale), velocity, norms0, config, generator)
        result.x, result.y = u[0] * scale, u[1] * scale
    else:
        if config.evaluate_final and config.iterations > 0:
            with torch.no_grad():
                x0, y0 = edict_sample(denoise, result.x, result.y, chain,
                                      start_index=start_index + k0, **chain_kw)
            with torch.enable_grad():  # objectives may build graphs; we only need the value
                final = float(objective(x0, y0).detach())
            if math.isfinite(final):
                result.final_loss = final
                result.final_x0, result.final_y0 = x0, y0
                if final < result.best_loss:
                    result.best_loss, result.best_iteration = final, config.iterations
                    result.best_x, result.best_y = result.x, result.y
                    result.best_x0, result.best_y0 = x0, y0
            else:
                result.warnings.append("the final iterate's loss is not finite; best_* excludes it")
    if zero_grad_iters:
        result.warnings.append(
            f"the gradient was exactly zero at {len(zero_grad_iters)} of {len(result.losses)} "
            "iterations: the objective does not depend on the latent there (a scorer without a "
            "gradient path, or a loss saturated/clamped), so only the perturbation moved it")
    if config.iterations == 0:
        result.best_loss = math.nan
    return result
