"""The plain Euler chain: sampling, its checkpointed gradient against plain autograd, and DOODL on it."""
import math

import pytest
import torch

from doodl_nodes.core.backprop import euler_value_and_grad
from doodl_nodes.core.euler import euler_sample, euler_step
from doodl_nodes.core.optimize import DoodlConfig, doodl_optimize
from tests.core.toys import ConvDenoiser, GaussianDenoiser, karras_sigmas, noise_scale

SHAPE = (2, 4, 6, 6)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _objective(seed=4):
    w = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return lambda x0: (torch.tanh(x0) * w).sum() + 0.1 * x0.pow(2).sum()


def test_euler_step_is_ddim_on_the_exact_gaussian_denoiser():
    """For Gaussian data the exact ODE keeps (z - mu) / sqrt(var + sigma^2) fixed; one Euler step
    with the exact denoiser is DDIM, which moves x0-hat and eps-hat along their line: the step lands
    on ``x0_hat + sigma_next * eps_hat``."""
    den = GaussianDenoiser(SHAPE, seed=1)
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 3
    s, sn = torch.tensor(3.0, dtype=torch.float64), torch.tensor(1.2, dtype=torch.float64)
    x0 = den(z, s)
    eps = (z - x0) / s
    assert torch.allclose(euler_step(den, z, s, sn), x0 + sn * eps, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("steps", [1, 2, 25])
def test_checkpointed_gradient_equals_plain_autograd(steps):
    den = ConvDenoiser(seed=3)
    sigmas = karras_sigmas(steps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 14.6
    obj = _objective()
    loss, gx, x0 = euler_value_and_grad(den, obj, x, sigmas, return_outputs=True)
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        plain = obj(euler_sample(den, xr, sigmas))
        (gref,) = torch.autograd.grad(plain, xr)
    assert gref.abs().sum() > 0 and torch.isfinite(gx).all()
    assert _rel(gx, gref) < 1e-8
    assert float(loss) == pytest.approx(float(plain.detach()), rel=1e-12)
    assert _rel(x0, euler_sample(den, x, sigmas)) < 1e-14


def test_euler_refuses_reversible_mode():
    with pytest.raises(ValueError, match="checkpoint"):
        euler_value_and_grad(GaussianDenoiser(SHAPE), _objective(), torch.zeros(SHAPE, dtype=torch.float64),
                             karras_sigmas(3), mode="reversible")
    with pytest.raises(ValueError, match="checkpoint"):
        DoodlConfig(chain="euler", grad_mode="reversible").validate()


@pytest.mark.parametrize("steps", [1, 4])
def test_doodl_on_the_euler_chain_lowers_the_loss(steps):
    den = ConvDenoiser(seed=5)
    sigmas = karras_sigmas(steps)
    scale = noise_scale(float(sigmas[0]))
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * scale
    target = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    seen = []

    def objective(a, b):
        seen.append(a is b)
        return (a - target).pow(2).mean()

    cfg = DoodlConfig(iterations=6, lr=50.0, clip=0.05, perturbation=0.0, chain="euler")
    res = doodl_optimize(den, objective, x, sigmas, cfg, noise_scale=scale)
    assert all(seen)                       # the one output is passed as both arguments
    assert res.losses[-1] < res.losses[0] and res.status == "completed"
    assert torch.equal(res.x, res.y) and torch.equal(res.best_x, res.best_y)
    # renormalized to the starting noise's norm (per image)
    n0 = (x / scale).flatten(1).norm(dim=1)
    assert torch.allclose((res.x / scale).flatten(1).norm(dim=1), n0, rtol=1e-12)
    # the final iterate's output is what Euler sampling makes from it
    assert _rel(res.final_x0, euler_sample(den, res.x, sigmas)) < 1e-14
    with pytest.raises(ValueError, match="one latent"):
        doodl_optimize(den, objective, x, sigmas, cfg, y=x.clone(), noise_scale=scale)


def test_euler_start_step_optimizes_the_partly_denoised_latent():
    den = ConvDenoiser(seed=6)
    sigmas = karras_sigmas(5)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 14.6
    cfg = DoodlConfig(iterations=0, chain="euler", start_step=2)
    res = doodl_optimize(den, lambda a, b: a.sum(), x, sigmas, cfg,
                         noise_scale=lambda s: math.sqrt(1 + s * s))
    assert _rel(res.x, euler_sample(den, x, sigmas[:3])) < 1e-14
    assert res.sigmas.numel() == 4
