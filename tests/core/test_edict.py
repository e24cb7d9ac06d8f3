import math

import pytest
import torch

from doodl_nodes.core.edict import (edict_invert, edict_sample, edict_step, unit_input_scale,
                                    validate_chain)
from tests.core.toys import ConvDenoiser, GaussianDenoiser, karras_sigmas

SHAPE = (1, 4, 8, 8)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _start(seed, sigma_max=14.6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64) * sigma_max
    return x, x.clone()


@pytest.mark.parametrize("leapfrog", [True, False])
@pytest.mark.parametrize("p", [0.93, 0.97, 1.0])
@pytest.mark.parametrize("model", ["gaussian", "conv"])
def test_round_trip_50_steps(model, p, leapfrog):
    den = GaussianDenoiser(SHAPE, seed=1) if model == "gaussian" else ConvDenoiser(seed=1)
    sigmas = karras_sigmas(50)
    x, y = _start(0)
    x0, y0 = edict_sample(den, x, y, sigmas, p=p, leapfrog=leapfrog)
    assert not torch.allclose(x0, x)
    xr, yr = edict_invert(den, x0, y0, sigmas, p=p, leapfrog=leapfrog)
    assert _rel(xr, x) < 1e-10 and _rel(yr, y) < 1e-10


def test_round_trip_from_image_pair():
    """Editing direction: invert a clean latent (x0 = y0), then regenerate it exactly."""
    den = ConvDenoiser(seed=3)
    sigmas = karras_sigmas(30)
    lat = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    xT, yT = edict_invert(den, lat, lat.clone(), sigmas)
    assert _rel(xT, yT) > 1e-6  # the pair differs after inversion: both are needed
    x0, y0 = edict_sample(den, xT, yT, sigmas)
    assert _rel(x0, lat) < 1e-10 and _rel(y0, lat) < 1e-10


def test_gaussian_chain_recovers_data_scale():
    """With the exact denoiser and no noise left, samples land near the data distribution."""
    den = GaussianDenoiser((256, 4, 8, 8), seed=2)
    den.mu, den.var = den.mu[:1], den.var[:1]
    sigmas = karras_sigmas(50)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 4, 8, 8, generator=g, dtype=torch.float64) * sigmas[0]
    x0, _ = edict_sample(den, x, x.clone(), sigmas)
    std = x0.std(dim=0)
    assert torch.allclose(x0.mean(dim=0), den.mu[0], atol=0.25)
    assert torch.allclose(std, den.var[0].sqrt(), rtol=0.3, atol=0.05)


@pytest.mark.parametrize("scaling", ["vp", "unit"])
def test_hand_computed_step(scaling):
    """One EDICT step on scalars with denoise(z, s) = z / 2 (d = 1/(2s) * z). The second call sees
    ``r * x_inter`` with ``r = c_in(sigma_next) / c_in(sigma)``: sqrt(5/2) for the default (EPS/V)
    scaling from sigma 2 to 1, and 1 for a flow model's unit scaling."""
    den = lambda z, s: z / 2  # noqa: E731
    x = torch.tensor([2.0], dtype=torch.float64)
    y = torch.tensor([4.0], dtype=torch.float64)
    s, sn, p = torch.tensor(2.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64), 0.9
    r = math.sqrt(5 / 2) if scaling == "vp" else 1.0
    kw = {} if scaling == "vp" else {"input_scale": unit_input_scale}
    # d(z, 2) = (z - z/2) / 2 = z / 4; dt = -1
    x_i = 2 - 4 / 4            # 1
    y_i = 4 - r * x_i / 4
    x_n = 0.9 * x_i + 0.1 * y_i
    y_n = 0.9 * y_i + 0.1 * x_n
    xo, yo = edict_step(den, x, y, s, sn, p, x_first=True, **kw)
    assert xo.item() == pytest.approx(x_n, abs=1e-15) and yo.item() == pytest.approx(y_n, abs=1e-15)
    # leapfrog variant: y first from d(x), then x from d(r * y_inter)
    y_i2 = 4 - 2 / 4           # 3.5
    x_i2 = 2 - r * y_i2 / 4
    x_n2 = 0.9 * x_i2 + 0.1 * y_i2
    y_n2 = 0.9 * y_i2 + 0.1 * x_n2
    xo, yo = edict_step(den, x, y, s, sn, p, x_first=False, **kw)
    assert xo.item() == pytest.approx(x_n2, abs=1e-15) and yo.item() == pytest.approx(y_n2, abs=1e-15)


def test_second_call_sees_the_official_model_input():
    """For an EPS model in sigma space (c_in = 1/sqrt(1 + sigma^2)) the second call's network input
    ``c_in(sigma) * r * x_inter`` is the official alpha-space ``x_inter`` (``c_in(sigma_next) *
    x_inter``), labelled with the current sigma."""
    seen = []

    def den(z, sigma):
        seen.append((z.clone(), float(sigma)))
        return z * 0.3

    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s, sn = torch.tensor(5.0, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)
    edict_step(den, x, x.clone(), s, sn, 0.93)
    (z1, s1), (z2, s2) = seen
    assert s1 == s2 == 5.0
    x_inter = x + (sn - s) * (z1 - den(z1, s)) / s
    c_in = lambda v: 1 / math.sqrt(1 + float(v) ** 2)  # noqa: E731
    assert torch.allclose(c_in(s) * z2, c_in(sn) * x_inter, rtol=1e-14, atol=0)


