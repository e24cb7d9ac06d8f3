"""DOODL through the real ComfyUI: chain gradients vs plain autograd and finite differences, the
optimizer node end to end under inference mode, the one-step baseline sampler, and refusals."""
import json

import pytest
import torch

from tests.comfyui_env import require_comfyui

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def comfy():
    require_comfyui()
    return True


def _setup(kind="eps", steps=3):
    from tests.comfy.setups import tiny_setup

    return tiny_setup(kind, steps)


def _scorer():
    from doodl_nodes.scorers.symmetry import SymmetryScorer

    return SymmetryScorer()


def _optimize(model, vae, pos, neg, sigmas, *, iterations=3, seed=0, latent=None, edict_latent=None,
              lr=1.0, clip=1e-2, perturbation=0.0, tie=True, renorm=True, precision="fp32", mode="checkpoint",
              score="both", crops=0, start_step=0, cfg=2.0):
    from doodl_nodes.nodes.doodl_nodes import DOODLOptimize

    return DOODLOptimize().optimize(model=model, vae=vae, positive=pos, negative=neg, cfg=cfg, sigmas=sigmas,
                                    scorer=_scorer(), seed=seed, iterations=iterations, lr=lr, momentum=0.9,
                                    clip=clip, perturbation=perturbation, renormalize=renorm, tie_latents=tie,
                                    start_step=start_step, grad_mode=mode, num_crops=crops, cut_power=0.3,
                                    crop_reduction="min", score_images=score, precision=precision,
                                    latent=latent, edict_latent=edict_latent)


@pytest.mark.parametrize("kind", ["eps", "flow"])
def test_chain_gradient_matches_autograd_and_finite_differences(comfy, kind):
    from doodl_nodes.bridge.chain import run_in_guider
    from doodl_nodes.bridge.vae import decode_differentiable
    from doodl_nodes.core.backprop import edict_value_and_grad
    from doodl_nodes.core.crops import CropConfig
    from doodl_nodes.core.edict import edict_sample

    model, vae, pos, neg, sigmas = _setup(kind, steps=3)
    scorer = _scorer()
    shape = (1, 16 if kind == "flow" else 4, 8, 8)

    def fn(chain):
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        x = chain.initial_latent(noise)
        y = x + 0.01 * torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

        def objective(a, b):
            # clamp="none": the straight-through clamp's gradient is not the derivative FD sees
            img = decode_differentiable(vae, chain.latent_format, torch.cat([a, b]), clamp="none")
            return scorer.loss(img, CropConfig(num_crops=0)).mean()

        out = {m: edict_value_and_grad(chain.denoise, objective, x, y, chain.sigmas, mode=m)
               for m in ("checkpoint", "reversible")}
        with torch.enable_grad():
            xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
            loss = objective(*edict_sample(chain.denoise, xr, yr, chain.sigmas))
            out["plain"] = (loss.detach(), *torch.autograd.grad(loss, (xr, yr)))
        v = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        v = v / v.norm()
        h = 0.05
        f = lambda t: float(objective(*edict_sample(chain.denoise, x + t * v, y, chain.sigmas)))  # noqa: E731
        out["fd"] = ((f(h) - f(-h)) / (2 * h), float((out["plain"][1] * v).sum()))
        out["weights_clean"] = all(p.grad is None and not p.requires_grad
                                   for p in chain.base_model.parameters())
        return out

    with torch.inference_mode():
        out = run_in_guider(model, pos, neg, 2.0, sigmas, shape, fn, grad=True, precision="fp32",
                            extra_patchers=[vae.patcher], extra_modules=[vae.first_stage_model])
    _, px, py = out["plain"]
    assert px.abs().sum() > 0 and torch.isfinite(px).all()
    for mode in ("checkpoint", "reversible"):
        _, gx, gy = out[mode]
        assert float((gx - px).norm() / px.norm()) < 1e-4, mode
        assert float((gy - py).norm() / py.norm()) < 1e-4, mode
    fd, an = out["fd"]
    assert abs(fd - an) <= 0.05 * abs(an) + 1e-9, (fd, an)
    assert out["weights_clean"]


