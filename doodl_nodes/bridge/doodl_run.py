"""DOODL on a ComfyUI model: the objective (decode + score), progress/previews, and the outputs.

The optimization itself is ``doodl_nodes.core.optimize.doodl_optimize``; this module only connects
it to ComfyUI: the denoiser comes from ``chain.run_in_guider`` (CFG batched by the guider), the
differentiable decode from ``vae.decode_differentiable``, and the loss from a DOODL_SCORER.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Optional

import torch

import comfy.model_management

from ..core.crops import CropConfig
from ..core.edict import edict_sample
from ..core.optimize import DoodlConfig, IterationInfo, doodl_optimize
from .chain import ChainModel, model_fingerprint, run_in_guider
from .edict_latent import EdictLatent
from .edict_ops import check_latent_fits, check_sigmas, seed_noise
from .progress import Progress, send_event
from .render import image_strip, loss_plot
from .vae import check_vae_matches, decode_differentiable

__all__ = ["SCORE_IMAGES", "DoodlRequest", "DoodlOutputs", "DoodlOutOfMemory", "run_doodl", "OOM_HELP",
           "release_scorer"]

log = logging.getLogger("doodl")

SCORE_IMAGES = ("both", "x", "mean")
OOM_HELP = ("To use less memory: lower num_crops, use a smaller image, enable decoder_checkpointing, "
            "set score_images to 'x' or 'mean' (one decode instead of two), or use "
            "grad_mode 'reversible' with fewer steps.")


class DoodlOutOfMemory(RuntimeError):
    """Out of memory during DOODL; the message lists the knobs that reduce memory."""


def release_scorer(scorer) -> None:
    """Move the scorer's own models back to the offload device (ComfyUI manages its own models):
    a cached scorer must not keep GPU memory outside ComfyUI's model management between runs."""
    try:
        scorer.to(comfy.model_management.unet_offload_device())
    finally:
        comfy.model_management.soft_empty_cache()


