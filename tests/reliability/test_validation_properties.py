"""Property-based tests (hypothesis) of input validation: the core's chain and config checks, and
the node-level SIGMAS / latent checks, accept exactly the valid inputs and name what is wrong."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doodl_nodes.core.edict import edict_sample, validate_chain
from doodl_nodes.core.optimize import DoodlConfig

floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
sigma_lists = st.lists(floats, min_size=0, max_size=8)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid(sig):
    if len(sig) < 2 or not all(math.isfinite(s) for s in sig):
        return False
    if any(s <= 0 for s in sig[:-1]) or sig[-1] < 0:
        return False
    return all(b < a for a, b in zip(sig, sig[1:]))


@SETTINGS
@given(sigma_lists, st.one_of(st.floats(min_value=-1, max_value=2), st.just(float("nan"))))
def test_validate_chain_accepts_exactly_the_valid_chains(sig, p):
    x = torch.zeros(1, 2, dtype=torch.float64)
    ok = _valid(sig) and 0 < p <= 1
    try:
        validate_chain(x, x, torch.tensor(sig, dtype=torch.float64), p)
    except ValueError as exc:
        assert not ok, exc
        assert ("sigma" in str(exc)) or ("p (" in str(exc))
    else:
        assert ok


@SETTINGS
@given(st.lists(st.floats(min_value=1e-3, max_value=100, allow_nan=False), min_size=2, max_size=6, unique=True))
def test_valid_chains_run_and_invert(raw):
    from doodl_nodes.core.edict import edict_invert

    sig = torch.tensor(sorted(raw, reverse=True), dtype=torch.float64)
    den = lambda z, s: z / (1 + s ** 2)  # noqa: E731
    x = torch.linspace(-1, 1, 8, dtype=torch.float64).reshape(1, 8) * float(sig[0])
    x0, y0 = edict_sample(den, x, x.clone(), sig)
    xr, _ = edict_invert(den, x0, y0, sig)
    assert torch.allclose(xr, x, rtol=1e-9, atol=1e-9 * float(sig[0]))


@SETTINGS
@given(iterations=st.integers(-3, 5), lr=floats, momentum=floats, clip=floats, perturbation=floats,
       start_step=st.integers(-2, 6), mode=st.sampled_from(["checkpoint", "reversible", "adjoint", ""]))
def test_doodl_config_validation(iterations, lr, momentum, clip, perturbation, start_step, mode):
    cfg = DoodlConfig(iterations=iterations, lr=lr, momentum=momentum, clip=clip, perturbation=perturbation,
                      start_step=start_step, grad_mode=mode)
    ok = (iterations >= 0 and math.isfinite(lr) and lr >= 0 and math.isfinite(clip)
          and math.isfinite(perturbation) and perturbation >= 0 and 0 <= momentum < 1
          and mode in ("checkpoint", "reversible") and 0 <= start_step < 4)
    try:
        cfg.validate(num_steps=4)
    except ValueError as exc:
        assert not ok and str(exc).startswith("DoodlConfig.")
    else:
        assert ok


@pytest.mark.comfyui
@SETTINGS
@given(sigma_lists)
def test_node_sigmas_check_names_the_input(sig):
    from tests.comfyui_env import require_comfyui

    require_comfyui()
    from doodl_nodes.bridge.edict_ops import check_sigmas

    with torch.inference_mode():
        t = torch.tensor(sig, dtype=torch.float32)
    ok = _valid([float(v) for v in t])
    try:
        out = check_sigmas(t)
    except ValueError as exc:
        assert not ok and "sigmas input" in str(exc) and "scheduler" in str(exc)
    else:
        assert ok and out.dtype == torch.float64 and not out.is_inference()


@pytest.fixture(scope="module")
def eps_model():
    from tests.comfyui_env import require_comfyui

    require_comfyui()
    from tests.comfy.tiny_models import load_tiny_model

    with torch.inference_mode():
        model = load_tiny_model("eps")
    yield model
    del model  # released before interpreter shutdown (ModelPatcher.__del__ needs live modules)


@pytest.mark.comfyui
@settings(max_examples=60, deadline=None)
@given(channels=st.integers(1, 20), h=st.integers(1, 6), w=st.integers(1, 6), dims=st.sampled_from([3, 4, 5]),
       zeros=st.booleans())
def test_node_latent_check(eps_model, channels, h, w, dims, zeros):
    from doodl_nodes.bridge.edict_ops import check_latent_fits

    shape = (1, channels, h, w)[:dims] if dims <= 4 else (1, channels, 1, h, w)
    samples = torch.zeros(shape) if zeros else torch.ones(shape)
    ok = dims == 4 and (channels == 4 or zeros) and min(h, w) >= 2
    try:
        check_latent_fits(eps_model, samples)
    except ValueError as exc:
        assert not ok and "latent input" in str(exc)
    else:
        assert ok
