"""EDICT generation and inversion on ComfyUI models (what the EDICT nodes and sampler call)."""
from __future__ import annotations

import functools
from typing import Optional

import torch

import comfy.sample

from ..core.edict import edict_invert, edict_sample, validate_chain
from ..core.euler import euler_sample
from .chain import ChainModel, model_fingerprint, model_input_float32, model_input_scale, run_in_guider
from .edict_latent import EdictLatent
from .progress import Progress

__all__ = ["check_sigmas", "check_latent_fits", "check_chain_steps", "invert_latent", "generate_latent",
           "sample_edict", "sample_chain", "seed_noise", "EDICT_MIN_STEPS"]

#: EDICT's second call sees the first call's result at the next noise level labelled with the
#: current one; with a single step that is a finished image labelled as pure noise
EDICT_MIN_STEPS = 2


def check_sigmas(sigmas: torch.Tensor, input_name: str = "sigmas") -> torch.Tensor:
    """Validate a SIGMAS input before any model work; returns it as float64 CPU."""
    if not isinstance(sigmas, torch.Tensor):
        raise ValueError(f"The {input_name} input must be SIGMAS (a 1-D tensor), got {type(sigmas).__name__}.")
    with torch.inference_mode(False):
        s = sigmas.detach().to("cpu", torch.float64).clone()
    probe = torch.zeros(1, dtype=torch.float64)
    try:
        validate_chain(probe, probe, s, 0.5)
    except ValueError as exc:
        raise ValueError(f"The {input_name} input is not usable: {exc}. Connect a scheduler node "
                         "(e.g. BasicScheduler) with at least 1 step and denoise > 0.") from None
    return s


def check_chain_steps(chain: str, steps: int, what: str = "EDICT") -> None:
    """Refuse an EDICT chain too short to work (a clear error naming the fix)."""
    if chain == "edict" and steps < EDICT_MIN_STEPS:
        raise ValueError(
            f"{what}: the EDICT chain needs at least {EDICT_MIN_STEPS} sampling steps, got {steps} (its "
            "second model call sees the first call's result at the next noise level; after a single "
            "step that is a finished image presented as noise). For one-step and few-step models "
            "(SD-Turbo, SDXL-Turbo, Flux-schnell) set chain to 'euler', or use more steps.")


def sample_chain(chain: "ChainModel", config, pair, sigmas: torch.Tensor, start_index: int) -> torch.Tensor:
    """x0 of ``pair`` through the chain ``config.chain`` ("edict" or "euler") of this model."""
    if config.chain == "euler":
        return euler_sample(chain.denoise, pair[0], sigmas)
    x0, _ = edict_sample(chain.denoise, pair[0], pair[1], sigmas, p=config.p, leapfrog=config.leapfrog,
                         start_index=start_index, input_scale=chain.input_scale)
    return x0


def check_latent_fits(model, samples: torch.Tensor, input_name: str = "latent") -> None:
    """Refuse latents whose channel count or dimensionality does not fit the model."""
    latent_format = model.get_model_object("latent_format")
    want = latent_format.latent_channels
    if samples.dim() != 4:
        raise ValueError(f"The {input_name} input has shape {tuple(samples.shape)}; EDICT/DOODL need "
                         "image latents (B, C, H, W).")
    if samples.shape[1] != want and bool(torch.count_nonzero(samples)):
        raise ValueError(f"The {input_name} input has {samples.shape[1]} channels but this model works "
                         f"on {want}-channel latents ({type(latent_format).__name__}). Encode the image "
                         "with this model's VAE.")
    if min(samples.shape[-2:]) < 2:
        raise ValueError(f"The {input_name} input is too small ({tuple(samples.shape[-2:])} latent pixels).")


def _fixed_empty(model, samples: torch.Tensor) -> torch.Tensor:
    return comfy.sample.fix_empty_latent_channels(model, samples)


def seed_noise(model, latent: dict, seed: int) -> torch.Tensor:
    """Unit noise for ``latent``'s size exactly as ComfyUI's Noise_RandomNoise(seed) draws it."""
    samples = _fixed_empty(model, latent["samples"])
    return comfy.sample.prepare_noise(samples, int(seed), latent.get("batch_index"))


