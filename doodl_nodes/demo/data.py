"""scikit-learn's bundled handwritten digits (1797 8x8 images, no download), split and scaled."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Digits", "load_digits_split"]


@dataclass
class Digits:
    """Images ``(N, 1, 8, 8)`` float32 in [-1, 1] and labels ``(N,)`` int64, train and held-out."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def test_class(self, k: int) -> torch.Tensor:
        return self.test_x[self.test_y == k]


def load_digits_split(test_fraction: float = 0.25, seed: int = 0) -> Digits:
    """A stratified train / held-out split of ``sklearn.datasets.load_digits`` (pixels 0..16 mapped
    to [-1, 1]). The split depends only on ``seed`` and ``test_fraction``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # not a runtime requirement of the node pack, only of the demo
        raise SystemExit("the demo needs scikit-learn (its bundled digits data set, no download): "
                         "pip install scikit-learn") from exc

    data = load_digits()
    images = data.images.astype(np.float32) / 16.0 * 2.0 - 1.0
    labels = data.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_idx = []
    for k in range(10):
        idx = np.flatnonzero(labels == k)
        rng.shuffle(idx)
        test_idx.extend(idx[: int(round(len(idx) * test_fraction))].tolist())
    test_mask = np.zeros(len(labels), dtype=bool)
    test_mask[test_idx] = True
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels)
    return Digits(x[~test_mask], y[~test_mask], x[test_mask], y[test_mask])
