"""A deterministic, nonlinear float64 noise predictor and loss for the parity tests, and the
adapter that turns an alpha-space eps model into the pack's sigma-space denoiser."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from tests.reference.official_scheduler import Step, sigma_of_alpha


class ToyEps:
    """eps(x_vp, t, cond): a two-layer tanh conv net on x with a sinusoidal timestep embedding and a
    per-condition bias (so classifier-free guidance changes the result), plus a skip term."""

    def __init__(self, channels: int = 4, hidden: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)

        def rnd(*shape, scale=1.0):
            return torch.randn(shape, generator=g, dtype=torch.float64) * scale

        self.w1 = rnd(hidden, channels, 3, 3, scale=0.25)
        self.w2 = rnd(channels, hidden, 3, 3, scale=0.2)
        self.freqs = rnd(hidden, scale=1.0).abs() * 6.0 + 0.5
        self.t_sin, self.t_cos = rnd(hidden, scale=0.6), rnd(hidden, scale=0.6)
        self.cond_bias = rnd(2, hidden, scale=0.7)  # row 0 unconditional, row 1 conditional
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: float, cond: bool) -> torch.Tensor:
        self.calls += 1
        ang = self.freqs * (float(t) / 1000.0)
        bias = self.t_sin * torch.sin(ang) + self.t_cos * torch.cos(ang) + self.cond_bias[int(cond)]
        h = torch.tanh(F.conv2d(x, self.w1, padding=1) + bias[None, :, None, None])
        return 0.6 * x + F.conv2d(h, self.w2, padding=1)


class ToyLoss:
    """A per-image loss of a final latent (alpha space): mean of softplus(tanh(A x) . w) over pixels,
    with A a random 1x1 channel map. Differentiable and nonlinear."""

    def __init__(self, channels: int = 4, seed: int = 1, scale: float = 1.0):
        g = torch.Generator().manual_seed(seed)
        self.a = torch.randn(3, channels, 1, 1, generator=g, dtype=torch.float64)
        self.w = torch.randn(3, generator=g, dtype=torch.float64)
        self.scale = scale

    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(F.conv2d(latent, self.a))
        return self.scale * F.softplus((h * self.w[None, :, None, None]).sum(1)).mean()


def toy_latent(seed: int, shape=(1, 4, 8, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def sigma_denoiser(eps_model: Callable[[torch.Tensor, float, bool], torch.Tensor], scale: float,
                   steps: Sequence[Step]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The pack's view of ``eps_model``: D(z, sigma) = z - sigma * eps_cfg(c_in(sigma) z, t(sigma))
    with c_in = 1/sqrt(1 + sigma^2), D_cfg = D_u + s (D_c - D_u). t(sigma) is the label of the step
    starting at that sigma (nearest match)."""
    table = [(sigma_of_alpha(s.alpha), s.t) for s in steps]

    def label(sigma: float) -> float:
        best = min(table, key=lambda e: abs(math.log(e[0]) - math.log(sigma)))
        if abs(best[0] - sigma) > 1e-9 * best[0]:
            raise AssertionError(f"the pack called the denoiser at sigma {sigma}, not a chain point")
        return best[1]

    def denoise(z: torch.Tensor, sigma) -> torch.Tensor:
        sig = torch.as_tensor(sigma, dtype=z.dtype, device=z.device).reshape(-1)
        if sig.numel() > 1 and not bool((sig == sig[0]).all()):
            raise AssertionError("one sigma per call expected")
        s = float(sig[0])
        t = label(s)
        c_in = 1.0 / math.sqrt(1.0 + s * s)
        x_vp = z * c_in
        d_u = z - s * eps_model(x_vp, t, False)
        d_c = z - s * eps_model(x_vp, t, True)
        return d_u + scale * (d_c - d_u)

    return denoise


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Norm-wise relative error of ``a`` against the reference ``b``."""
    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    return float((a - b).norm() / b.norm())
