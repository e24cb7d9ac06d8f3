"""How close is EDICT to the exact probability-flow ODE, for each choice of the second call's input?

    python benchmarks/edict_flow_choice.py            # about 10 minutes on a busy 2-core CPU

EDICT's second model call evaluates the model on ``x_inter``, which already sits at the next noise
level, labelled with the current one. For EPS/V models the official (alpha-space) update shows the
model ``x_inter`` exactly as formed, which in sigma space means the input ``r * x_inter`` with
``r = c_in(sigma_next) / c_in(sigma)`` (``core/edict.py``). Flow models (SD3, Flux) have no official
EDICT; two rules generalize the official one:

* ``model c_in``: ``r`` from the model's own ``calculate_input`` (c_in = 1 for flow, so ``r = 1``);
* ``VP-normalized``: ``r`` from ``1 / sqrt(alpha**2 + sigma**2)`` of the model's noise scaling
  ``z = alpha * x0 + sigma * eps`` (for flow ``alpha = 1 - sigma``), i.e. treat the flow latent like
  an alpha-space latent of unit variance.

Data: a per-dimension Gaussian mixture (two components, random means and scales, 64 dimensions),
whose exact denoiser is closed form; the reference solution is RK4 on the exact ODE with 100-400
substeps per step. Error: mean over 128-256 starting noises of |x0_EDICT - x0_ODE| / |x0_ODE|, with
the pack's own ``edict_sample`` (p = 0.93, leapfrog). For EPS the "unscaled" row is the update the
pack had before (``r = 1``), the "official" row the released code's.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from doodl_nodes.core.edict import edict_sample, unit_input_scale, vp_input_scale  # noqa: E402

torch.set_default_dtype(torch.float64)
DIM = 64


def mixture(seed: int):
    g = torch.Generator().manual_seed(seed)
    mus = torch.stack([torch.randn(DIM, generator=g), torch.randn(DIM, generator=g) + 1.5])
    scales = torch.stack([0.3 + torch.rand(DIM, generator=g) * 0.5, 0.2 + torch.rand(DIM, generator=g) * 0.4])
    weights = torch.tensor([0.6, 0.4])

    def posterior_mean(z, a, b):   # z = a * x0 + b * eps, x0 ~ mixture (independent dimensions)
        logp, means = [], []
        for k in range(2):
            var = a * a * scales[k] ** 2 + b * b
            logp.append(-0.5 * (z - a * mus[k]) ** 2 / var - 0.5 * torch.log(var) + math.log(weights[k]))
            means.append(mus[k] + a * scales[k] ** 2 / var * (z - a * mus[k]))
        r = torch.softmax(torch.stack(logp), 0)
        return (r * torch.stack(means)).sum(0)

    return posterior_mean


def ode_solution(denoise, z, sigmas, substeps):
    f = lambda z, s: (z - denoise(z, s)) / s  # noqa: E731
    for s0, s1 in zip(sigmas[:-1], sigmas[1:]):
        s1 = max(float(s1), 1e-9)
        h = (s1 - float(s0)) / substeps
        s = float(s0)
        for _ in range(substeps):
            k1 = f(z, s)
            k2 = f(z + h / 2 * k1, s + h / 2)
            k3 = f(z + h / 2 * k2, s + h / 2)
            k4 = f(z + h * k3, s + h)
            z, s = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), s + h
    return z


def error(denoise, sigmas, x_T, input_scale, reference):
    den = lambda z, s: denoise(z, float(s))  # noqa: E731
    x0, _ = edict_sample(den, x_T, x_T.clone(), torch.tensor(sigmas), input_scale=input_scale)
    return float(((x0 - reference).norm(dim=1) / reference.norm(dim=1)).mean())


def shifted_flow_sigmas(n, shift):
    t = torch.linspace(1, 0, n + 1)
    return [float(v) for v in shift * t / (1 + (shift - 1) * t)]


def sd_ddim_sigmas(n=50):
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    ac = torch.cumprod(1 - betas, 0)
    return [math.sqrt((1 - ac[t]) / ac[t]) for t in range(1000 - 1000 // n, -1, -(1000 // n))] + [0.0]


def main():
    rows = []
    # EPS in sigma space: z = x0 + sigma * eps
    den = mixture(0)
    eps = lambda z, s: den(z, 1.0, s)  # noqa: E731
    sig = sd_ddim_sigmas(50)
    x_T = torch.randn(256, DIM, generator=torch.Generator().manual_seed(1)) * math.sqrt(1 + sig[0] ** 2)
    ref = ode_solution(eps, x_T, sig[:-1] + [1e-9], 200)
    rows.append(("EPS, SD DDIM 50 steps", {"official (vp c_in)": error(eps, sig, x_T, vp_input_scale, ref),
                                           "unscaled (r = 1)": error(eps, sig, x_T, unit_input_scale, ref)}))
    # flow: z = (1 - sigma) x0 + sigma eps
    vp_flow = lambda s: torch.rsqrt((1 - s) ** 2 + s ** 2)  # noqa: E731
    for name, steps, shift in (("shift 1, 20 steps", 20, 1.0), ("shift 3, 28 steps", 28, 3.0),
                               ("shift 3, 50 steps", 50, 3.0), ("shift 3, 8 steps", 8, 3.0)):
        sig = shifted_flow_sigmas(steps, shift)
        errs = {"model c_in (r = 1)": [], "VP-normalized": []}
        for seed in range(4):
            den = mixture(seed)
            flow = lambda z, s, den=den: den(z, 1 - s, s)  # noqa: E731
            x_T = torch.randn(128, DIM, generator=torch.Generator().manual_seed(100 + seed))
            ref = ode_solution(flow, x_T, sig[:-1] + [1e-9], 100)
            errs["model c_in (r = 1)"].append(error(flow, sig, x_T, unit_input_scale, ref))
            errs["VP-normalized"].append(error(flow, sig, x_T, vp_flow, ref))
        rows.append((f"flow, {name}", {k: sum(v) / len(v) for k, v in errs.items()}))
    for name, errs in rows:
        print(f"{name:28s} " + "  ".join(f"{k}: {100 * v:.2f}%" for k, v in errs.items()), flush=True)


if __name__ == "__main__":
    main()