def test_leapfrog_parity_alternates_and_start_index_matches_full_chain():
    den = ConvDenoiser(seed=4)
    sigmas = karras_sigmas(6)
    x, y = _start(2)
    full = edict_sample(den, x, y, sigmas)
    mid = edict_sample(den, x, y, sigmas[:4])
    rest = edict_sample(den, *mid, sigmas[3:], start_index=3)
    assert torch.equal(full[0], rest[0]) and torch.equal(full[1], rest[1])
    wrong = edict_sample(den, *mid, sigmas[3:], start_index=0)
    assert not torch.allclose(full[0], wrong[0])
    nolf = edict_sample(den, x, y, sigmas, leapfrog=False)
    assert not torch.allclose(full[0], nolf[0])


def test_final_sigma_zero_and_callbacks():
    den = GaussianDenoiser(SHAPE)
    sigmas = karras_sigmas(5)
    seen = []
    x, y = _start(0)
    edict_sample(den, x, y, sigmas, callback=lambda i, n, a, b: seen.append((i, n)))
    assert seen == [(i, 5) for i in range(5)]
    seen.clear()
    x0, y0 = edict_sample(den, x, y, sigmas)
    edict_invert(den, x0, y0, sigmas, callback=lambda i, n, a, b: seen.append(i))
    assert seen == [4, 3, 2, 1, 0]


def test_state_dtype_follows_x_and_model_dtype_is_independent():
    """The coupled state is computed in x's dtype whatever dtype the model computes in: a float32
    model inside a float64 chain still inverts exactly (it is deterministic; only the mixing
    arithmetic needs float64), and with a float32 x the state is float32 and exactness is lost."""
    net = ConvDenoiser(seed=1, dtype=torch.float32)
    seen = []

    def den32(z, s):
        seen.append(z.dtype)
        return net(z.float(), s.float())    # computes and answers in float32

    sigmas = karras_sigmas(20)
    x, y = _start(0)
    x0, y0 = edict_sample(den32, x, y, sigmas)
    assert x0.dtype == torch.float64 and y0.dtype == torch.float64
    assert set(seen) == {torch.float64} and den32(x0, sigmas[1]).dtype == torch.float32
    xr, yr = edict_invert(den32, x0, y0, sigmas)
    assert xr.dtype == torch.float64 and _rel(xr, x) < 1e-10 and _rel(yr, y) < 1e-10
    # the same float32 model with a float32 state: the state follows x, and the round trip is not exact
    seen.clear()
    a0, b0 = edict_sample(den32, x.float(), y.float(), sigmas)
    assert a0.dtype == torch.float32 and b0.dtype == torch.float32 and set(seen) == {torch.float32}
    ar, _ = edict_invert(den32, a0, b0, sigmas)
    assert ar.dtype == torch.float32 and _rel(ar.double(), x) > 1e-8   # measured 4.9e-7 (float64: 4e-15)


@pytest.mark.parametrize("sigmas, match", [
    (torch.tensor([1.0, 2.0, 0.0]), "descending"),
    (torch.tensor([2.0, 2.0, 0.0]), "descending"),
    (torch.tensor([3.0]), "at least 2"),
    (torch.tensor([[3.0, 1.0]]), "1-D"),
    (torch.tensor([0.0, 0.0]), "> 0"),
    (torch.tensor([3.0, float("nan")]), "NaN"),
    (torch.tensor([3.0, 1.0, -1.0]), "negative|descending"),
])
def test_validation_of_sigmas(sigmas, match):
    x, y = _start(0)
    with pytest.raises(ValueError, match=match):
        edict_sample(GaussianDenoiser(SHAPE), x, y, sigmas.double())


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, float("nan")])
def test_validation_of_p(p):
    x, y = _start(0)
    with pytest.raises(ValueError, match="p"):
        validate_chain(x, y, karras_sigmas(3), p)


def test_validation_of_shapes():
    x, _ = _start(0)
    with pytest.raises(ValueError, match="same shape"):
        edict_sample(GaussianDenoiser(SHAPE), x, x[:, :2], karras_sigmas(3))
    with pytest.raises(ValueError, match="dtype"):
        edict_sample(GaussianDenoiser(SHAPE), x, x.float(), karras_sigmas(3))


def test_inference_mode_sigmas_are_accepted():
    """ComfyUI hands SIGMAS created under inference mode; the chain must still work."""
    with torch.inference_mode():
        sigmas = karras_sigmas(4)
    x, y = _start(0)
    x0, _ = edict_sample(GaussianDenoiser(SHAPE), x, y, sigmas)
    assert torch.isfinite(x0).all()
