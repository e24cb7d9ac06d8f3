"""Symmetry scorer and weighted sums of scorers."""
from __future__ import annotations

import pytest
import torch

from doodl_nodes.core.crops import CropConfig
from doodl_nodes.scorers.base import CropScorer
from doodl_nodes.scorers.combine import CombinedScorer
from doodl_nodes.scorers.symmetry import SymmetryScorer


def test_symmetry_loss_and_gradient():
    sym = torch.rand(1, 3, 8, 8)
    sym = (sym + sym.flip(-1)) / 2
    asym = torch.zeros(1, 3, 8, 8)
    asym[..., :4] = 1.0  # left half white: every pixel differs from its mirror by 1
    lr = SymmetryScorer("left-right")
    loss = lr.loss(torch.cat([sym, asym]))
    torch.testing.assert_close(loss, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(SymmetryScorer("top-bottom").loss(asym), torch.tensor([0.0]))
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    first = lr.loss(x)
    first.sum().backward()
    with torch.no_grad():
        x -= 0.2 * x.grad  # plain gradient step: the loss is quadratic
    assert (lr.loss(x) < first).all()
    assert lr.scores(asym)["symmetry_mse"].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="axis"):
        SymmetryScorer("diagonal")


class _Brightness(CropScorer):
    """Mean brightness of each crop (a scorer with a module, for the combination tests)."""

    def __init__(self):
        self.input_size = 8
        self.gain = torch.nn.Linear(1, 1).requires_grad_(False)
        with torch.no_grad():
            self.gain.weight.fill_(1.0)
            self.gain.bias.zero_()
        self.name = "brightness"

    def crop_loss(self, pixels):
        return self.gain(pixels.mean(dim=(1, 2, 3))[:, None])[:, 0]

    def scores(self, images):
        return {"brightness": images.mean(dim=(1, 2, 3))}

    def modules(self):
        return [self.gain]


def test_combined_scorer_is_a_weighted_sum():
    a, b = _Brightness(), SymmetryScorer()
    combo = CombinedScorer([a, b, a], [2.0, -0.5, 1.0])
    images = torch.rand(3, 3, 16, 16)
    crops = CropConfig(num_crops=2)
    got = combo.loss(images, crops, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)  # the parts draw crops from the generator in order
    expected = 2.0 * a.loss(images, crops, g) - 0.5 * b.loss(images, crops, g) \
        + 1.0 * a.loss(images, crops, g)
    torch.testing.assert_close(got, expected)
    scores = combo.scores(images)
    assert set(scores) == {"1.brightness", "2.symmetry_mse", "3.brightness"}
    assert combo.modules() == [a.gain]  # shared modules are listed once
    nested = CombinedScorer([combo, b], [1.0, 1.0])
    assert "1.2.symmetry_mse" in nested.scores(images)
    zero = CombinedScorer([b], [0.0]).loss(images)
    assert zero.shape == (3,) and zero.abs().max() == 0
    with pytest.raises(TypeError):
        CombinedScorer([object()], [1.0])


def test_best_crop_only_gradient_equals_the_full_min_over_crops():
    """CropScorer scores every crop without grad and re-runs only the best one with grad: the
    loss and the pixel gradient must equal differentiating the plain min over all crops."""
    from doodl_nodes.core.crops import CropConfig, make_crops
    from doodl_nodes.core.losses import reduce_over_crops
    from doodl_nodes.scorers.base import CropScorer

    class Toy(CropScorer):
        input_size = 8

        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.w = torch.randn(3 * 8 * 8, generator=g)

        def crop_loss(self, pixels):
            return torch.tanh(pixels.flatten(1) @ self.w) + (pixels ** 2).mean(dim=(1, 2, 3))

    toy, cfg = Toy(), CropConfig(num_crops=6, cut_power=0.5, reduction="min")
    images = torch.rand(3, 3, 20, 24, generator=torch.Generator().manual_seed(1), requires_grad=True)
    fast = toy.loss(images, cfg, torch.Generator().manual_seed(7))
    (g_fast,) = torch.autograd.grad(fast.sum(), images)
    pixels = make_crops(images, 8, 6, 0.5, torch.Generator().manual_seed(7))
    ref = reduce_over_crops(toy.crop_loss(pixels), 6, "min")
    (g_ref,) = torch.autograd.grad(ref.sum(), images)
    assert torch.allclose(fast, ref, atol=1e-6) and torch.allclose(g_fast, g_ref, atol=1e-6)
    assert g_ref.abs().sum() > 0