def invert_latent(model, positive, negative, cfg: float, sigmas: torch.Tensor, latent: dict, *,
                  p: float = 0.93, leapfrog: bool = True, node_id: Optional[str] = None
                  ) -> tuple[EdictLatent, torch.Tensor]:
    """VAE-space LATENT -> (EdictLatent at sigmas[0], VAE-space view of x_T)."""
    check_sigmas(sigmas)
    samples = latent["samples"]
    check_latent_fits(model, samples)
    if not bool(torch.count_nonzero(samples)):
        raise ValueError("The latent input is all zeros (an empty latent). EDICT inversion needs an "
                         "encoded image: connect LoadImage -> VAEEncode.")
    steps = sigmas.numel() - 1
    check_chain_steps("edict", steps, "EDICT Inversion")

    def fn(chain: ChainModel):
        progress = Progress(steps, node_id)
        with torch.inference_mode(False):
            lat = chain.base_model.process_latent_in(samples.to(chain.device).float()).double()
        x, y = edict_invert(chain.denoise, lat, lat.clone(), chain.sigmas, p=p, leapfrog=leapfrog,
                            callback=lambda *_: progress.step(), input_scale=chain.input_scale)
        key = model_fingerprint(chain.base_model)
        view = chain.base_model.process_latent_out(x.float()).cpu()
        el = EdictLatent(x.cpu(), y.cpu(), chain.sigmas.detach().to("cpu", torch.float64), p, leapfrog,
                         key, "inversion")
        return el, view

    return run_in_guider(model, positive, negative, cfg, sigmas, samples.shape, fn, what="EDICT inversion")


def generate_latent(model, positive, negative, cfg: float, sigmas: torch.Tensor, *,
                    edict_latent: Optional[EdictLatent] = None, latent: Optional[dict] = None,
                    seed: int = 0, p: float = 0.93, leapfrog: bool = True,
                    node_id: Optional[str] = None) -> torch.Tensor:
    """EDICT generation from an EdictLatent, or from seeded noise of ``latent``'s size.
    Returns the VAE-space latent (x0 of the pair). A pair DOODL optimized through the Euler chain
    is rendered with that chain."""
    sig = check_sigmas(sigmas)
    if edict_latent is None:
        if latent is None:
            raise ValueError("Connect either an edict_latent (from EDICT Inversion) or a latent "
                             "(e.g. EmptyLatentImage) for the size.")
        check_latent_fits(model, latent["samples"])
        noise = seed_noise(model, latent, seed)
        shape = noise.shape
        p_use, lf_use, start, kind = p, leapfrog, 0, "edict"
    else:
        shape = edict_latent.x.shape
        p_use, lf_use, kind = edict_latent.p, edict_latent.leapfrog, edict_latent.chain
        start = edict_latent.start_index(sig)
    check_chain_steps(kind, sig.numel() - 1 - start, "EDICT Generate")

    def fn(chain: ChainModel):
        chain_sigmas = chain.sigmas[start:]
        progress = Progress(chain_sigmas.numel() - 1, node_id)
        if edict_latent is None:
            x = chain.initial_latent(noise)
            y = x.clone()
        else:
            edict_latent.check_model(model_fingerprint(chain.base_model))
            x = edict_latent.x.to(chain.device)
            y = edict_latent.y.to(chain.device)
        if kind == "euler":  # a DOODL result optimized through the plain chain
            x0 = euler_sample(chain.denoise, x, chain_sigmas, callback=lambda *_: progress.step())
        else:
            x0, _ = edict_sample(chain.denoise, x, y, chain_sigmas, p=p_use, leapfrog=lf_use,
                                 callback=lambda *_: progress.step(), start_index=start,
                                 input_scale=chain.input_scale)
        return chain.base_model.process_latent_out(x0.float()).cpu()

    return run_in_guider(model, positive, negative, cfg, sigmas, shape, fn, what="EDICT generation")


def sample_edict(model, x, sigmas, extra_args=None, callback=None, disable=None, p: float = 0.93,
                 leapfrog: bool = True):
    """A k-diffusion-style sampler function (for ``comfy.samplers.KSAMPLER``): EDICT with a float64
    state, starting from ``x = y`` (the noised latent KSAMPLER built), returning x0."""
    check_chain_steps("edict", len(sigmas) - 1, "EDICT Sampler")
    extra_args = {} if extra_args is None else extra_args
    last = {}

    def denoise(z, sigma):  # float32 model call, as ChainModel.denoise (same values for both nodes)
        z_in = model_input_float32(z).to(x.dtype) if z.dtype == torch.float64 else z.to(x.dtype)
        s_in = sigma.reshape(1).to(z_in.dtype).expand(z.shape[0])
        out = model(z_in, s_in, **extra_args)
        last["denoised"] = out
        return out.to(z.dtype)

    def step_cb(i, total, xs, ys):
        if callback is not None:
            callback({"x": xs, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i],
                      "denoised": last["denoised"].to(x.dtype)})

    with torch.no_grad():  # weights may require grad; EDICT sampling never needs it
        x64 = x.detach().to(torch.float64)
        # model: KSamplerX0Inpaint -> guider -> BaseModel
        c_in = functools.partial(model_input_scale, model.inner_model.inner_model.model_sampling)
        x0, _ = edict_sample(denoise, x64, x64.clone(), sigmas, p=p, leapfrog=leapfrog, callback=step_cb,
                             input_scale=c_in)
    return x0.to(x.dtype)
