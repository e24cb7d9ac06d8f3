"""EDICT Generate in ComfyUI (tiny SD1.5-architecture UNet, ``ddim_uniform`` SIGMAS) equals the
port of the official EDICT chain driven by the same UNet, for cfg 1 and 7.5.

The port calls the UNet itself with the official alpha-space input: ``diffusion_model(x_vp, t,
context)`` where ``x_vp`` is the port's latent (exactly what ``SteppingLayer`` hands its UNet) and
``t = model_sampling.timestep(sigma)`` the DDPM index ComfyUI labels that sigma with. ComfyUI's
``ddim_uniform`` ends at sigma 0, so the port's last step has ``alpha_prev = 1``.

Precision: with float32 weights the UNet's own rounding is the floor. Measured (10 and 20 steps,
several seeds): the float32 port and the pack each land ~8e-7 (relative) from the same chain run
with a float64 copy of the UNet at cfg 7.5, so pack vs float32 port is ~1.0-1.5e-6 there; at cfg 1
it is ~1.5e-7 (held to 1e-6). The UNet is therefore also loaded with float64 weights (ComfyUI's loader,
``model_options={"dtype": torch.float64}``): what is left is ComfyUI's float32 model output
(``apply_model``'s ``.float()``) and float32 starting noise, ~4e-7 at cfg 7.5, and that case holds
the 1e-6 bound; the float32 cfg 7.5 case (measured 1.5e-6) is held to 4e-6.
"""
from __future__ import annotations

import math

import pytest
import torch

from tests.comfyui_env import require_comfyui
from tests.reference import official_edict as off
from tests.reference.official_scheduler import schedule_from_sigmas
from tests.reference.toy_eps import rel_err

STEPS = 10
SEED = 42
P = 0.93


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def comfy_models():
    require_comfyui()
    import comfy.sd

    from tests.comfy.tiny_models import load_tiny_model, tiny_unet_state_dict

    with torch.inference_mode():  # as loader nodes run
        return {torch.float32: load_tiny_model("eps"),
                torch.float64: comfy.sd.load_diffusion_model_state_dict(
                    tiny_unet_state_dict("eps"), model_options={"dtype": torch.float64})}


def _start_latent(ms, sigmas, latent, seed):
    """ComfyUI's starting latent for this seed (as KSAMPLER / the EDICT nodes build it, float32)."""
    import comfy.sample

    noise = comfy.sample.prepare_noise(latent["samples"], seed, None)
    sigma_max = float(ms.sigma_max)
    max_denoise = math.isclose(sigma_max, float(sigmas[0]), rel_tol=1e-5) or float(sigmas[0]) > sigma_max
    z = ms.noise_scaling(sigmas[0].float(), noise.float(), torch.zeros_like(noise), max_denoise)
    return z.to(torch.float64)


@pytest.mark.comfyui
@pytest.mark.parametrize("weights, cfg, tol", [
    pytest.param(torch.float32, 1.0, 1e-6, id="fp32-cfg1"),
    pytest.param(torch.float64, 7.5, 1e-6, id="fp64-cfg7.5"),
    pytest.param(torch.float32, 7.5, 4e-6, id="fp32-cfg7.5-floor")])
def test_edict_generate_equals_official_port(comfy_models, weights, cfg, tol):
    import comfy.samplers

    from doodl_nodes.nodes.edict_nodes import EDICTGenerate
    from tests.comfy.tiny_models import tiny_conditioning, tiny_latent

    model = comfy_models[weights]
    base = model.model
    unet = base.diffusion_model
    assert base.get_dtype() == weights and next(unet.parameters()).dtype == weights
    ms = model.get_model_object("model_sampling")
    positive, negative = tiny_conditioning("eps", seed=1), tiny_conditioning("eps", seed=2)
    latent = tiny_latent("eps")
    with torch.inference_mode():
        sigmas = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", STEPS)
        got = EDICTGenerate().generate(model=model, positive=positive, negative=negative, cfg=cfg,
                                       sigmas=sigmas, seed=SEED, p=P, leapfrog=True, latent=latent)[0]["samples"]
    assert float(sigmas[-1]) == 0.0 and sigmas.numel() == STEPS + 1

    contexts = {True: positive[0][0].to(weights), False: negative[0][0].to(weights)}

    def eps_model(x_vp, t, cond):
        tt = torch.full((x_vp.shape[0],), float(t), dtype=torch.float32)  # as apply_model labels it
        return unet(x_vp.to(weights), tt, context=contexts[cond], control=None,
                    transformer_options={}).to(torch.float64)

    steps = schedule_from_sigmas(sigmas, lambda s: float(ms.timestep(torch.tensor(s, dtype=torch.float32))))
    assert steps[-1].alpha_prev == 1.0  # sigma 0 at the end: the last step goes to alpha_bar = 1
    assert all(s.t == round(s.t) for s in steps)  # integral DDPM labels (1 + 100 k for 10 steps)
    with torch.inference_mode():
        z = _start_latent(ms, sigmas, latent, SEED)
        x_vp = z * math.sqrt(steps[0].alpha)
        ref_x, ref_y = off.edict_generate(off.cfg(eps_model, cfg), x_vp, x_vp.clone(), steps, P)
        ref = base.process_latent_out(ref_x)  # alpha_bar = 1 at the end: VP = VE
    err = rel_err(got, ref)
    print(f"ComfyUI EDICT Generate vs official port ({weights}, cfg {cfg}): rel err {err:.2e} "
          f"(x0 vs y0 differ by {rel_err(ref_x, ref_y):.1e})")
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert err < tol, err
