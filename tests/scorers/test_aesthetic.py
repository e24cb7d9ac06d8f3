"""Aesthetic heads on real embeddings (golden data) and the aesthetic scorer's loss."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from doodl_nodes.core.crops import CropConfig
from doodl_nodes.scorers.aesthetic import (AestheticScorer, LinearAestheticHead, MLPAestheticHead,
                                           load_aesthetic_head)
from doodl_nodes.scorers.encoders import ImageEncoder
from doodl_nodes.scorers.weights import WeightsFileError
from tests.comfyui_env import unavailable

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
HEADS = SHARED / "weights" / "aesthetic"
VECTORS = SHARED / "data" / "aesthetic-test-vectors"
CASES = [("laion-linear/sa_0_4_vit_l_14_linear.pth", "vit_l_14", LinearAestheticHead),
         ("laion-linear/sa_0_4_vit_b_32_linear.pth", "vit_b_32", LinearAestheticHead),
         ("improved-mlp/sac+logos+ava1-l14-linearMSE.pth", "vit_l_14", MLPAestheticHead)]


def _vectors(backbone):
    return torch.from_numpy(np.concatenate(
        [np.load(VECTORS / backbone / f"rating{r}.npy") for r in range(10)]))


@pytest.mark.parametrize("head_file,backbone,cls", CASES, ids=[c[0].split("/")[1] for c in CASES])
def test_real_heads_rank_real_embeddings_by_rating(head_file, backbone, cls):
    if not (HEADS / head_file).is_file():
        unavailable(f"golden head missing: {HEADS / head_file} (../shared beside the checkout)")
    head = load_aesthetic_head(HEADS / head_file)
    assert isinstance(head, cls) and not head.training
    assert not any(p.requires_grad for p in head.parameters())
    emb = _vectors(backbone)
    scores = head(emb)
    assert scores.shape == (10,)
    assert torch.all(scores[1:] > scores[:-1]), scores
    # the head L2-normalizes its input: scaling the embeddings changes nothing
    torch.testing.assert_close(head(emb * 3.7), scores)


def test_unknown_head_layout_is_refused(tmp_path):
    torch.save({"fc.weight": torch.zeros(1, 4)}, tmp_path / "x.pth")
    with pytest.raises(WeightsFileError, match="not a known aesthetic head"):
        load_aesthetic_head(tmp_path / "x.pth")


class _MeanEncoder(ImageEncoder):
    """A differentiable stand-in backbone: per-channel means padded to D dims, plus a bias."""

    def __init__(self, dim=4, size=8):
        super().__init__(size, (0, 0, 0), (1, 1, 1), dim, "mean")

    def encode_pixels(self, px):
        m = px.mean(dim=(2, 3))
        return torch.cat([m, torch.full_like(m[:, :1], 0.5)], dim=1)


def _scorer(weight, bias, target=None, clamp=True):
    head = LinearAestheticHead(4)
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([weight]))
        head.linear.bias.fill_(bias)
    return AestheticScorer(_MeanEncoder(), head, target=target, clamp=clamp)


def test_aesthetic_loss_definitions_and_clamp():
    img = torch.full((1, 3, 8, 8), 0.5)
    # embedding (0.5, 0.5, 0.5, 0.5) normalizes to 0.5 each: score = 0.5 * sum(w) + b
    s = _scorer([2.0, 2.0, 2.0, 2.0], 1.0)          # raw score 5
    none = CropConfig(num_crops=0)
    assert s.scores(img)["aesthetic_score"].item() == pytest.approx(5.0)
    assert s.loss(img, none).item() == pytest.approx(-5.0)
    t = _scorer([2.0, 2.0, 2.0, 2.0], 1.0, target=7.5)
    assert t.loss(img, none).item() == pytest.approx(2.5)
    # raw score 0.5 * 13 + 5 = 11.5: clamped to 10, and the clamp stops the gradient
    high = _scorer([6.0, 2.0, 4.0, 1.0], 5.0)
    x = img.clone().requires_grad_(True)
    loss = high.loss(x, none)
    assert loss.item() == pytest.approx(-10.0)
    loss.sum().backward()
    assert x.grad.abs().max() == 0
    unclamped = _scorer([6.0, 2.0, 4.0, 1.0], 5.0, clamp=False)
    x = img.clone().requires_grad_(True)
    unclamped.loss(x, none).sum().backward()
    assert x.grad.abs().max() > 0


def test_aesthetic_scorer_checks_dims_and_target():
    with pytest.raises(ValueError, match="expects 768-d"):
        AestheticScorer(_MeanEncoder(dim=4), LinearAestheticHead(768))
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        _scorer([1.0] * 4, 0.0, target=11)


def test_crop_reductions_auto_is_the_released_mean_score():
    """auto: mean of the crops' clamped scores, then |mean - target| (the released aesthetic loss);
    with a target that differs from the mean of the per-crop losses (reduction 'mean')."""
    from doodl_nodes.core.crops import make_crops

    img = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    img[:, 0, :12] += 0.8   # crops of the top half score higher than crops of the bottom
    cfg = dict(num_crops=6, cut_power=0.5)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    probe = _scorer([6.0, -3.0, -3.0, 0.0], 5.0)
    per_crop = probe.clamped_score(make_crops(img, probe.input_size, 6, 0.5, gen())).reshape(6, 2)
    target = float(per_crop.median())
    assert per_crop.min() < target < per_crop.max()
    s = _scorer([6.0, -3.0, -3.0, 0.0], 5.0, target=target)
    auto = s.loss(img, CropConfig(**cfg, reduction="auto"), gen())
    mean = s.loss(img, CropConfig(**cfg, reduction="mean"), gen())
    low = s.loss(img, CropConfig(**cfg, reduction="min"), gen())
    torch.testing.assert_close(auto, (per_crop.mean(0) - target).abs())
    torch.testing.assert_close(mean, (per_crop - target).abs().mean(0))
    torch.testing.assert_close(low, (per_crop - target).abs().amin(0))
    assert (mean - auto).abs().max() > 1e-3   # the two orders really differ here
    # maximizing: auto and mean coincide (the mean of -s is -mean(s))
    m = probe
    torch.testing.assert_close(m.loss(img, CropConfig(**cfg), gen()),
                               m.loss(img, CropConfig(**cfg, reduction="mean"), gen()))
