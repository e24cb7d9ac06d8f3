"""Evaluation: held-out classifier accuracy and Fréchet distance in its feature space."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["frechet_distance", "class_accuracy", "features"]


def frechet_distance(a: np.ndarray, b: np.ndarray, ridge: float = 1e-4) -> float:
    """Fréchet distance between Gaussian fits of two feature sets ``(n, d)`` (FID's formula):
    ``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))``, with ``ridge * I`` added to each
    covariance so that small sets (n <= d) give a finite, stable number."""
    from scipy import linalg

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (n, d) with the same d, got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("each feature set needs at least 2 rows")
    d = a.shape[1]
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca = np.cov(a, rowvar=False) + ridge * np.eye(d)
    cb = np.cov(b, rowvar=False) + ridge * np.eye(d)
    covmean = linalg.sqrtm(ca @ cb)
    covmean = np.real(covmean)
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


@torch.no_grad()
def features(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    return model.features(images.float()).double().cpu().numpy()


@torch.no_grad()
def class_accuracy(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-image 0/1 correctness of ``model``'s argmax against ``targets``."""
    return (model(images.float()).argmax(1) == targets.to(images.device)).float().cpu()
