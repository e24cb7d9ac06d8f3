"""The demo's three small networks: an unconditional EDM-style denoiser and two digit classifiers.

The denoiser follows Karras et al. 2022 (EDM) preconditioning in sigma space (``z = x0 + sigma *
eps``), so ``DigitDenoiser.denoise(z, sigma)`` is a denoiser in ComfyUI's convention and plugs into
``doodl_nodes.core`` exactly as a ComfyUI model does. The classifiers are not noise-aware: they are
trained on clean images only, as DOODL assumes.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["DigitDenoiser", "GuideCNN", "EvalMLP", "build_classifier"]

IMAGE_SHAPE = (1, 8, 8)
NUM_PIXELS = 64


class _Block(nn.Module):
    def __init__(self, width: int, emb: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.emb = nn.Linear(emb, 2 * width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, h, e):
        scale, shift = self.emb(e).chunk(2, dim=-1)
        a = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(nn.functional.silu(self.fc1(a)))


class DigitDenoiser(nn.Module):
    """``D(z, sigma) = c_skip z + c_out F(c_in z, log(sigma) / 4)`` with an MLP ``F`` on 64 pixels."""

    def __init__(self, width: int = 256, depth: int = 3, sigma_data: float = 0.5, emb: int = 64):
        super().__init__()
        self.sigma_data = float(sigma_data)
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(64.0), emb // 2)))
        self.emb = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Linear(NUM_PIXELS, width)
        self.blocks = nn.ModuleList(_Block(width, emb) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, NUM_PIXELS)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def net(self, z_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        phase = c_noise[:, None] * self.freqs[None]
        e = self.emb(torch.cat([phase.sin(), phase.cos()], dim=1))
        h = self.inp(z_in.flatten(1))
        for block in self.blocks:
            h = block(h, e)
        return self.out(self.out_norm(h)).view(-1, *IMAGE_SHAPE)

    def forward(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Denoised estimate of ``z`` (``(B, 1, 8, 8)``) at noise level ``sigma`` (0-d or ``(B,)``),
        computed in the weights' dtype and returned in ``z``'s dtype."""
        dtype = self.out.weight.dtype
        sigma = torch.as_tensor(sigma, device=z.device).to(dtype)
        sigma = sigma.expand(z.shape[0]) if sigma.dim() == 0 else sigma.reshape(z.shape[0])
        s = sigma[:, None, None, None]
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (s ** 2 + sd2)
        c_out = s * self.sigma_data / (s ** 2 + sd2).sqrt()
        c_in = 1.0 / (s ** 2 + sd2).sqrt()
        zz = z.to(dtype)
        out = c_skip * zz + c_out * self.net(c_in * zz, sigma.log() / 4)
        return out.to(z.dtype)

    def denoise(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self(z, sigma)

    def input_scale(self, sigma: torch.Tensor) -> torch.Tensor:
        """``c_in(sigma)`` of the EDM preconditioning (what EDICT's second call needs)."""
        return torch.rsqrt(sigma * sigma + self.sigma_data ** 2)


class GuideCNN(nn.Module):
    """The guiding classifier (the paper's guiding CLIP / WS-DAN): a small CNN."""

    def __init__(self, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.GELU(), nn.AvgPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * 4, feature_dim), nn.GELU())
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class EvalMLP(nn.Module):
    """The held-out evaluator (the paper's scoring CLIP / FID network): an MLP, never used to guide.
    ``features`` (the penultimate layer) is the space the Fréchet distance is measured in."""

    def __init__(self, width: int = 256, feature_dim: int = 32):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(NUM_PIXELS, width), nn.ReLU(),
                                  nn.Linear(width, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_classifier(kind: str, width: int, feature_dim: int) -> nn.Module:
    if kind == "cnn":
        return GuideCNN(width, feature_dim)
    if kind == "mlp":
        return EvalMLP(width, feature_dim)
    raise ValueError(f"unknown classifier kind {kind!r} (use 'cnn' or 'mlp')")
