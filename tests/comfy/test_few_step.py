"""Few-step and one-step schedules: SDXL-Turbo's SDTurboScheduler SIGMAS and ``sgm_uniform`` with 1-4
steps (Flux schnell), through DOODL's ``euler`` chain, against ComfyUI's own euler sampler."""
import json
import math

import pytest
import torch

from tests.comfyui_env import require_comfyui

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def turbo():
    """The tiny SDXL as SDXL-Turbo (ComfyUI runs SDXL-Turbo as an ordinary SDXL model)."""
    require_comfyui()
    from tests.comfy.setups import tiny_setup

    return tiny_setup("sdxl", steps=1)


@pytest.fixture(scope="module")
def schnell():
    require_comfyui()
    from tests.comfy.setups import tiny_setup

    return tiny_setup("flux_schnell", steps=1)


def _turbo_sigmas(model, steps):
    from comfy_extras.nodes_custom_sampler import SDTurboScheduler

    with torch.inference_mode():
        return SDTurboScheduler().get_sigmas(model, steps, 1.0)[0]


def _sgm_sigmas(model, steps):
    from comfy_extras.nodes_custom_sampler import BasicScheduler

    with torch.inference_mode():
        return BasicScheduler().get_sigmas(model, "sgm_uniform", steps, 1.0)[0]


def _doodl(setup, sigmas, kind, **overrides):
    from doodl_nodes.nodes.doodl_nodes import DOODLOptimize
    from doodl_nodes.scorers.symmetry import SymmetryScorer
    from tests.comfy.tiny_models import tiny_latent

    model, vae, pos, neg, _ = setup
    args = dict(model=model, vae=vae, positive=pos, negative=neg, cfg=1.0, sigmas=sigmas,
                scorer=SymmetryScorer(), seed=3, iterations=2, lr=5.0, momentum=0.9, clip=1e-2,
                perturbation=0.0, renormalize=True, tie_latents=True, start_step=0, grad_mode="checkpoint",
                num_crops=0, cut_power=0.3, crop_reduction="auto", score_images="both", precision="fp32",
                latent=tiny_latent(kind), chain="euler")
    args.update(overrides)
    with torch.inference_mode():
        return DOODLOptimize().optimize(**args)


def _comfy_euler(setup, sigmas, kind, seed=3):
    from comfy_extras.nodes_custom_sampler import KSamplerSelect, SamplerCustom

    from tests.comfy.tiny_models import tiny_latent

    model, _, pos, neg, _ = setup
    with torch.inference_mode():
        sampler = KSamplerSelect().get_sampler("euler")[0]
        return SamplerCustom().sample(model, True, seed, 1.0, pos, neg, sampler, sigmas, tiny_latent(kind))[0]["samples"]


def _close(a, b, rel=1e-5):
    """Equal up to the float32 arithmetic of ComfyUI's sampler (DOODL's chain steps in float64)."""
    err = float((a - b).norm() / b.norm())
    assert err < rel, err


def test_sd_turbo_scheduler_sigmas(turbo):
    """SDTurboScheduler: timesteps 999, 749, ... of the model's discrete schedule, then 0."""
    model = turbo[0]
    ms = model.get_model_object("model_sampling")
    for steps in (1, 2, 3, 4):
        s = _turbo_sigmas(model, steps)
        assert s.numel() == steps + 1 and float(s[-1]) == 0.0
        assert float(s[0]) == pytest.approx(float(ms.sigma(torch.tensor(999.0))), rel=1e-5)
        assert bool((s[:-1] > s[1:]).all())


@pytest.mark.parametrize("steps", [1, 4])
def test_turbo_euler_chain_is_comfyuis_euler_sampler(turbo, steps):
    """With no iteration DOODL's euler chain renders exactly what ComfyUI's euler sampler makes from
    the same seed (1 and 4 SDTurboScheduler steps); then the optimization moves it."""
    sigmas = _turbo_sigmas(turbo[0], steps)
    plain = _doodl(turbo, sigmas, "sdxl", iterations=0)["result"][1]["samples"]
    _close(plain, _comfy_euler(turbo, sigmas, "sdxl"))
    out = _doodl(turbo, sigmas, "sdxl", iterations=2)
    h = json.loads(out["result"][4])
    assert h["status"] == "completed" and all(math.isfinite(v) for v in h["losses"])
    assert h["losses"][1] < h["losses"][0]
    assert not torch.equal(out["result"][1]["samples"], plain)


@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_schnell_sgm_uniform_few_steps(schnell, steps):
    """Flux schnell with sgm_uniform 1-4 steps: the euler chain equals ComfyUI's euler sampler and
    DOODL lowers the loss; the NOISE output regenerates the best latent through ComfyUI's sampler."""
    from comfy_extras.nodes_custom_sampler import CFGGuider, KSamplerSelect, SamplerCustomAdvanced

    from tests.comfy.tiny_models import tiny_latent

    model, _, pos, neg, _ = schnell
    sigmas = _sgm_sigmas(model, steps)
    assert sigmas.numel() == steps + 1 and float(sigmas[0]) == pytest.approx(1.0, abs=1e-6)
    plain = _doodl(schnell, sigmas, "flux_schnell", iterations=0)["result"][1]["samples"]
    _close(plain, _comfy_euler(schnell, sigmas, "flux_schnell"))
    out = _doodl(schnell, sigmas, "flux_schnell", iterations=3)
    h = json.loads(out["result"][4])
    assert h["status"] == "completed" and min(h["losses"][1:]) < h["losses"][0]
    best, noise = out["result"][1]["samples"], out["result"][6]
    with torch.inference_mode():
        guider = CFGGuider().get_guider(model, pos, neg, 1.0)[0]
        sampler = KSamplerSelect().get_sampler("euler")[0]
        regen = SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, tiny_latent("flux_schnell"))[0]
    _close(regen["samples"], best)


def test_edict_on_few_step_schedules(turbo, schnell):
    """EDICT is refused at one step (the message points to the euler chain) and runs from two."""
    from doodl_nodes.nodes.edict_nodes import EDICTGenerate
    from tests.comfy.tiny_models import tiny_latent

    for setup, kind, make in ((turbo, "sdxl", _turbo_sigmas), (schnell, "flux_schnell", _sgm_sigmas)):
        model, _, pos, neg, _ = setup
        with pytest.raises(ValueError, match="at least 2 sampling steps.*'euler'"):
            _doodl(setup, make(model, 1), kind, chain="edict")
        with torch.inference_mode():
            out = EDICTGenerate().generate(model=model, positive=pos, negative=neg, cfg=1.0, sigmas=make(model, 2),
                                           seed=0, p=0.93, leapfrog=True, latent=tiny_latent(kind))[0]["samples"]
        assert torch.isfinite(out).all()
    out = _doodl(schnell, _sgm_sigmas(schnell[0], 2), "flux_schnell", chain="edict", iterations=1)
    assert json.loads(out["result"][4])["status"] == "completed"
