import math

import pytest
import torch

from doodl_nodes.core.edict import edict_sample
from doodl_nodes.core.optimize import DoodlConfig, doodl_optimize, doodl_update
from tests.core.toys import ConvDenoiser, GaussianDenoiser, karras_sigmas, noise_scale

SHAPE = (1, 4, 6, 6)


def test_defaults_are_the_papers():
    c = DoodlConfig()
    assert (c.iterations, c.lr, c.momentum, c.clip, c.perturbation) == (50, 1.0, 0.9, 1e-3, 1e-4)
    assert c.renormalize and c.tie_latents and c.leapfrog and c.p == 0.93
    assert c.grad_mode == "checkpoint" and c.seed == 0 and c.start_step == 0


def test_update_rule_hand_computed():
    """The released order: tie (mean of -lr*g) -> clip -> momentum -> + same noise -> tie -> renorm."""
    cfg = DoodlConfig(lr=2.0, clip=0.5, momentum=0.9, perturbation=0.0, tie_latents=True,
                      renormalize=False)
    u = (torch.tensor([[1.0, 2.0]], dtype=torch.float64), torch.tensor([[3.0, 2.0]], dtype=torch.float64))
    grad = (torch.tensor([[0.1, -1.0]], dtype=torch.float64), torch.tensor([[0.3, 0.0]], dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    # -lr*g: x [-0.2, 2.0], y [-0.6, 0] -> tie: [-0.4, 1.0] -> clip: [-0.4, 0.5]
    # (clipping first, the order this code had before, gives [-0.35, 0.25])
    (ux, uy), (bx, by) = doodl_update(u, grad, None, None, cfg, gen)
    assert torch.allclose(bx, torch.tensor([[-0.4, 0.5]], dtype=torch.float64))
    # x: [0.6, 2.5], y: [2.6, 2.5] -> tie: [1.6, 2.5]
    assert torch.allclose(ux, torch.tensor([[1.6, 2.5]], dtype=torch.float64)) and torch.equal(ux, uy)
    # second step with the same gradient: b = 0.9*b + g = 1.9*g
    (ux2, _), (bx2, _) = doodl_update((ux, uy), grad, (bx, by), None, cfg, gen)
    assert torch.allclose(bx2, 1.9 * torch.tensor([[-0.4, 0.5]], dtype=torch.float64))
    assert torch.allclose(ux2, ux + bx2)


def test_update_untied_perturbation_and_renorm():
    cfg = DoodlConfig(lr=1.0, clip=0.0, momentum=0.0, perturbation=0.01, tie_latents=False,
                      renormalize=True)
    u = (torch.tensor([[3.0, 4.0]], dtype=torch.float64), torch.tensor([[0.0, 2.0]], dtype=torch.float64))
    norms0 = (torch.tensor([[5.0]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64))
    grad = (torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[0.0, -1.0]], dtype=torch.float64))
    n = torch.randn((1, 2), generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 0.01
    (ux, uy), _ = doodl_update(u, grad, None, norms0, cfg, torch.Generator().manual_seed(7))
    ex = torch.tensor([[2.0, 4.0]], dtype=torch.float64) + n   # clip disabled: full -g step
    ey = torch.tensor([[0.0, 3.0]], dtype=torch.float64) + n   # the same noise draw for y
    assert torch.allclose(ux, ex * 5 / ex.norm()) and torch.allclose(uy, ey * 2 / ey.norm())


def _setup(seed=0, den=None, steps=10):
    den = den or GaussianDenoiser(SHAPE, seed=seed)
    sigmas = karras_sigmas(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64) * noise_scale(float(sigmas[0]))
    target = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    return den, sigmas, x, target


@pytest.mark.parametrize("mode", ["checkpoint", "reversible"])
def test_optimization_strictly_reduces_a_simple_objective(mode):
    den, sigmas, x, target = _setup(1)
    obj = lambda a, b: 0.5 * (((a - target) ** 2).mean() + ((b - target) ** 2).mean())  # noqa: E731
    cfg = DoodlConfig(iterations=15, lr=50.0, clip=1e-2, perturbation=0.0, grad_mode=mode)
    res = doodl_optimize(den, obj, x, sigmas, cfg, noise_scale=noise_scale(float(sigmas[0])))
    assert len(res.losses) == 15 and res.status == "completed"
    assert all(b < a for a, b in zip(res.losses, res.losses[1:])), res.losses
    assert res.final_loss < res.losses[-1] and res.best_loss == res.final_loss
    assert res.best_iteration == 15 and torch.equal(res.best_x, res.x)
    # renormalization keeps the initial norm; tying keeps x == y
    assert torch.allclose(res.x.norm(), x.norm()) and torch.equal(res.x, res.y)
    x0, y0 = edict_sample(den, res.x, res.y, sigmas)
    assert float(((x0 - target) ** 2).mean()) < res.losses[0]
    assert torch.equal(res.final_x0, x0) and torch.equal(res.final_y0, y0)
    assert torch.equal(res.best_x0, x0)


def test_zero_objective_moves_only_by_the_perturbation():
    den, sigmas, x, _ = _setup(2)
    zero = lambda a, b: (a * 0).sum()  # noqa: E731
    scale = noise_scale(float(sigmas[0]))
    cfg = DoodlConfig(iterations=4, perturbation=1e-3, renormalize=False, seed=11)
    res = doodl_optimize(den, zero, x, sigmas, cfg, noise_scale=scale)
    gen = torch.Generator().manual_seed(11)
    expected = x / scale
    for _ in range(4):
        expected = expected + torch.randn(SHAPE, generator=gen, dtype=torch.float64) * 1e-3
    assert torch.allclose(res.x, expected * scale, rtol=0, atol=1e-12)
    assert any("exactly zero" in w for w in res.warnings)
    res0 = doodl_optimize(den, zero, x, sigmas, DoodlConfig(iterations=3, perturbation=0.0))
    assert torch.equal(res0.x, x) and torch.equal(res0.y, x)


def test_reproducible_for_a_seed_and_seed_matters():
    den, sigmas, x, target = _setup(3, den=ConvDenoiser(seed=3))
    obj = lambda a, b: ((a - target) ** 2).mean()  # noqa: E731
    run = lambda seed: doodl_optimize(den, obj, x, sigmas, DoodlConfig(iterations=3, seed=seed, lr=10.0))  # noqa: E731
    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a.x, b.x) and a.losses == b.losses
    assert not torch.equal(a.x, c.x)


def test_editing_pair_untied_and_start_step():
    den, sigmas, x, target = _setup(4, den=ConvDenoiser(seed=4))
    y = x + 0.05
    obj = lambda a, b: ((b - target) ** 2).mean()  # noqa: E731
    cfg = DoodlConfig(iterations=3, tie_latents=False, renormalize=False, perturbation=0.0,
                      start_step=4, lr=20.0, clip=1e-2)
    res = doodl_optimize(den, obj, x, sigmas, cfg, y=y)
    assert res.start_step == 4 and torch.equal(res.sigmas, sigmas[4:])
    assert not torch.equal(res.x, res.y)
    mid = edict_sample(den, x, y, sigmas[:5])
    # iterate 0 is the intermediate latent after 4 denoising steps, scored through sigmas[4:]
    x0 = edict_sample(den, *mid, sigmas[4:], start_index=4)
    assert res.losses[0] == pytest.approx(float(obj(*x0)), rel=1e-12)
    assert res.best_loss < res.losses[0]


def test_callback_sees_each_iteration_and_can_stop():
    den, sigmas, x, target = _setup(5)
    seen = []

    def cb(info):
        seen.append((info.iteration, info.loss, info.x0.shape))
        return info.iteration == 2

    res = doodl_optimize(den, lambda a, b: ((a - target) ** 2).mean(), x, sigmas,
                         DoodlConfig(iterations=10), callback=cb)
    assert [s[0] for s in seen] == [0, 1, 2] and res.status == "stopped"
    assert len(res.losses) == 3 and res.final_loss is None
    assert torch.equal(res.final_x0, edict_sample(den, res.x, res.y, sigmas)[0])


def test_nonfinite_loss_stops_and_returns_best():
    den, sigmas, x, target = _setup(6)
    calls = {"n": 0}

    def obj(a, b):
        calls["n"] += 1
        loss = ((a - target) ** 2).mean()
        return loss * float("nan") if calls["n"] == 3 else loss

    res = doodl_optimize(den, obj, x, sigmas, DoodlConfig(iterations=10, lr=10.0))
    assert res.status == "nonfinite" and len(res.losses) == 2
    assert any("not finite" in w for w in res.warnings)
    assert torch.isfinite(res.x).all() and torch.equal(res.x, res.best_x)
    assert res.best_loss == min(res.losses)


@pytest.mark.parametrize("kwargs, match", [
    ({"iterations": -1}, "iterations"), ({"momentum": 1.0}, "momentum"), ({"lr": -1.0}, "lr"),
    ({"grad_mode": "adjoint"}, "grad_mode"), ({"start_step": 10}, "start_step"),
    ({"p": 0.0}, "p"), ({"perturbation": math.inf}, "perturbation"),
])
def test_config_validation(kwargs, match):
    den, sigmas, x, _ = _setup(0)
    with pytest.raises(ValueError, match=match):
        doodl_optimize(den, lambda a, b: a.sum(), x, sigmas, DoodlConfig(**kwargs))
