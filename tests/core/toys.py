"""Float64 toy denoisers with known behaviour, for testing the core without any real model."""
from __future__ import annotations

import math

import torch


class GaussianDenoiser:
    """Exact posterior-mean denoiser for data x0 ~ N(mu, diag(var)) under z = x0 + sigma * eps:
    E[x0 | z] = mu + var / (var + sigma^2) * (z - mu). Linear in z, nonlinear in sigma."""

    def __init__(self, shape, seed=0, dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        self.mu = torch.randn(shape, generator=g, dtype=dtype) * 0.5
        self.var = torch.rand(shape, generator=g, dtype=dtype) * 0.9 + 0.1
        self.calls = 0

    def __call__(self, z, sigma):
        self.calls += 1
        return self.mu + self.var / (self.var + sigma ** 2) * (z - self.mu)


class ConvDenoiser(torch.nn.Module):
    """A small random conv net in EDM-style preconditioning (nonlinear in z and sigma)."""

    def __init__(self, channels=4, hidden=16, seed=0, dtype=torch.float64, requires_grad=False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1 = torch.nn.Conv2d(channels + 1, hidden, 3, padding=1).to(dtype)
        self.c2 = torch.nn.Conv2d(hidden, channels, 3, padding=1).to(dtype)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.2)
        self.requires_grad_(requires_grad)
        self.calls = 0

    def forward(self, z, sigma):
        self.calls += 1
        s = torch.as_tensor(sigma, dtype=z.dtype)
        c_in = 1 / torch.sqrt(1 + s ** 2)
        c_skip = 1 / (1 + s ** 2)
        c_out = s / torch.sqrt(1 + s ** 2)
        t = torch.log(s.clamp_min(1e-3)).expand(z.shape[0], 1, *z.shape[2:])
        h = torch.tanh(self.c1(torch.cat([z * c_in, t], dim=1)))
        return c_skip * z + c_out * self.c2(h)


def karras_sigmas(n, sigma_min=0.03, sigma_max=14.6, rho=7.0, final_zero=True, dtype=torch.float64):
    ramp = torch.linspace(0, 1, n, dtype=dtype)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)]) if final_zero else s


def noise_scale(sigma_max):
    return math.sqrt(1 + sigma_max ** 2)
