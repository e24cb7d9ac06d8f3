"""DOODL Optimize's euler chain, held-out monitor and NOISE output, through the real ComfyUI."""
import json

import pytest
import torch

from tests.comfyui_env import require_comfyui

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def comfy():
    require_comfyui()
    return True


def _scorer(kind="symmetry"):
    from doodl_nodes.scorers.symmetry import SymmetryScorer

    return SymmetryScorer("left-right" if kind == "symmetry" else "top-bottom")


def _doodl(setup, **overrides):
    from doodl_nodes.nodes.doodl_nodes import DOODLOptimize
    from tests.comfy.tiny_models import tiny_latent

    model, vae, pos, neg, sigmas = setup
    args = dict(model=model, vae=vae, positive=pos, negative=neg, cfg=2.0, sigmas=sigmas,
                scorer=_scorer(), seed=0, iterations=3, lr=5.0, momentum=0.9, clip=1e-2,
                perturbation=1e-3, renormalize=True, tie_latents=True, start_step=0,
                grad_mode="checkpoint", num_crops=2, cut_power=0.3, crop_reduction="auto",
                score_images="both", precision="fp32", latent=tiny_latent("eps"))
    args.update(overrides)
    with torch.inference_mode():
        return DOODLOptimize().optimize(**args)


@pytest.fixture(scope="module")
def eps3(comfy):
    from tests.comfy.setups import tiny_setup

    return tiny_setup("eps", steps=3)


def test_monitor_is_recorded_and_does_not_change_the_trajectory(eps3):
    plain = _doodl(eps3)
    watched = _doodl(eps3, monitor=_scorer("other"))
    for i in (0, 1, 5):   # final, best latent and the best pair: identical with a monitor
        a, b = plain["result"][i], watched["result"][i]
        if i == 5:
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        else:
            assert torch.equal(a["samples"], b["samples"])
    hp, hw = json.loads(plain["result"][4]), json.loads(watched["result"][4])
    assert hp["losses"] == hw["losses"] and "monitor" not in hp
    mon = hw["monitor"]
    # one entry per iteration plus the final iterate
    assert len(mon["losses"]) == len(hw["losses"]) + 1 == len(mon["scores"])
    assert all("symmetry_mse" in s for s in mon["scores"])
    assert mon["name"] == "symmetry (top-bottom)"
    # the monitor is not the optimized loss: its values differ from the objective's
    assert mon["losses"][:3] != hw["losses"]
    assert hw["monitor"]["losses"][0] == pytest.approx(hw["monitor"]["scores"][0]["symmetry_mse"], rel=1e-6)
    assert watched["ui"]["doodl_monitor"] == mon["losses"]
    assert watched["ui"]["doodl_summary"][0]["monitor"]["best"]["iteration"] == hw["best_iteration"]


def test_euler_chain_runs_and_regenerates(eps3):
    """DOODL through the plain chain: the loss falls; EDICT Generate renders its best pair with the
    Euler chain; ComfyUI's own euler sampler fed the NOISE output reproduces the best latent."""
    from comfy_extras.nodes_custom_sampler import CFGGuider, KSamplerSelect, SamplerCustomAdvanced

    from doodl_nodes.nodes.edict_nodes import EDICTGenerate
    from tests.comfy.tiny_models import tiny_latent

    model, vae, pos, neg, sigmas = eps3
    out = _doodl(eps3, chain="euler", iterations=4, perturbation=0.0)
    h = json.loads(out["result"][4])
    assert h["losses"][-1] < h["losses"][0] and h["status"] == "completed"
    best, pair, noise = out["result"][1]["samples"], out["result"][5], out["result"][6]
    assert pair.chain == "euler" and torch.equal(pair.x, pair.y)
    with torch.inference_mode():
        regen = EDICTGenerate().generate(model=model, positive=pos, negative=neg, cfg=2.0, sigmas=sigmas,
                                         seed=0, p=0.93, leapfrog=True, edict_latent=pair)[0]
        guider = CFGGuider().get_guider(model, pos, neg, 2.0)[0]
        sampler = KSamplerSelect().get_sampler("euler")[0]
        comfy_out = SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, tiny_latent("eps"))[0]
    torch.testing.assert_close(regen["samples"], best, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(comfy_out["samples"], best, rtol=1e-4, atol=1e-4)


def test_euler_chain_one_step_flow_and_edict_refusals(comfy):
    from comfy_extras.nodes_custom_sampler import SamplerCustom

    from doodl_nodes.nodes.edict_nodes import EDICTSampler
    from tests.comfy.setups import tiny_setup
    from tests.comfy.tiny_models import tiny_latent

    setup = tiny_setup("flow", steps=1)
    model, vae, pos, neg, sigmas = setup
    assert sigmas.numel() == 2
    out = _doodl(setup, chain="euler", iterations=2, latent=tiny_latent("flow"), cfg=1.0)
    assert torch.isfinite(out["result"][1]["samples"]).all()
    with pytest.raises(ValueError, match="at least 2 sampling steps.*euler"):
        _doodl(setup, chain="edict", iterations=1, latent=tiny_latent("flow"))
    with pytest.raises(ValueError, match="at least 2 sampling steps"), torch.inference_mode():
        SamplerCustom().sample(model, True, 0, 1.0, pos, neg, EDICTSampler().get_sampler(p=0.93, leapfrog=True)[0],
                               sigmas, tiny_latent("flow"))
    # an inverted EDICT pair cannot be optimized through the Euler chain
    eps = tiny_setup("eps", steps=3)
    with torch.inference_mode():
        import nodes

        from doodl_nodes.nodes.edict_nodes import EDICTInversion

        lat = nodes.VAEEncode().encode(eps[1], torch.rand(1, 64, 64, 3))[0]
        el, _ = EDICTInversion().invert(model=eps[0], positive=eps[2], negative=eps[3], cfg=2.0,
                                        sigmas=eps[4], latent=lat, p=0.93, leapfrog=True)
    with pytest.raises(ValueError, match="set chain to edict"):
        _doodl(eps, chain="euler", edict_latent=el, latent=None, tie_latents=False, renormalize=False)


def test_noise_output_is_empty_after_a_start_step(eps3):
    out = _doodl(eps3, start_step=1, iterations=1)
    with pytest.raises(ValueError, match="start_step"):
        out["result"][6].generate_noise({"samples": torch.zeros(1, 4, 8, 8)})
    good = _doodl(eps3, iterations=1)
    with pytest.raises(ValueError, match="same size"):
        good["result"][6].generate_noise({"samples": torch.zeros(1, 4, 16, 16)})
