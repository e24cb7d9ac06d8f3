import pytest
import torch

from doodl_nodes.core.backprop import edict_value_and_grad
from doodl_nodes.core.edict import edict_sample
from tests.core.toys import ConvDenoiser, GaussianDenoiser, karras_sigmas

SHAPE = (1, 4, 6, 6)


def _objectives(seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    w = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    return {
        "quadratic_x": lambda a, b: ((a - t) ** 2).mean(),
        "mixed": lambda a, b: 0.5 * (torch.sin(a * w).sum() + (b ** 3).mean()),
        "y_only": lambda a, b: torch.tanh(b).pow(2).sum(),
    }


def _plain(den, obj, x, y, sigmas, **kw):
    x = x.clone().requires_grad_(True)
    y = y.clone().requires_grad_(True)
    loss = obj(*edict_sample(den, x, y, sigmas, **kw))
    gx, gy = torch.autograd.grad(loss, (x, y))
    return loss.detach(), gx, gy


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("mode", ["checkpoint", "reversible"])
@pytest.mark.parametrize("seed", range(6))
def test_matches_plain_autograd(mode, seed):
    den = ConvDenoiser(seed=seed) if seed % 2 else GaussianDenoiser(SHAPE, seed=seed)
    sigmas = karras_sigmas(8 + seed)
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64) * sigmas[0]
    y = x + 0.1 * torch.randn(SHAPE, generator=g, dtype=torch.float64)
    leapfrog = seed % 3 != 0
    for name, obj in _objectives(seed).items():
        ref = _plain(den, obj, x, y, sigmas, leapfrog=leapfrog, p=0.93)
        got = edict_value_and_grad(den, obj, x, y, sigmas, leapfrog=leapfrog, p=0.93, mode=mode)
        assert abs(float(got[0] - ref[0])) <= 1e-12 * max(1.0, abs(float(ref[0]))), name
        assert _rel(got[1], ref[1]) <= 1e-8, (name, _rel(got[1], ref[1]))
        assert _rel(got[2], ref[2]) <= 1e-8, (name, _rel(got[2], ref[2]))


@pytest.mark.parametrize("mode", ["checkpoint", "reversible"])
def test_agrees_with_finite_differences(mode):
    den = ConvDenoiser(seed=7)
    sigmas = karras_sigmas(10)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64) * sigmas[0]
    y = x.clone()
    obj = _objectives(3)["mixed"]
    _, gx, gy = edict_value_and_grad(den, obj, x, y, sigmas, mode=mode)
    for k in range(3):
        vx = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        vy = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        h = 1e-5
        f = lambda t: float(obj(*edict_sample(den, x + t * vx, y + t * vy, sigmas)))  # noqa: E731
        fd = (f(h) - f(-h)) / (2 * h)
        an = float((gx * vx).sum() + (gy * vy).sum())
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)), (k, fd, an)


def test_no_weight_gradients_and_frozen_weights_untouched():
    den = ConvDenoiser(seed=1, requires_grad=True)  # even trainable weights get no .grad
    sigmas = karras_sigmas(5)
    x = torch.randn(SHAPE, dtype=torch.float64) * sigmas[0]
    for mode in ("checkpoint", "reversible"):
        _, gx, gy = edict_value_and_grad(den, lambda a, b: (a ** 2).sum(), x, x, sigmas, mode=mode)
        assert torch.isfinite(gx).all() and gx.abs().sum() > 0 and gy.abs().sum() > 0
    assert all(p.grad is None for p in den.parameters())


def test_denoiser_call_counts():
    """checkpoint: forward 2/step + recompute 2/step; reversible adds the inverse's 2/step."""
    den = GaussianDenoiser(SHAPE)
    sigmas = karras_sigmas(7)
    x = torch.randn(SHAPE, dtype=torch.float64)
    edict_value_and_grad(den, lambda a, b: a.sum(), x, x, sigmas, mode="checkpoint")
    assert den.calls == 4 * 7
    den.calls = 0
    edict_value_and_grad(den, lambda a, b: a.sum(), x, x, sigmas, mode="reversible")
    assert den.calls == 6 * 7


def test_objective_without_gradient_path_gives_zero_gradient():
    den = GaussianDenoiser(SHAPE)
    x = torch.randn(SHAPE, dtype=torch.float64)
    loss, gx, gy = edict_value_and_grad(den, lambda a, b: torch.tensor(3.0), x, x, karras_sigmas(3))
    assert float(loss) == 3.0 and gx.abs().sum() == 0 and gy.abs().sum() == 0


def test_rejects_non_scalar_objective_and_unknown_mode():
    den = GaussianDenoiser(SHAPE)
    x = torch.randn(SHAPE, dtype=torch.float64)
    with pytest.raises(ValueError, match="scalar"):
        edict_value_and_grad(den, lambda a, b: a, x, x, karras_sigmas(3))
    with pytest.raises(ValueError, match="mode"):
        edict_value_and_grad(den, lambda a, b: a.sum(), x, x, karras_sigmas(3), mode="adjoint")


def test_works_inside_inference_mode():
    """ComfyUI runs nodes under torch.inference_mode(); the caller (bridge) re-enables autograd
    around the call. The core itself must not need anything else."""
    den = ConvDenoiser(seed=2)
    sigmas = karras_sigmas(4)
    x = torch.randn(SHAPE, dtype=torch.float64)
    ref = edict_value_and_grad(den, lambda a, b: (a ** 2).sum(), x, x, sigmas)
    with torch.inference_mode():
        sig_inf = sigmas.clone()
        with torch.inference_mode(False):
            got = edict_value_and_grad(den, lambda a, b: (a ** 2).sum(), x, x, sig_inf)
    assert torch.equal(ref[1], got[1])