@dataclass
class DoodlRequest:
    config: DoodlConfig = field(default_factory=DoodlConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    score_images: str = "both"     # "both" EDICT images (official), "x" only, or the "mean" latent
    precision: str = "bf16"
    decoder_checkpointing: bool = False
    strip_frames: int = 8
    node_id: Optional[str] = None


@dataclass
class DoodlOutputs:
    final: torch.Tensor            # VAE-space latent of the final pair's x0
    best: torch.Tensor             # VAE-space latent of the best pair's x0
    strip: torch.Tensor            # IMAGE (1, H, W, 3)
    plot: torch.Tensor             # IMAGE (1, H, W, 3)
    losses: list[float]
    best_loss: float
    final_loss: Optional[float]
    best_iteration: int
    best_pair: EdictLatent
    status: str
    warnings: list[str]
    scores: dict[str, float]


def _scored_latents(x0, y0, which: str):
    if which == "both":
        return torch.cat([x0, y0], dim=0)
    if which == "x":
        return x0
    return (x0 + y0) / 2


def run_doodl(model, vae, positive, negative, cfg: float, sigmas: torch.Tensor, scorer,
              request: DoodlRequest, *, edict_latent: Optional[EdictLatent] = None,
              latent: Optional[dict] = None, seed: int = 0) -> DoodlOutputs:
    """Validate everything cheap first, then optimize inside the guider."""
    sig64 = check_sigmas(sigmas)
    if request.score_images not in SCORE_IMAGES:
        raise ValueError(f"score_images must be one of {SCORE_IMAGES}, got {request.score_images!r}")
    if scorer is None or not hasattr(scorer, "loss"):
        raise ValueError("The scorer input must be a DOODL_SCORER (e.g. from DOODL CLIP Text Scorer).")
    latent_format = model.get_model_object("latent_format")
    check_vae_matches(vae, latent_format)
    if edict_latent is None:
        if latent is None:
            raise ValueError("Connect a latent (e.g. EmptyLatentImage) for the size, or an edict_latent to edit.")
        check_latent_fits(model, latent["samples"])
        noise = seed_noise(model, latent, seed)
        shape, start = noise.shape, 0
        cfg_run = request.config
    else:
        shape = edict_latent.x.shape
        start = edict_latent.start_index(sig64)
        cfg_run = replace(request.config, p=edict_latent.p, leapfrog=edict_latent.leapfrog)
    steps = sig64.numel() - 1 - start
    cfg_run.validate(steps)
    opt_steps = steps - cfg_run.start_step
    score_n = 2 if request.score_images == "both" else 1
    frames: list[tuple[int, torch.Tensor]] = []
    state = {"images": None, "scores": {}}

    def fn(chain: ChainModel):
        device = chain.device
        model_key = model_fingerprint(chain.base_model)
        chain_sigmas = chain.sigmas[start:]
        if edict_latent is None:
            x = chain.initial_latent(noise)
            y = None
        else:
            edict_latent.check_model(model_key)
            x, y = edict_latent.x.to(device), edict_latent.y.to(device)
        scorer.to(device)
        gen = torch.Generator(device="cpu").manual_seed(int(cfg_run.seed) + 1)

        def objective(x0, y0):
            lat = _scored_latents(x0, y0, request.score_images)
            images = decode_differentiable(vae, chain.latent_format, lat,
                                           checkpoint=request.decoder_checkpointing)
            loss = scorer.loss(images, request.crops, gen)
            state["images"] = images.detach()
            # mean over the scored EDICT images, sum over the batch (independent samples)
            return loss.reshape(score_n, -1).mean(0).sum()

        total = cfg_run.iterations * 2 * opt_steps  # forward + backward walk per iteration
        progress = Progress(total, request.node_id)

        def on_step(phase, k, n):
            progress.step()

        def on_iteration(info: IterationInfo):
            images = state["images"]
            with torch.no_grad():
                scores = {k: float(v.float().mean()) for k, v in scorer.scores(images).items()}
            state["scores"] = scores
            frames.append((info.iteration, _thumbnail(images[0])))
            progress.preview(images[:1])
            send_event("doodl.iteration", {
                "iteration": info.iteration, "iterations": info.iterations, "loss": info.loss,
                "best_loss": info.best_loss, "grad_norm": info.grad_norm, "scores": scores,
            }, request.node_id)
            log.info("DOODL iteration %d/%d loss %.5f (best %.5f) %s", info.iteration + 1,
                     info.iterations, info.loss, info.best_loss,
                     " ".join(f"{k}={v:.4f}" for k, v in scores.items()))
            return False

        try:
            result = doodl_optimize(chain.denoise, objective, x, chain_sigmas, cfg_run, y=y,
                                    callback=on_iteration, noise_scale=chain.noise_scale,
                                    step_callback=on_step, start_index=start,
                                    input_scale=chain.input_scale)
        except torch.cuda.OutOfMemoryError as exc:
            oom = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
        else:
            oom = None
        if oom is not None:  # outside the except block, so the exception's frames can be freed
            state["images"] = None
            comfy.model_management.soft_empty_cache(True)
            raise DoodlOutOfMemory(f"DOODL ran out of memory ({oom}). {OOM_HELP}")
        if not result.losses and result.status == "nonfinite":
            raise RuntimeError("DOODL: the loss or gradient was NaN/inf at the very first iteration, "
                               "so there is no usable iterate. " + " ".join(result.warnings))
        final_x0 = result.final_x0
        if final_x0 is None:  # iterations == 0 or evaluate_final off: one forward pass
            with torch.no_grad():
                final_x0, _ = edict_sample(chain.denoise, result.x, result.y, result.sigmas,
                                           p=cfg_run.p, leapfrog=cfg_run.leapfrog,
                                           start_index=start + cfg_run.start_step,
                                           input_scale=chain.input_scale)
        best_x0 = result.best_x0 if result.best_x0 is not None else final_x0
        pair = EdictLatent(result.best_x.detach().cpu(), result.best_y.detach().cpu(),
                           result.sigmas.detach().to("cpu", torch.float64), cfg_run.p,
                           cfg_run.leapfrog, model_key, "doodl")
        out = (chain.base_model.process_latent_out(final_x0.float()).cpu(),
               chain.base_model.process_latent_out(best_x0.float()).cpu(), result, pair)
        return out

    extra_patchers = [vae.patcher] + list(scorer.comfy_models())
    extra_modules = [vae.first_stage_model] + list(scorer.modules())
    try:
        final, best, result, pair = run_in_guider(
            model, positive, negative, cfg, sigmas, shape, fn, grad=True, precision=request.precision,
            extra_patchers=extra_patchers, extra_modules=extra_modules, seed=seed, what="DOODL")
    finally:
        state["images"] = None
        release_scorer(scorer)

    for w in result.warnings:
        log.warning("DOODL: %s", w)
    strip = image_strip(_pick_frames(frames, request.strip_frames, result.best_iteration))
    plot = loss_plot(result.losses + ([result.final_loss] if result.final_loss is not None else []),
                     result.best_iteration)
    best_loss = result.best_loss if math.isfinite(result.best_loss) else float("nan")
    send_event("doodl.done", {"losses": result.losses, "best_iteration": result.best_iteration,
                              "best_loss": best_loss, "final_loss": result.final_loss,
                              "status": result.status, "warnings": result.warnings,
                              "scores": state["scores"]}, request.node_id)
    return DoodlOutputs(final, best, strip, plot, list(result.losses), best_loss,
                        result.final_loss, result.best_iteration, pair, result.status, list(result.warnings),
                        dict(state["scores"]))


def _pick_frames(frames, n: int, best_iteration: int):
    if not frames:
        return []
    n = max(1, n)
    if len(frames) <= n:
        chosen = frames
    else:
        idx = sorted({round(i * (len(frames) - 1) / (n - 1)) for i in range(n)} if n > 1 else {len(frames) - 1})
        chosen = [frames[i] for i in idx]
    return [f for _, f in chosen]


def _thumbnail(image_chw: torch.Tensor, height: int = 256) -> torch.Tensor:
    img = image_chw.detach().float().unsqueeze(0)
    if img.shape[-2] > height:
        w = max(1, round(img.shape[-1] * height / img.shape[-2]))
        img = torch.nn.functional.interpolate(img, size=(height, w), mode="area")
    return img[0].clamp(0, 1).cpu()
