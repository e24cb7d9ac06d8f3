"""One-step classifier guidance (doodl_nodes.core.guidance) against closed-form cases."""
import math

import pytest
import torch

from doodl_nodes.core.guidance import one_step_guidance, one_step_guided_denoiser


def gaussian_denoiser(mu: torch.Tensor, s: float):
    """The exact denoiser E[x0 | z] for data x0 ~ N(mu, s^2 I) and z = x0 + sigma * eps."""
    def denoise(z, sigma):
        if sigma.dim() == 1:  # per-sample sigmas, as ComfyUI's model wrappers receive them
            sigma = sigma.reshape(-1, *([1] * (z.dim() - 1)))
        return (s ** 2 * z + sigma ** 2 * mu) / (s ** 2 + sigma ** 2)
    return denoise


def quadratic_loss(a: torch.Tensor):
    """Per-sample 0.5 * |x - a|^2."""
    return lambda x: 0.5 * (x - a).pow(2).flatten(1).sum(1)


def test_guided_output_matches_hand_computed_value():
    # one element, numbers chosen so the answer is checkable by hand:
    # s = 1, sigma = 2, mu = 0.5, z = 3, a = -1
    # D(z) = (1*3 + 4*0.5) / (1 + 4) = 1.0
    # d D / d z = s^2 / (s^2 + sigma^2) = 0.2;  grad_z L = 0.2 * (D - a) = 0.2 * 2 = 0.4
    # guided = D - scale * sigma^2 * grad = 1 - 1.5 * 4 * 0.4 = -1.4
    denoise = gaussian_denoiser(torch.tensor(0.5, dtype=torch.float64), 1.0)
    z = torch.tensor([[3.0]], dtype=torch.float64)
    guided, denoised, loss = one_step_guidance(denoise, quadratic_loss(torch.tensor(-1.0, dtype=torch.float64)),
                                               z, torch.tensor(2.0, dtype=torch.float64), 1.5)
    assert denoised.item() == pytest.approx(1.0, abs=1e-12)
    assert loss.item() == pytest.approx(0.5 * 2.0 ** 2, abs=1e-12)
    assert guided.item() == pytest.approx(-1.4, abs=1e-12)


def test_guided_denoiser_matches_closed_form_on_batches():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64)
    a = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)
    s, scale = 0.7, 2.5
    denoise = gaussian_denoiser(mu, s)
    guided_denoise = one_step_guided_denoiser(denoise, quadratic_loss(a), scale)
    for sigma_value in (0.05, 1.0, 14.6):
        sigma = torch.tensor(sigma_value, dtype=torch.float64)
        z = mu + math.sqrt(s ** 2 + sigma_value ** 2) * torch.randn(5, 3, 4, 4, generator=g,
                                                                     dtype=torch.float64)
        d = denoise(z, sigma)
        expected = d - scale * sigma_value ** 2 * (s ** 2 / (s ** 2 + sigma_value ** 2)) * (d - a)
        torch.testing.assert_close(guided_denoise(z, sigma), expected, rtol=1e-12, atol=1e-12)


def test_guidance_shifts_the_score_by_the_classifier_gradient():
    # classifier guidance in score form: score'(z) = score(z) - scale * grad_z L(D(z)),
    # with score(z) = (D(z) - z) / sigma^2 (Tweedie). Checked with an independent autograd call.
    mu = torch.zeros(2, 6, dtype=torch.float64)
    denoise = gaussian_denoiser(mu, 1.3)
    loss_fn = lambda x: torch.sin(x).sum(1) + 0.1 * x.pow(3).sum(1)
    z = torch.linspace(-2, 2, 12, dtype=torch.float64).reshape(2, 6)
    sigma = torch.tensor(0.8, dtype=torch.float64)
    scale = 0.3
    guided = one_step_guided_denoiser(denoise, loss_fn, scale)(z, sigma)
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(denoise(zz, sigma)).sum(), zz)
    score = (denoise(z, sigma) - z) / sigma ** 2
    torch.testing.assert_close((guided - z) / sigma ** 2, score - scale * grad, rtol=1e-12, atol=1e-12)


def test_scale_zero_reproduces_the_plain_denoiser_without_calling_the_loss():
    calls = []

    def loss_fn(x):
        calls.append(1)
        return x.sum()

    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
    denoise = lambda z, sigma: net(z) * sigma
    z = torch.randn(3, 8)
    sigma = torch.tensor(0.5)
    out = one_step_guided_denoiser(denoise, loss_fn, 0.0)(z, sigma)
    with torch.no_grad():
        assert torch.equal(out, denoise(z, sigma))
    assert not calls


def test_per_sample_losses_give_per_sample_gradients_and_a_scalar_loss_works_too():
    denoise = gaussian_denoiser(torch.tensor(0.0), 1.0)
    a = torch.tensor([[1.0], [-2.0]])
    z = torch.tensor([[0.5], [0.5]])
    sigma = torch.tensor(1.0)
    per_sample = one_step_guided_denoiser(denoise, quadratic_loss(a), 1.0)(z, sigma)
    scalar = one_step_guided_denoiser(denoise, lambda x: quadratic_loss(a)(x).sum(), 1.0)(z, sigma)
    torch.testing.assert_close(per_sample, scalar)
    # rows differ only through their own target
    d = denoise(z, sigma)
    torch.testing.assert_close(per_sample, d - 0.5 * (d - a))


