"""DOODL on a ComfyUI model: the objective (decode + score), progress/previews/monitor, and outputs.

The optimization itself is ``doodl_nodes.core.optimize.doodl_optimize``; this module only connects
it to ComfyUI: the denoiser comes from ``chain.run_in_guider`` (CFG batched by the guider), the
differentiable decode from ``vae.decode_differentiable``, and the loss from a DOODL_SCORER. The run
is split into named pieces: :func:`_plan` (validate cheaply, decide where the chain starts),
:class:`DecodeObjective` (decode + score), :class:`IterationReporter` (progress, previews, live
view events, the held-out monitor), :func:`_optimize` (inside the guider) and :func:`_outputs`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Optional

import torch

import comfy.model_management

from ..core.checkpointing import checkpointed_blocks
from ..core.crops import CropConfig
from ..core.optimize import DoodlConfig, DoodlResult, IterationInfo, doodl_optimize
from .chain import ChainModel, cuda_graphs_enabled, model_fingerprint, run_in_guider
from .edict_latent import EdictLatent
from .memory_plan import (MemoryNeeds, MemoryPlan, available_memory, latent_pixels, module_params,
                          patcher_bytes, plan_memory)
from .edict_ops import check_chain_steps, check_latent_fits, check_sigmas, sample_chain, seed_noise
from .inplace_blocks import explain_inplace_error
from .optimized_noise import OptimizedNoise
from .progress import Progress, send_event
from .render import image_strip, loss_plot
from .scorer_models import patchers_for
from .vae import check_vae_matches, decode_differentiable

__all__ = ["SCORE_IMAGES", "DoodlRequest", "DoodlOutputs", "DoodlOutOfMemory", "run_doodl", "OOM_HELP",
           "DecodeObjective", "IterationReporter"]

log = logging.getLogger("doodl")

SCORE_IMAGES = ("both", "x", "mean")
OOM_HELP = ("To use less memory: lower num_crops, use a smaller image, enable decoder_checkpointing (decoder "
            "and scorer), "
            "set score_images to 'x' or 'mean' (one decode instead of two), or use "
            "grad_mode 'reversible' with fewer steps.")
#: the monitor scores the whole image, no crops: deterministic, and it draws no random numbers
MONITOR_CROPS = CropConfig(num_crops=0)


class DoodlOutOfMemory(RuntimeError):
    """Out of memory during DOODL; the message lists the knobs that reduce memory."""


@dataclass
class DoodlRequest:
    config: DoodlConfig = field(default_factory=DoodlConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    score_images: str = "both"     # "both" EDICT images (official), "x" only, or the "mean" latent
    precision: str = "bf16"
    #: activation checkpointing of the VAE decoder and of the scorer networks (same values, about
    #: 2 % more time, SD1.5 512²: 15.2 -> 6.6 GiB; benchmarks/RESULTS.md, run 5)
    decoder_checkpointing: bool = True
    strip_frames: int = 8
    node_id: Optional[str] = None
    monitor: Optional[object] = None   # a DOODL_SCORER scored every iteration, never differentiated


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
    noise: OptimizedNoise          # the best iterate's unit-variance starting noise (NOISE)
    monitor: Optional[dict] = None  # {"name", "losses", "scores"} per iteration, if a monitor ran
    memory: dict = field(default_factory=dict)  # the memory plan: available, estimate, choices


@dataclass
class _Plan:
    """Where the chain starts: seeded noise of ``shape`` (``noise``) or an EDICT pair."""

    config: DoodlConfig
    shape: tuple
    start: int                             # absolute index of the pair's sigma in SIGMAS
    opt_steps: int
    noise: Optional[torch.Tensor] = None
    edict_latent: Optional[EdictLatent] = None
    score_images: str = "both"
    memory: MemoryPlan = field(default_factory=MemoryPlan)


def _plan(model, sigmas64: torch.Tensor, request: DoodlRequest, edict_latent, latent, seed) -> _Plan:
    """Validate everything cheap before any model work."""
    config = request.config
    if edict_latent is None:
        if latent is None:
            raise ValueError("Connect a latent (e.g. EmptyLatentImage) for the size, or an edict_latent to edit.")
        check_latent_fits(model, latent["samples"])
        noise = seed_noise(model, latent, seed)
        shape, start = tuple(noise.shape), 0
    else:
        noise, shape = None, tuple(edict_latent.x.shape)
        start = edict_latent.start_index(sigmas64)
        if edict_latent.chain != config.chain:
            raise ValueError(
                f"The edict_latent input was made by the {edict_latent.chain} chain but chain is set to "
                f"{config.chain}: set chain to {edict_latent.chain} (an EDICT inversion can only be "
                "optimized through the EDICT chain, which is the one that regenerates it exactly).")
        config = replace(config, p=edict_latent.p, leapfrog=edict_latent.leapfrog)
    steps = sigmas64.numel() - 1 - start
    config.validate(steps)
    check_chain_steps(config.chain, steps - config.start_step, "DOODL")
    # the Euler chain has one output: score it once
    score_images = "x" if config.chain == "euler" else request.score_images
    return _Plan(config, shape, start, steps - config.start_step, noise, edict_latent, score_images)


def _crops_with_grad(scorer, crops: CropConfig) -> int:
    """Crops per image whose scorer activations a backward pass keeps (the best one for min)."""
    parts = [s for s, w in scorer.parts if w != 0] if hasattr(scorer, "parts") else [scorer]
    keep = 0
    for s in parts:
        if hasattr(s, "parts"):
            keep = max(keep, _crops_with_grad(s, crops))
        elif hasattr(s, "crop_reduction"):
            keep = max(keep, 1 if s.crop_reduction(crops) == "min" else max(crops.num_crops, 1))
    return keep


def _plan_memory(model, vae, scorers, request: DoodlRequest, plan: _Plan, cfg: float) -> MemoryPlan:
    """Memory-saving choices for this run (``memory_plan.py``), made before any model work."""
    device = comfy.model_management.get_torch_device()
    scorer = scorers[0]
    patchers = [model, vae.patcher] + patchers_for(scorers)
    unet = model.get_model_object("diffusion_model")
    dtype = model.model_dtype()
    graphs = device.type == "cuda" and cuda_graphs_enabled()
    copies = graphs and request.precision == "bf16" and dtype in (torch.float16, torch.float32)
    n_images = plan.shape[0] * (2 if plan.score_images == "both" else 1)
    ratio = vae.spacial_compression_decode() if hasattr(vae, "spacial_compression_decode") else 8
    needs = MemoryNeeds(
        weights=patcher_bytes(patchers), unet_params=module_params([unet]), bf16_copies=copies, cuda_graphs=graphs,
        latent_numel=latent_pixels(plan.shape), cfg_batch=1 if cfg == 1 else 2,
        image_pixels=int(plan.shape[-2] * plan.shape[-1] * ratio * ratio), images=n_images,
        scorer_params=module_params(scorer.modules()), crops=max(request.crops.num_crops, 1),
        crops_with_grad=_crops_with_grad(scorer, request.crops),
        decoder_checkpointing=request.decoder_checkpointing, scorer_checkpointing=request.decoder_checkpointing)
    return plan_memory(needs, available_memory(device), score_images=plan.score_images,
                       reduction_keeps_all=needs.crops_with_grad > 1)


def _scored_latents(x0, y0, which: str):
    if which == "both":
        return torch.cat([x0, y0], dim=0)
    if which == "x":
        return x0
    return (x0 + y0) / 2


class DecodeObjective:
    """``objective(x0, y0)``: decode the scored latents differentiably and score them; the mean over
    the scored EDICT images, summed over the batch (independent samples). Keeps the last images."""

    def __init__(self, vae, latent_format, scorer, request: DoodlRequest, plan: _Plan, seed: int):
        self.vae, self.latent_format, self.scorer = vae, latent_format, scorer
        memory = plan.memory
        self.crops = replace(request.crops, chunk=memory.crop_chunk or request.crops.chunk)
        self.checkpoint = request.decoder_checkpointing or memory.decoder_checkpointing
        self.score_images = memory.score_images or plan.score_images
        self.images: Optional[torch.Tensor] = None
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed) + 1)

    def __call__(self, x0, y0):
        lat = _scored_latents(x0, y0, self.score_images)
        images = decode_differentiable(self.vae, self.latent_format, lat, checkpoint=self.checkpoint)
        loss = self.scorer.loss(images, self.crops, self.generator)
        self.images = images.detach()
        n = 2 if self.score_images == "both" else 1
        return loss.reshape(n, -1).mean(0).sum()


def _mean_scores(scorer, images) -> dict[str, float]:
    with torch.no_grad():
        return {k: float(v.float().mean()) for k, v in scorer.scores(images).items()}


class IterationReporter:
    """Per iteration: the scorer's scores, the held-out monitor, a strip frame, the preview, the
    live-view event and a log line. The monitor is scored on the same decoded images without grad
    and without touching any random number generator, so it cannot change the trajectory."""

    def __init__(self, objective: DecodeObjective, progress: Progress, request: DoodlRequest):
        self.objective, self.progress, self.request = objective, progress, request
        self.frames: list[tuple[int, torch.Tensor]] = []
        self.scores: dict[str, float] = {}
        self.monitor = None if request.monitor is None else {
            "name": getattr(request.monitor, "name", "monitor"), "losses": [], "scores": []}

    def step(self, phase, k, n) -> None:
        self.progress.step()

    def _monitor(self, images) -> Optional[dict]:
        if self.monitor is None:
            return None
        with torch.no_grad():
            loss = float(self.request.monitor.loss(images, MONITOR_CROPS).float().mean())
        scores = _mean_scores(self.request.monitor, images)
        self.monitor["losses"].append(loss)
        self.monitor["scores"].append(scores)
        return {"loss": loss, "scores": scores}

    def final(self, result: DoodlResult) -> None:
        """Score the monitor on the final iterate too, when it was evaluated (the objective's last
        images are then the final iterate's), so its history lines up with losses + final_loss."""
        if self.monitor is not None and result.final_loss is not None and self.objective.images is not None:
            self._monitor(self.objective.images)

    def __call__(self, info: IterationInfo) -> bool:
        images = self.objective.images
        self.scores = _mean_scores(self.objective.scorer, images)
        monitor = self._monitor(images)
        self.frames.append((info.iteration, _thumbnail(images[0])))
        self.progress.preview(images[:1])
        event = {"iteration": info.iteration, "iterations": info.iterations, "loss": info.loss,
                 "best_loss": info.best_loss, "grad_norm": info.grad_norm, "scores": self.scores}
        if monitor is not None:
            event["monitor"] = monitor
        send_event("doodl.iteration", event, self.request.node_id)
        log.info("DOODL iteration %d/%d loss %.5f (best %.5f) %s%s", info.iteration + 1,
                 info.iterations, info.loss, info.best_loss,
                 " ".join(f"{k}={v:.4f}" for k, v in self.scores.items()),
                 "" if monitor is None else f" | monitor loss {monitor['loss']:.4f}")
        return False


def _optimize(chain: ChainModel, plan: _Plan, objective: DecodeObjective, reporter: IterationReporter,
              model_key: str) -> DoodlResult:
    """The run inside the guider: the starting latent(s), then ``doodl_optimize``; out of memory
    becomes :class:`DoodlOutOfMemory` with the knobs that help."""
    if plan.edict_latent is None:
        x, y = chain.initial_latent(plan.noise), None
    else:
        plan.edict_latent.check_model(model_key)
        x = plan.edict_latent.x.to(chain.device)
        y = None if plan.config.chain == "euler" else plan.edict_latent.y.to(chain.device)
    try:
        result = doodl_optimize(chain.denoise, objective, x, chain.sigmas[plan.start:], plan.config, y=y,
                                callback=reporter, noise_scale=chain.noise_scale,
                                step_callback=reporter.step, start_index=plan.start,
                                input_scale=chain.input_scale)
    except torch.cuda.OutOfMemoryError as exc:
        oom = str(exc).splitlines()[0] if str(exc) else "CUDA out of memory"
    except RuntimeError as exc:
        clear = explain_inplace_error(exc, chain.base_model)
        if clear is None:
            raise
        raise clear from exc
    else:
        oom = None
    if oom is not None:  # outside the except block, so the exception's frames can be freed
        objective.images = None
        comfy.model_management.soft_empty_cache(True)
        raise DoodlOutOfMemory(f"DOODL ran out of memory ({oom}). {OOM_HELP}")
    if not result.losses and result.status == "nonfinite":
        raise RuntimeError("DOODL: the loss or gradient was NaN/inf at the very first iteration, "
                           "so there is no usable iterate. " + " ".join(result.warnings))
    reporter.final(result)
    return result


def _latents_out(chain: ChainModel, plan: _Plan, result: DoodlResult, model_key: str):
    """VAE-space final and best latents, the best pair and the best starting noise (CPU)."""
    final_x0 = result.final_x0
    if final_x0 is None:  # iterations == 0 or evaluate_final off: one forward pass
        with torch.no_grad():
            final_x0 = sample_chain(chain, plan.config, (result.x, result.y), result.sigmas,
                                    plan.start + plan.config.start_step)
    best_x0 = result.best_x0 if result.best_x0 is not None else final_x0
    pair = EdictLatent(result.best_x.detach().cpu(), result.best_y.detach().cpu(),
                       result.sigmas.detach().to("cpu", torch.float64), plan.config.p,
                       plan.config.leapfrog, model_key, "doodl", chain=plan.config.chain)
    noise = OptimizedNoise.from_result(chain, plan, result)
    out = chain.base_model.process_latent_out
    return out(final_x0.float()).cpu(), out(best_x0.float()).cpu(), pair, noise


def run_doodl(model, vae, positive, negative, cfg: float, sigmas: torch.Tensor, scorer,
              request: DoodlRequest, *, edict_latent: Optional[EdictLatent] = None,
              latent: Optional[dict] = None, seed: int = 0) -> DoodlOutputs:
    """Validate everything cheap first, then optimize inside the guider."""
    sig64 = check_sigmas(sigmas)
    if request.score_images not in SCORE_IMAGES:
        raise ValueError(f"score_images must be one of {SCORE_IMAGES}, got {request.score_images!r}")
    for name, s in (("scorer", scorer), ("monitor", request.monitor)):
        if not hasattr(s, "loss") and (name == "scorer" or s is not None):
            raise ValueError(f"The {name} input must be a DOODL_SCORER (e.g. from DOODL CLIP Text Scorer).")
    latent_format = model.get_model_object("latent_format")
    check_vae_matches(vae, latent_format)
    plan = _plan(model, sig64, request, edict_latent, latent, seed)
    scorers = [scorer] + ([] if request.monitor is None else [request.monitor])
    plan.memory = _plan_memory(model, vae, scorers, request, plan, cfg)
    objective = DecodeObjective(vae, latent_format, scorer, request, plan, plan.config.seed)
    reporter = IterationReporter(objective, Progress(plan.config.iterations * 2 * plan.opt_steps,
                                                     request.node_id), request)

    def fn(chain: ChainModel):
        model_key = model_fingerprint(chain.base_model)
        result = _optimize(chain, plan, objective, reporter, model_key)
        return (result, *_latents_out(chain, plan, result, model_key))

    # the scorers' networks are loaded, counted and offloaded by ComfyUI with the model
    extra_patchers = [vae.patcher] + patchers_for(scorers)
    extra_modules = [vae.first_stage_model] + [m for s in scorers for m in s.modules()]
    # scorer checkpointing: patched for the whole run, since backward passes (and the crop chunks'
    # recomputations, which must replay the same checkpointed layers) run after each objective call
    try:
        with checkpointed_blocks(scorer.modules(), plan.memory.scorer_checkpointing):
            result, final, best, pair, noise = run_in_guider(
                model, positive, negative, cfg, sigmas, plan.shape, fn, grad=True, precision=request.precision,
                extra_patchers=extra_patchers, extra_modules=extra_modules, seed=seed, what="DOODL",
                bf16_copies=plan.memory.bf16_copies, cuda_graphs=plan.memory.cuda_graphs,
                model_checkpointing=plan.memory.model_checkpointing)
    finally:
        objective.images = None
    return _outputs(result, reporter, request, final, best, pair, noise, plan.memory)


def _outputs(result: DoodlResult, reporter: IterationReporter, request: DoodlRequest, final, best,
             pair: EdictLatent, noise: OptimizedNoise, memory: MemoryPlan) -> DoodlOutputs:
    for w in result.warnings:
        log.warning("DOODL: %s", w)
    strip = image_strip(_pick_frames(reporter.frames, request.strip_frames, result.best_iteration))
    plot = loss_plot(result.losses + ([result.final_loss] if result.final_loss is not None else []),
                     result.best_iteration)
    best_loss = result.best_loss if math.isfinite(result.best_loss) else float("nan")
    done = {"losses": result.losses, "best_iteration": result.best_iteration, "best_loss": best_loss,
            "final_loss": result.final_loss, "status": result.status, "warnings": result.warnings,
            "scores": reporter.scores}
    if reporter.monitor is not None:
        done["monitor"] = reporter.monitor
    send_event("doodl.done", done, request.node_id)
    warnings = list(result.warnings)
    if memory.choices:
        warnings.append("memory was short, so DOODL chose: " + ", ".join(memory.choices))
    return DoodlOutputs(final, best, strip, plot, list(result.losses), best_loss, result.final_loss,
                        result.best_iteration, pair, result.status, warnings,
                        dict(reporter.scores), noise, reporter.monitor, memory.report())


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