def test_doodl_node_loss_falls_and_is_reproducible(comfy):
    from tests.comfy.tiny_models import tiny_latent

    model, vae, pos, neg, sigmas = _setup("eps")
    with torch.inference_mode():
        a = _optimize(model, vae, pos, neg, sigmas, latent=tiny_latent("eps"), iterations=4, seed=3, lr=5.0)
        b = _optimize(model, vae, pos, neg, sigmas, latent=tiny_latent("eps"), iterations=4, seed=3, lr=5.0)
    ha, hb = json.loads(a["result"][4]), json.loads(b["result"][4])
    losses = ha["losses"]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert ha["best_loss"] < losses[0] and ha["status"] == "completed"
    # everything but the memory measurement (free memory varies between runs) is reproducible
    assert ha.pop("memory")["choices"] == hb.pop("memory")["choices"] == []
    assert ha == hb
    assert torch.equal(a["result"][0]["samples"], b["result"][0]["samples"])
    final, best, strip, plot, _, pair, noise = a["result"]
    assert final["samples"].shape == (1, 4, 8, 8) and torch.isfinite(best["samples"]).all()
    assert strip.dim() == 4 and strip.shape[-1] == 3 and plot.shape[-1] == 3
    assert a["ui"]["doodl_losses"] == losses
    assert pair.source == "doodl" and pair.x.dtype == torch.float64
    assert noise.noise.shape == final["samples"].shape and noise.noise.dtype == torch.float32


def test_doodl_after_ksampler_and_vae_decode_loaded_everything(comfy):
    """Another node loaded the model and the VAE under inference mode first (the trap)."""
    import nodes

    from tests.comfy.tiny_models import tiny_latent

    model, vae, pos, neg, sigmas = _setup("eps")
    with torch.inference_mode():
        lat = nodes.common_ksampler(model, 1, 2, 2.0, "euler", "normal", pos, neg, tiny_latent("eps"))[0]
        nodes.VAEDecode().decode(vae, lat)
        out = _optimize(model, vae, pos, neg, sigmas, latent=tiny_latent("eps"), iterations=2, lr=5.0)
        # and an ordinary sampler still works afterwards, with the same results as before
        again = nodes.common_ksampler(model, 1, 2, 2.0, "euler", "normal", pos, neg, tiny_latent("eps"))[0]
    assert torch.equal(lat["samples"], again["samples"])
    assert len(json.loads(out["result"][4])["losses"]) == 2


def test_editing_with_zero_iterations_reconstructs_the_image(comfy):
    import nodes

    from doodl_nodes.nodes.edict_nodes import EDICTInversion

    model, vae, pos, neg, sigmas = _setup("eps", steps=4)
    with torch.inference_mode():
        latent = nodes.VAEEncode().encode(vae, torch.rand(1, 64, 64, 3))[0]
        el, _ = EDICTInversion().invert(model=model, positive=pos, negative=neg, cfg=2.0, sigmas=sigmas,
                                        latent=latent, p=0.93, leapfrog=True)
        out = _optimize(model, vae, pos, neg, sigmas, edict_latent=el, iterations=0, tie=False, renorm=False)
        edited = _optimize(model, vae, pos, neg, sigmas, edict_latent=el, iterations=2, tie=False,
                           renorm=False, lr=5.0)
    x = latent["samples"]
    assert float((out["result"][0]["samples"] - x).norm() / x.norm()) < 1e-6
    assert not torch.allclose(edited["result"][0]["samples"], x)


def test_bf16_and_reversible_and_start_step_run(comfy):
    from tests.comfy.tiny_models import tiny_latent

    model, vae, pos, neg, sigmas = _setup("flow", steps=3)
    with torch.inference_mode():
        out = _optimize(model, vae, pos, neg, sigmas, latent=tiny_latent("flow"), iterations=2,
                        precision="bf16", mode="reversible", start_step=1, score="mean", crops=2)
    h = json.loads(out["result"][4])
    assert len(h["losses"]) == 2 and all(map(lambda v: v == v, h["losses"]))
    assert torch.isfinite(out["result"][0]["samples"]).all()


