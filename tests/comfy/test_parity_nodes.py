"""Paper-parity behaviour of the nodes through the real ComfyUI: one step-parity rule for every entry
point (DOODL continued from its own pair after an odd start step optimizes the chain EDICT Generate
renders), and the released one-step baseline as a selectable sampler variant."""
import json

import pytest
import torch

from tests.comfyui_env import require_comfyui

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def comfy():
    require_comfyui()
    return True


def _symmetry():
    from doodl_nodes.scorers.symmetry import SymmetryScorer

    return SymmetryScorer()


def _doodl(model, vae, pos, neg, sigmas, **overrides):
    from doodl_nodes.nodes.doodl_nodes import DOODLOptimize

    args = dict(model=model, vae=vae, positive=pos, negative=neg, cfg=2.0, sigmas=sigmas,
                scorer=_symmetry(), seed=0, iterations=2, lr=5.0, momentum=0.9, clip=1e-2,
                perturbation=0.0, renormalize=True, tie_latents=True, start_step=0,
                grad_mode="checkpoint", num_crops=0, cut_power=0.3, crop_reduction="auto",
                score_images="both", precision="fp32")
    args.update(overrides)
    return DOODLOptimize().optimize(**args)


@pytest.mark.parametrize("start_step", [1, 3])
def test_doodl_continued_from_its_pair_renders_what_edict_generate_makes(comfy, start_step):
    """Regression: the pair DOODL returns after an odd start step sits partway along SIGMAS. Fed back
    with lr 0 (nothing moves), DOODL must score and return exactly the latent that EDICT Generate
    makes from that pair with the same SIGMAS; before the parity fix it counted the step parity from
    the pair's own first step and rendered another chain."""
    from doodl_nodes.nodes.edict_nodes import EDICTGenerate
    from tests.comfy.setups import tiny_setup
    from tests.comfy.tiny_models import tiny_latent

    model, vae, pos, neg, sigmas = tiny_setup("eps", steps=5)
    with torch.inference_mode():
        first = _doodl(model, vae, pos, neg, sigmas, latent=tiny_latent("eps"), start_step=start_step)
        pair = first["result"][5]
        assert pair.sigmas.numel() == sigmas.numel() - start_step
        again = _doodl(model, vae, pos, neg, sigmas, edict_latent=pair, lr=0.0, tie_latents=False,
                       renormalize=False, iterations=1)
        regen = EDICTGenerate().generate(model=model, positive=pos, negative=neg, cfg=2.0, sigmas=sigmas,
                                         seed=0, p=0.93, leapfrog=True, edict_latent=pair)[0]
    final, best = again["result"][0]["samples"], again["result"][1]["samples"]
    torch.testing.assert_close(final, regen["samples"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(best, regen["samples"], rtol=1e-6, atol=1e-7)
    # the returned pair is the input pair (lr 0, no perturbation, no tying or renormalization)
    out_pair = again["result"][5]
    torch.testing.assert_close(out_pair.x, pair.x, rtol=0, atol=1e-12)
    torch.testing.assert_close(out_pair.y, pair.y, rtol=0, atol=1e-12)
    h = json.loads(again["result"][4])
    assert h["losses"][0] == pytest.approx(h["final_loss"], rel=1e-9)


def test_official_one_step_baseline_variant(comfy):
    """The released baseline as a sampler: EDICT steps (scale 0 equals the EDICT sampler exactly),
    guidance from the unconditional x0 estimate (differs from the pack's variant), finite."""
    from comfy_extras.nodes_custom_sampler import SamplerCustom

    from doodl_nodes.nodes.doodl_nodes import DOODLOneStepGuidance
    from doodl_nodes.nodes.edict_nodes import EDICTSampler
    from tests.comfy.setups import tiny_setup
    from tests.comfy.tiny_models import tiny_latent

    model, vae, pos, neg, sigmas = tiny_setup("eps", steps=3)

    def run(sampler):
        return SamplerCustom().sample(model, True, 7, 2.0, pos, neg, sampler, sigmas,
                                      tiny_latent("eps"))[0]["samples"]

    def baseline(scale, variant):
        return DOODLOneStepGuidance().get_sampler(vae=vae, scorer=_symmetry(), guidance_scale=scale,
                                                  num_crops=0, cut_power=0.3, crop_reduction="auto",
                                                  seed=0, variant=variant)[0]

    with torch.inference_mode():
        edict = run(EDICTSampler().get_sampler(p=0.93, leapfrog=True)[0])
        zero = run(baseline(0.0, "official"))
        official = run(baseline(1e4, "official"))
        pack = run(baseline(1e4, "cfg_x0_euler"))
    torch.testing.assert_close(zero, edict, rtol=0, atol=0)
    assert torch.isfinite(official).all() and not torch.allclose(official, edict)
    assert not torch.allclose(official, pack)


def test_official_baseline_needs_a_negative(comfy):
    from comfy_extras.nodes_custom_sampler import BasicGuider, RandomNoise, SamplerCustomAdvanced

    from doodl_nodes.nodes.doodl_nodes import DOODLOneStepGuidance
    from tests.comfy.setups import tiny_setup
    from tests.comfy.tiny_models import tiny_latent

    model, vae, pos, neg, sigmas = tiny_setup("eps", steps=2)
    with torch.inference_mode():
        sampler = DOODLOneStepGuidance().get_sampler(vae=vae, scorer=_symmetry(), guidance_scale=1.0,
                                                     num_crops=0, cut_power=0.3, crop_reduction="auto",
                                                     seed=0, variant="official")[0]
        guider = BasicGuider().get_guider(model, pos)[0]
        noise = RandomNoise().get_noise(0)[0]
        with pytest.raises(ValueError, match="negative"):
            SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, tiny_latent("eps"))
