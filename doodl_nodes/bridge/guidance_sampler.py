"""The paper's baseline as a ComfyUI sampler: one-step classifier guidance.

At every step the guided denoiser of ``doodl_nodes.core.guidance`` scores the decoded one-step x0
estimate and shifts the denoised output by ``-scale * sigma**2 * grad``; a deterministic Euler (DDIM)
step follows. Exposed through ``comfy.samplers.KSAMPLER`` so it plugs into SamplerCustom and
SamplerCustomAdvanced like any sampler.
"""
from __future__ import annotations

import torch

import comfy.model_management
import comfy.samplers

from ..core.crops import CropConfig
from ..core.guidance import one_step_guided_denoiser
from .autograd import clone_tensor_tree, make_autograd_safe
from .doodl_run import release_scorer
from .safety import check_gradient_safe
from .vae import check_vae_matches, decode_differentiable

__all__ = ["one_step_guidance_sampler"]


def _base_model(model_k):
    # KSamplerX0Inpaint -> CFGGuider -> BaseModel
    return model_k.inner_model.inner_model


def sample_one_step_guidance(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                             vae=None, scorer=None, scale=1.0, crops=CropConfig(), seed=0,
                             decoder_checkpointing=False):
    extra_args = {} if extra_args is None else extra_args
    base = _base_model(model)
    guider = model.inner_model
    check_gradient_safe(guider.model_patcher, "One-step guidance")
    check_vae_matches(vae, base.latent_format)
    comfy.model_management.load_models_gpu([vae.patcher] + list(scorer.comfy_models()))
    device = x.device
    scorer.to(device)
    make_autograd_safe([base, vae.first_stage_model] + list(scorer.modules()))
    guider.conds = clone_tensor_tree(guider.conds)  # inference-tensor conds cannot be saved for backward
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 1)

    def denoise(z, sigma):
        comfy.model_management.throw_exception_if_processing_interrupted()
        s_in = sigma.reshape(1).to(z.dtype).expand(z.shape[0])
        return model(z, s_in, **extra_args)

    def loss_fn(x0_hat):
        images = decode_differentiable(vae, base.latent_format, x0_hat, checkpoint=decoder_checkpointing)
        return scorer.loss(images, crops, gen)

    guided = one_step_guided_denoiser(denoise, loss_fn, float(scale))
    try:
        with torch.inference_mode(False):
            z = x.detach().clone()
            s = sigmas.detach().clone().to(device)
            for i in range(len(s) - 1):
                den = guided(z, s[i])
                d = (z - den.to(z.dtype)) / s[i]
                if callback is not None:
                    callback({"x": z, "i": i, "sigma": s[i], "sigma_hat": s[i], "denoised": den})
                z = z + (s[i + 1] - s[i]) * d
    finally:
        release_scorer(scorer)
    return z


def one_step_guidance_sampler(vae, scorer, scale: float, crops: CropConfig, seed: int = 0,
                              decoder_checkpointing: bool = False) -> comfy.samplers.KSAMPLER:
    return comfy.samplers.KSAMPLER(sample_one_step_guidance, {
        "vae": vae, "scorer": scorer, "scale": scale, "crops": crops, "seed": seed,
        "decoder_checkpointing": decoder_checkpointing})