def test_one_step_guidance_sampler(comfy):
    from comfy_extras.nodes_custom_sampler import SamplerCustom
    import comfy.samplers

    from doodl_nodes.nodes.doodl_nodes import DOODLOneStepGuidance
    from tests.comfy.tiny_models import tiny_latent

    model, vae, pos, neg, sigmas = _setup("eps", steps=3)
    with torch.inference_mode():
        plain = SamplerCustom().sample(model, True, 7, 2.0, pos, neg, comfy.samplers.ksampler("euler"),
                                       sigmas, tiny_latent("eps"))[0]["samples"]
        s0 = DOODLOneStepGuidance().get_sampler(vae=vae, scorer=_scorer(), guidance_scale=0.0, num_crops=0,
                                                cut_power=0.3, crop_reduction="min", seed=0)[0]
        zero = SamplerCustom().sample(model, True, 7, 2.0, pos, neg, s0, sigmas, tiny_latent("eps"))[0]["samples"]
        s1 = DOODLOneStepGuidance().get_sampler(vae=vae, scorer=_scorer(), guidance_scale=1e4, num_crops=2,
                                                cut_power=0.3, crop_reduction="min", seed=0)[0]
        guided = SamplerCustom().sample(model, True, 7, 2.0, pos, neg, s1, sigmas, tiny_latent("eps"))[0]["samples"]
    assert torch.allclose(zero, plain, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(guided).all() and not torch.allclose(guided, plain)


def test_refuses_cache_wrappers_sage_attention_and_fp8(comfy, monkeypatch):
    import comfy.cli_args
    import comfy.patcher_extension as pe

    from doodl_nodes.bridge.safety import UnsafeSettingError
    from tests.comfy.tiny_models import tiny_latent

    model, vae, pos, neg, sigmas = _setup("eps", steps=2)
    cached = model.clone()
    cached.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "easycache", lambda executor, *a, **k: executor(*a, **k))
    with torch.inference_mode():
        with pytest.raises(UnsafeSettingError, match="easycache"):
            _optimize(cached, vae, pos, neg, sigmas, latent=tiny_latent("eps"), iterations=1)
        monkeypatch.setattr(comfy.cli_args.args, "use_sage_attention", True)
        with pytest.raises(UnsafeSettingError, match="--use-sage-attention"):
            _optimize(model, vae, pos, neg, sigmas, latent=tiny_latent("eps"), iterations=1)
        monkeypatch.setattr(comfy.cli_args.args, "use_sage_attention", False)
        monkeypatch.setattr(comfy.cli_args.args, "fast", {comfy.cli_args.PerformanceFeature.Fp8MatrixMultiplication})
        with pytest.raises(UnsafeSettingError, match="fp8_matrix_mult"):
            _optimize(model, vae, pos, neg, sigmas, latent=tiny_latent("eps"), iterations=1)


def test_input_errors_name_the_input(comfy):
    from tests.comfy.tiny_models import tiny_latent, tiny_vae

    model, vae, pos, neg, sigmas = _setup("eps", steps=2)
    with torch.inference_mode():
        flow_vae = tiny_vae("flow")
        with pytest.raises(ValueError, match="vae input makes 16-channel"):
            _optimize(model, flow_vae, pos, neg, sigmas, latent=tiny_latent("eps"), iterations=1)
        with pytest.raises(ValueError, match="start_step"):
            _optimize(model, vae, pos, neg, sigmas, latent=tiny_latent("eps"), iterations=1, start_step=2)
        with pytest.raises(ValueError, match="Connect a latent"):
            _optimize(model, vae, pos, neg, sigmas, iterations=1)


def test_best_pair_after_a_start_step_regenerates_the_best_latent(comfy):
    """With start_step > 0 the best pair lives at sigmas[start_step]; EDICT Generate given the full
    SIGMAS finds where its chain starts (and its leapfrog parity) and reproduces the best latent."""
    from doodl_nodes.nodes.edict_nodes import EDICTGenerate
    from tests.comfy.tiny_models import tiny_latent

    model, vae, pos, neg, sigmas = _setup("eps", steps=4)
    with torch.inference_mode():
        out = _optimize(model, vae, pos, neg, sigmas, latent=tiny_latent("eps"), iterations=2, start_step=2, lr=5.0)
        pair = out["result"][5]
        regen = EDICTGenerate().generate(model=model, positive=pos, negative=neg, cfg=2.0, sigmas=sigmas,
                                         seed=0, p=0.93, leapfrog=True, edict_latent=pair)[0]
    assert pair.sigmas.numel() == 3
    assert torch.allclose(regen["samples"], out["result"][1]["samples"], rtol=1e-5, atol=1e-5)
