"""The paper's baseline as a ComfyUI sampler: one-step classifier guidance.

At every model evaluation the guided denoiser of ``doodl_nodes.core.guidance`` scores a decoded
one-step estimate and shifts the denoised output by ``-scale * sigma**2 * grad``. Two variants
(``BASELINE_VARIANTS``):

* ``cfg_x0_euler`` (the pack's): the estimate is the guided call's own CFG x0 prediction, and a
  deterministic Euler (DDIM) step follows;
* ``official``: the released code's baseline: the estimate is the x0 of the *unconditional*
  prediction blended with the model input (``core.guidance.official_estimate``), and the steps are
  EDICT's (both of its model calls guided), with a float64 state.

Exposed through ``comfy.samplers.KSAMPLER`` so it plugs into SamplerCustom and
SamplerCustomAdvanced like any sampler.
"""
from __future__ import annotations

import functools

import torch

import comfy.model_management
import comfy.samplers

from ..core.crops import CropConfig
from ..core.edict import edict_sample
from ..core.guidance import official_estimate, one_step_guided_denoiser
from .autograd import clone_tensor_tree, make_autograd_safe
from .chain import model_input_scale
from .inplace_blocks import differentiable_flux_blocks, explain_inplace_error
from .safety import check_gradient_safe, differentiable_attention_override
from .scorer_models import scorer_patchers
from .vae import check_vae_matches, decode_differentiable

__all__ = ["one_step_guidance_sampler", "BASELINE_VARIANTS"]

BASELINE_VARIANTS = ("cfg_x0_euler", "official")


def _base_model(model_k):
    # KSamplerX0Inpaint -> CFGGuider -> BaseModel
    return model_k.inner_model.inner_model


def sample_one_step_guidance(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                             vae=None, scorer=None, scale=1.0, crops=CropConfig(), seed=0,
                             decoder_checkpointing=False, variant="cfg_x0_euler", p=0.93,
                             leapfrog=True):
    if variant not in BASELINE_VARIANTS:
        raise ValueError(f"variant must be one of {BASELINE_VARIANTS}, got {variant!r}")
    base = _base_model(model)
    extra_args = _with_differentiable_attention({} if extra_args is None else extra_args,
                                                base.diffusion_model)
    guider = model.inner_model
    check_gradient_safe(guider.model_patcher, "One-step guidance")
    check_vae_matches(vae, base.latent_format)
    if variant == "official" and not guider.conds.get("negative"):
        raise ValueError("The 'official' one-step baseline takes x0 from the unconditional (negative) "
                         "prediction, and this guider has no negative conditioning. Use SamplerCustom "
                         "(or a CFGGuider) with a negative prompt, or the 'cfg_x0_euler' variant.")
    # the scorer's networks under ComfyUI's model management, like the VAE
    comfy.model_management.load_models_gpu([vae.patcher] + scorer_patchers(scorer), force_full_load=True)
    device = x.device
    make_autograd_safe([base, vae.first_stage_model] + list(scorer.modules()))
    guider.conds = clone_tensor_tree(guider.conds)  # inference-tensor conds cannot be saved for backward
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 1)

    def model_call(z, sigma):  # float32 in, like ComfyUI's samplers
        comfy.model_management.throw_exception_if_processing_interrupted()
        z_in = z.to(x.dtype)
        s_in = sigma.reshape(1).to(z_in.dtype).expand(z.shape[0])
        return z_in, s_in

    def denoise(z, sigma):
        z_in, s_in = model_call(z, sigma)
        return model(z_in, s_in, **extra_args).to(z.dtype)

    def uncond_denoise(z, sigma):
        z_in, s_in = model_call(z, sigma)
        out = comfy.samplers.calc_cond_batch(base, [guider.conds["negative"]], z_in, s_in,
                                             extra_args.get("model_options", {}))[0]
        return out.to(z.dtype)

    def loss_fn(x0_hat):
        images = decode_differentiable(vae, base.latent_format, x0_hat.to(x.dtype),
                                       checkpoint=decoder_checkpointing)
        return scorer.loss(images, crops, gen)

    try:
        with torch.inference_mode(False):
            s = sigmas.detach().clone().to(device)
            if variant == "official":
                c_in = functools.partial(model_input_scale, base.model_sampling)
                guided = one_step_guided_denoiser(denoise, loss_fn, float(scale),
                                                  estimate=official_estimate(uncond_denoise, c_in))
                return _edict_guided(guided, x, s, p, leapfrog, c_in, callback)
            return _euler_guided(one_step_guided_denoiser(denoise, loss_fn, float(scale)), x, s, callback)
    except RuntimeError as exc:
        clear = explain_inplace_error(exc, base, "One-step guidance")
        if clear is None:
            raise
        raise clear from exc


def _with_differentiable_attention(extra_args: dict, diffusion_model=None) -> dict:
    """``extra_args`` whose model options route memory-chunked attention to a differentiable one
    (``safety.differentiable_attention_override``) and replace Flux's in-place blocks with
    differentiable ones (``inplace_blocks.py``; blocks another patch replaces are left alone) for
    the guided calls."""
    override = differentiable_attention_override()
    blocks = {} if diffusion_model is None else differentiable_flux_blocks(diffusion_model)
    if override is None and not blocks:
        return extra_args
    options = dict(extra_args.get("model_options") or {})
    transformer = dict(options.get("transformer_options") or {})
    if override is not None:
        transformer.setdefault("optimized_attention_override", override)
    if blocks:
        replace = dict(transformer.get("patches_replace") or {})
        dit = dict(replace.get("dit") or {})
        for key, fn in blocks.items():
            dit.setdefault(key, fn)
        replace["dit"] = dit
        transformer["patches_replace"] = replace
    options["transformer_options"] = transformer
    return {**extra_args, "model_options": options}


def _euler_guided(guided, x, s, callback):
    z = x.detach().clone()
    for i in range(len(s) - 1):
        den = guided(z, s[i])
        d = (z - den.to(z.dtype)) / s[i]
        if callback is not None:
            callback({"x": z, "i": i, "sigma": s[i], "sigma_hat": s[i], "denoised": den})
        z = z + (s[i + 1] - s[i]) * d
    return z


def _edict_guided(guided, x, s, p, leapfrog, c_in, callback):
    last = {}

    def remember(z, sigma):
        last["denoised"] = out = guided(z, sigma)
        return out

    def step_cb(i, total, xs, ys):
        if callback is not None:
            callback({"x": xs.to(x.dtype), "i": i, "sigma": s[i], "sigma_hat": s[i],
                      "denoised": last["denoised"].to(x.dtype)})

    x64 = x.detach().to(torch.float64)
    x0, _ = edict_sample(remember, x64, x64.clone(), s, p=p, leapfrog=leapfrog, callback=step_cb,
                         input_scale=c_in)
    return x0.to(x.dtype)


def one_step_guidance_sampler(vae, scorer, scale: float, crops: CropConfig, seed: int = 0,
                              decoder_checkpointing: bool = False, variant: str = "cfg_x0_euler",
                              p: float = 0.93, leapfrog: bool = True) -> comfy.samplers.KSAMPLER:
    if variant not in BASELINE_VARIANTS:
        raise ValueError(f"variant must be one of {BASELINE_VARIANTS}, got {variant!r}")
    return comfy.samplers.KSAMPLER(sample_one_step_guidance, {
        "vae": vae, "scorer": scorer, "scale": scale, "crops": crops, "seed": seed,
        "decoder_checkpointing": decoder_checkpointing, "variant": variant, "p": p,
        "leapfrog": leapfrog})