def test_gradients_reach_only_z_and_the_output_is_detached():
    net = torch.nn.Linear(4, 4)
    denoise = lambda z, sigma: net(z)
    z = torch.randn(2, 4, requires_grad=True)
    out = one_step_guided_denoiser(denoise, lambda x: x.pow(2).sum(), 1.0)(z, torch.tensor(1.0))
    assert all(p.grad is None for p in net.parameters())
    assert z.grad is None
    assert not out.requires_grad


def test_works_under_inference_mode_and_no_grad():
    mu = torch.zeros(1, 3)
    denoise = gaussian_denoiser(mu, 1.0)
    loss_fn = quadratic_loss(torch.ones(1, 3))
    z = torch.full((1, 3), 3.0)
    sigma = torch.tensor(1.0)
    reference = one_step_guided_denoiser(denoise, loss_fn, 2.0)(z, sigma)
    # D = 1.5, grad_z L = 0.5 * (1.5 - 1) = 0.25, guided = 1.5 - 2 * 1 * 0.25 = 1.0
    torch.testing.assert_close(reference, torch.ones(1, 3))
    with torch.inference_mode():
        zi, si = z.clone(), sigma.clone()  # inference tensors, as ComfyUI hands them over
        out_inf = one_step_guided_denoiser(denoise, loss_fn, 2.0)(zi, si)
    with torch.no_grad():
        out_ng = one_step_guided_denoiser(denoise, loss_fn, 2.0)(z, sigma)
    torch.testing.assert_close(out_inf, reference)
    torch.testing.assert_close(out_ng, reference)
    assert not out_inf.requires_grad


def test_per_sample_sigma_and_bad_loss_shape():
    denoise = gaussian_denoiser(torch.tensor(0.0), 1.0)
    a = torch.zeros(2, 1)
    z = torch.tensor([[1.0], [1.0]])
    sigmas = torch.tensor([1.0, 2.0])
    out = one_step_guided_denoiser(denoise, quadratic_loss(a), 1.0)(z, sigmas)
    d = denoise(z, sigmas)
    expected = d - sigmas.reshape(2, 1) ** 2 * (1 / (1 + sigmas.reshape(2, 1) ** 2)) * d
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="per-sample"):
        one_step_guidance(denoise, lambda x: x, z, torch.tensor(1.0), 1.0)


def test_on_step_reports_losses():
    seen = []
    denoise = gaussian_denoiser(torch.tensor(0.0), 1.0)
    guided = one_step_guided_denoiser(denoise, quadratic_loss(torch.zeros(1, 2)), 1.0,
                                      on_step=lambda s, l: seen.append((float(s), l.tolist())))
    guided(torch.ones(1, 2), torch.tensor(1.0))
    assert seen == [(1.0, [pytest.approx(0.25)])]


def test_official_estimate_is_the_released_alpha_space_cond_fn():
    """The released baseline, written in alpha space for an EPS toy: eps_u from the unconditional
    call, x0 = (x - sqrt(1-a) eps_u) / sqrt(a), sample = x0 * sqrt(1-a) + x * (1 - sqrt(1-a)),
    eps' = eps_cfg + sqrt(1-a) * grad_x(scale * L(sample)). Our sigma-space guided denoiser must
    give the same eps' (z = x / sqrt(a), sigma = sqrt((1-a)/a))."""
    from doodl_nodes.core.guidance import official_estimate

    g = torch.Generator().manual_seed(0)
    w_c, w_u = (torch.randn(6, 6, generator=g, dtype=torch.float64) * 0.3 for _ in range(2))
    eps_c = lambda x: torch.tanh(x @ w_c)  # noqa: E731  (alpha-space eps models, t folded in)
    eps_u = lambda x: torch.tanh(x @ w_u)  # noqa: E731
    target = torch.randn(6, generator=g, dtype=torch.float64)
    loss_fn = lambda lat: (torch.sin(lat) - target).pow(2).sum(-1)  # noqa: E731
    a, cfg, scale = 0.37, 3.0, 2.5
    x = torch.randn(2, 6, generator=g, dtype=torch.float64)

    # released code (alpha space)
    xl = x.clone().requires_grad_(True)
    x0 = (xl - math.sqrt(1 - a) * eps_u(xl)) / math.sqrt(a)
    sample = x0 * math.sqrt(1 - a) + xl * (1 - math.sqrt(1 - a))
    (grad,) = torch.autograd.grad((scale * loss_fn(sample)).sum(), xl)
    eps = eps_u(x) + cfg * (eps_c(x) - eps_u(x))
    eps_official = eps + math.sqrt(1 - a) * grad

    # ours (sigma space)
    sigma = torch.tensor(math.sqrt((1 - a) / a), dtype=torch.float64)
    c_in = lambda s: 1 / torch.sqrt(1 + s ** 2)  # noqa: E731
    den_u = lambda z, s: z - s * eps_u(c_in(s) * z)  # noqa: E731
    den = lambda z, s: z - s * (eps_u(c_in(s) * z) + cfg * (eps_c(c_in(s) * z) - eps_u(c_in(s) * z)))  # noqa: E731
    z = x / math.sqrt(a)
    guided, _, _ = one_step_guidance(den, loss_fn, z, sigma, scale, official_estimate(den_u))
    eps_ours = (z - guided) / sigma
    torch.testing.assert_close(eps_ours, eps_official, rtol=1e-12, atol=1e-12)
    # and it is not the pack's own estimate (the CFG x0), which gives another eps'
    ours_default, _, _ = one_step_guidance(den, loss_fn, z, sigma, scale)
    assert (ours_default - guided).abs().max() > 1e-3
