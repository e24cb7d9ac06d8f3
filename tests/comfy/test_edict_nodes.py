"""EDICT nodes against the real ComfyUI: SamplerCustom parity, exact inversion, input errors.

Everything runs inside ``torch.inference_mode()`` as ComfyUI's ``execution.py`` runs nodes, on tiny
random models built through ComfyUI's own loaders (tests/comfy/tiny_models.py).
"""
import pytest
import torch

from tests.comfyui_env import require_comfyui

pytestmark = pytest.mark.comfyui
KINDS = ["eps", "v", "flow"]


@pytest.fixture(scope="module")
def comfy():
    require_comfyui()
    import comfy.samplers  # noqa: F401
    return True


def _setup(kind, steps=4):
    from tests.comfy.setups import tiny_setup

    return tiny_setup(kind, steps)


def _encode(vae, seed=0, size=64):
    import nodes

    g = torch.Generator().manual_seed(seed)
    image = torch.rand((1, size, size, 3), generator=g)
    with torch.inference_mode():
        return nodes.VAEEncode().encode(vae, image)[0]


@pytest.mark.parametrize("kind", KINDS)
def test_sampler_custom_equals_edict_generate(comfy, kind):
    from comfy_extras.nodes_custom_sampler import SamplerCustom

    from doodl_nodes.nodes.edict_nodes import EDICTGenerate, EDICTSampler
    from tests.comfy.tiny_models import tiny_latent

    model, _, pos, neg, sigmas = _setup(kind)
    latent = tiny_latent(kind)
    with torch.inference_mode():
        sampler = EDICTSampler().get_sampler(p=0.93, leapfrog=True)[0]
        ref = SamplerCustom().sample(model, True, 123, 2.5, pos, neg, sampler, sigmas, latent)[0]["samples"]
        got = EDICTGenerate().generate(model=model, positive=pos, negative=neg, cfg=2.5, sigmas=sigmas,
                                       seed=123, p=0.93, leapfrog=True, latent=latent)[0]["samples"]
    assert torch.isfinite(got).all() and got.abs().max() > 0
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-6), float((got - ref).abs().max())


@pytest.mark.parametrize("kind", KINDS)
def test_inversion_then_generation_reconstructs(comfy, kind):
    from doodl_nodes.nodes.edict_nodes import EDICTGenerate, EDICTInversion

    model, vae, pos, neg, sigmas = _setup(kind, steps=6)
    latent = _encode(vae)
    with torch.inference_mode():
        el, view = EDICTInversion().invert(model=model, positive=pos, negative=neg, cfg=3.0, sigmas=sigmas,
                                           latent=latent, p=0.93, leapfrog=True)
        rec = EDICTGenerate().generate(model=model, positive=pos, negative=neg, cfg=3.0, sigmas=sigmas,
                                       seed=0, p=0.93, leapfrog=True, edict_latent=el)[0]
    x = latent["samples"]
    rel = float((rec["samples"] - x).norm() / x.norm())
    assert rel < 1e-6, rel
    assert el.x.dtype == torch.float64 and not torch.equal(el.x, el.y)
    assert view["samples"].shape == x.shape and not torch.allclose(view["samples"], x)


def test_works_after_ksampler_loaded_the_model(comfy):
    """The inference-tensor trap: an ordinary KSampler run first (inference mode), then EDICT."""
    import nodes

    from doodl_nodes.nodes.edict_nodes import EDICTGenerate, EDICTInversion
    from tests.comfy.tiny_models import tiny_latent

    model, vae, pos, neg, sigmas = _setup("eps", steps=3)
    with torch.inference_mode():
        nodes.common_ksampler(model, 1, 2, 2.0, "euler", "normal", pos, neg, tiny_latent("eps"))
        latent = nodes.VAEEncode().encode(vae, torch.rand(1, 64, 64, 3))[0]
        el, _ = EDICTInversion().invert(model=model, positive=pos, negative=neg, cfg=2.0, sigmas=sigmas,
                                        latent=latent, p=0.93, leapfrog=True)
        rec = EDICTGenerate().generate(model=model, positive=pos, negative=neg, cfg=2.0, sigmas=sigmas,
                                       seed=0, p=0.93, leapfrog=True, edict_latent=el)[0]
    assert float((rec["samples"] - latent["samples"]).norm() / latent["samples"].norm()) < 1e-6


def test_edict_latent_mismatches_are_refused(comfy):
    import comfy.samplers as cs

    from doodl_nodes.bridge.edict_latent import EdictLatentMismatch
    from doodl_nodes.nodes.edict_nodes import EDICTGenerate, EDICTInversion

    model, vae, pos, neg, sigmas = _setup("eps", steps=3)
    latent = _encode(vae)
    other, _, _, _, _ = _setup("v", steps=3)
    with torch.inference_mode():
        el, _ = EDICTInversion().invert(model=model, positive=pos, negative=neg, cfg=2.0, sigmas=sigmas,
                                        latent=latent, p=0.93, leapfrog=True)
        more = cs.calculate_sigmas(model.get_model_object("model_sampling"), "karras", 5)
        with pytest.raises(EdictLatentMismatch, match="other sigmas"):
            EDICTGenerate().generate(model=model, positive=pos, negative=neg, cfg=2.0, sigmas=more, seed=0,
                                     p=0.93, leapfrog=True, edict_latent=el)
        v_pos = _setup("v")[2]
        with pytest.raises(EdictLatentMismatch, match="another model"):
            EDICTGenerate().generate(model=other, positive=v_pos, negative=v_pos, cfg=2.0, sigmas=sigmas,
                                     seed=0, p=0.93, leapfrog=True, edict_latent=el)


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([1.0, 2.0, 0.0]), "descending"),
    (torch.tensor([5.0]), "at least 2"),
    (torch.tensor([0.0, 0.0]), "> 0"),
])
def test_bad_sigmas_named(comfy, bad, match):
    from doodl_nodes.nodes.edict_nodes import EDICTGenerate
    from tests.comfy.tiny_models import tiny_latent

    model, _, pos, neg, _ = _setup("eps", steps=2)
    with torch.inference_mode(), pytest.raises(ValueError, match=f"sigmas input.*{match}"):
        EDICTGenerate().generate(model=model, positive=pos, negative=neg, cfg=2.0, sigmas=bad, seed=0, p=0.93,
                                 leapfrog=True, latent=tiny_latent("eps"))


def test_wrong_latent_channels_named(comfy):
    from doodl_nodes.nodes.edict_nodes import EDICTInversion

    model, _, pos, neg, sigmas = _setup("eps", steps=2)
    with torch.inference_mode(), pytest.raises(ValueError, match="latent input has 16 channels"):
        EDICTInversion().invert(model=model, positive=pos, negative=neg, cfg=2.0, sigmas=sigmas,
                                latent={"samples": torch.randn(1, 16, 8, 8)}, p=0.93, leapfrog=True)
