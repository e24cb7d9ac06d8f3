"""Choose DOODL's memory-saving settings when the GPU is short of memory.

Before a run, the memory the run needs is estimated from the model sizes and the latent/image
sizes, and compared with what ComfyUI can give it: the free memory its ``get_free_memory`` reports
plus what its loaded models hold (it unloads them on demand), less the user's ``--reserve-vram``.
While the estimate does not fit, the savings below are switched on, in this order (measured on an
H200, SD1.5 512², T=50, the paper's aesthetic objective, reserved memory after the first iteration;
benchmarks/RESULTS.md, run 5):

1. ``decoder checkpointing``: the VAE decoder keeps only each layer's input and recomputes its
   layers in the backward pass: the same values; 17.4 -> 14.5 GiB, no measurable time (until
   2026-12-02 this patched containers the decoder never calls and saved 0.25 GiB);
2. ``scorer checkpointing``: the scorer networks' repeated layers (a ViT's transformer blocks)
   do the same (``core/checkpointing.py``); 14.5 -> 9.9 GiB, +2 % time. These two are on by
   default (the node's ``decoder_checkpointing``); the plan turns them on when a run has them off;
3. ``crop chunks``: the scorer's crops are back-propagated 4 at a time (recomputed in the
   backward pass): the same loss and gradient; after the two above 9.9 -> 9.2 GiB, +20 % time;
4. ``one scored image``: only the EDICT pair's x is decoded and scored (``score_images`` "x")
   instead of both: a different (but also the paper's) objective; 9.2 -> 7.4 GiB, no time;
5. ``no CUDA graphs``: the model runs eagerly; the graphs' private memory pools (and the bf16
   weight copies the gradient graphs run from) are not made; about 3.5 GiB at SD1.5, 4x slower;
6. ``model checkpointing``: the diffusion model's blocks keep only their inputs and recompute
   their activations in the backward pass (``model_checkpointing.py``): the same values, one
   more forward per call with gradients (SD1.5 eager: 36 s per iteration; what lets SDXL 1024²
   run on a 12 GB card: 11.8 GiB reserved, 41.5 s per iteration).

Dropping only the bf16 weight copies is not a saving while graphs are on: the gradient graph then
casts the weights under autocast inside its own pool (measured: 0.5 GiB more reserved memory).

The choices are logged and reported in the loss history (``memory``). The estimate models the
allocator's reserved memory (what a small card runs out of), not only the live tensors; a run that
still runs out of memory stops with DOODL's out-of-memory message listing the same knobs.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

import comfy.model_management

__all__ = ["MemoryPlan", "MemoryNeeds", "plan_memory", "estimate", "available_memory", "GIB",
           "CROP_CHUNK"]

log = logging.getLogger("doodl")
GIB = 1024 ** 3
CROP_CHUNK = 4

# Calibrated on an H200 (SD1.5 512², T=50, ViT-L/14 aesthetic head, 16 crops; benchmarks/RESULTS.md):
#: one CFG model call's saved activations (fwd+bwd, bf16): bytes per latent element, times the
#: diffusion model's parameter count in billions to the power CALL_PARAM_POWER (fitted to SD1.5,
#: 1.24 GiB at 64x64, and SDXL, 6.7 GiB at 128x128; the gradient walker holds one call at a time)
CALL_BYTES = 4.24e4
CALL_PARAM_POWER = 0.28
#: reserved memory of the CUDA graphs' private pools, in units of one call's activations
GRAPH_POOL_CALLS = 1.8
#: VAE decoder forward+backward, bytes per output pixel per image (checkpointed: 21 % of it, run 5)
DECODE_BYTES = 7.6e3
DECODE_CKPT_FRACTION = 0.21
#: scorer activations kept per back-propagated crop, bytes per scorer parameter
SCORER_BYTES_PER_PARAM = 0.7
#: scorer activations with its layers checkpointed, as a fraction of the plain ones (run 5)
SCORER_CKPT_FRACTION = 0.275
#: one call's activations with the model's blocks checkpointed, as a fraction of the plain call
#: (an upper bound fitted to SDXL 1024² on the emulated 12 GiB card, run 5: 11.8 GiB reserved)
MODEL_CKPT_FRACTION = 0.65
#: slack for the allocator's fragmentation, CUDA workspaces and the float64 EDICT state (the terms
#: above already model reserved memory: the SD1.5 estimates were within 3 % of the measured peaks)
SLACK = 1.0


@dataclass
class MemoryNeeds:
    """What the estimate needs to know about a run."""

    weights: int                    # bytes of every model the run loads (diffusion model, VAE, scorers)
    unet_params: int                # parameters of the diffusion model
    bf16_copies: bool               # whether the gradient graphs would run from bf16 weight copies
    cuda_graphs: bool               # whether the run would use CUDA graphs
    latent_numel: int               # elements of one model input (batch included)
    cfg_batch: int                  # 2 with CFG, 1 at cfg 1
    image_pixels: int               # H * W of one decoded image
    images: int                     # decoded images per iteration (batch x scored images)
    scorer_params: int
    crops: int                      # crops per image
    crops_with_grad: int            # crops per image whose activations are kept for backward
    decoder_checkpointing: bool
    model_checkpointing: bool = False
    scorer_checkpointing: bool = False


@dataclass
class MemoryPlan:
    available: Optional[int] = None     # bytes ComfyUI can give the run (None: not planned)
    estimate: Optional[int] = None      # bytes the run needs with the chosen settings
    choices: list = field(default_factory=list)
    crop_chunk: int = 0
    decoder_checkpointing: bool = False
    score_images: Optional[str] = None  # None: as requested
    bf16_copies: bool = True
    cuda_graphs: Optional[bool] = None  # False: the plan turned CUDA graphs off; None: as configured
    model_checkpointing: bool = False
    scorer_checkpointing: bool = False

    def report(self) -> dict:
        gib = (lambda v: None if v is None else round(v / GIB, 2))
        return {"available_gib": gib(self.available), "estimate_gib": gib(self.estimate),
                "choices": list(self.choices)}


def estimate(n: MemoryNeeds) -> int:
    """Estimated peak reserved bytes of one DOODL iteration (see the module docstring)."""
    call = CALL_BYTES * n.latent_numel * n.cfg_batch * (max(n.unet_params, 1) / 1e9) ** CALL_PARAM_POWER
    if n.model_checkpointing:
        call *= MODEL_CKPT_FRACTION
    graphs = (GRAPH_POOL_CALLS * call + (2 * n.unet_params if n.bf16_copies else 0)) if n.cuda_graphs else 0
    decode = DECODE_BYTES * n.image_pixels * n.images
    if n.decoder_checkpointing:
        decode *= DECODE_CKPT_FRACTION
    scorer = SCORER_BYTES_PER_PARAM * n.scorer_params * n.crops_with_grad * n.images
    if n.scorer_checkpointing:
        scorer *= SCORER_CKPT_FRACTION
    return int(SLACK * (n.weights + call + graphs + decode + scorer))


def available_memory(device: torch.device) -> int:
    """What ComfyUI can give a run on ``device``: its free memory plus what loaded models hold, less
    the memory the user reserved for other programs (``--reserve-vram``, which ComfyUI's own loader
    also keeps free)."""
    mm = comfy.model_management
    loaded = sum(lm.model_loaded_memory() for lm in mm.current_loaded_models
                 if getattr(lm, "device", None) == device)
    return max(0, int(mm.get_free_memory(device) + loaded - mm.extra_reserved_memory()))


def plan_memory(needs: MemoryNeeds, available: int, *, score_images: str, reduction_keeps_all: bool) -> MemoryPlan:
    """Switch savings on, in the documented order, until the estimate fits ``available``."""
    plan = MemoryPlan(available=available, decoder_checkpointing=needs.decoder_checkpointing,
                      bf16_copies=needs.bf16_copies, scorer_checkpointing=needs.scorer_checkpointing,
                      model_checkpointing=needs.model_checkpointing)
    steps = []
    if not needs.decoder_checkpointing:
        steps.append(("decoder checkpointing", lambda n: _replace(n, decoder_checkpointing=True),
                      lambda p: setattr(p, "decoder_checkpointing", True)))
    if not needs.scorer_checkpointing:
        steps.append(("scorer checkpointing", lambda n: _replace(n, scorer_checkpointing=True),
                      lambda p: setattr(p, "scorer_checkpointing", True)))
    if reduction_keeps_all and needs.crops_with_grad > CROP_CHUNK:
        steps.append(("crop chunks", lambda n: _replace(n, crops_with_grad=CROP_CHUNK),
                      lambda p: setattr(p, "crop_chunk", CROP_CHUNK)))
    if score_images == "both" and needs.images % 2 == 0:
        steps.append(("one scored image", lambda n: _replace(n, images=n.images // 2),
                      lambda p: setattr(p, "score_images", "x")))
    if needs.cuda_graphs:
        steps.append(("no CUDA graphs", lambda n: _replace(n, cuda_graphs=False, bf16_copies=False),
                      lambda p: (setattr(p, "cuda_graphs", False), setattr(p, "bf16_copies", False))))
    if not needs.model_checkpointing:  # after "no CUDA graphs": checkpointed calls run eagerly
        steps.append(("model checkpointing",
                      lambda n: _replace(n, model_checkpointing=True, cuda_graphs=False, bf16_copies=False),
                      lambda p: (setattr(p, "model_checkpointing", True), setattr(p, "cuda_graphs", False),
                                 setattr(p, "bf16_copies", False))))
    current = needs
    plan.estimate = estimate(current)
    for name, change_needs, change_plan in steps:
        if plan.estimate <= available:
            break
        current = change_needs(current)
        change_plan(plan)
        plan.choices.append(name)
        plan.estimate = estimate(current)
    if plan.choices:
        log.warning("DOODL: %.1f GiB estimated against %.1f GiB available: chose %s%s",
                    estimate(needs) / GIB, available / GIB, ", ".join(plan.choices),
                    "" if plan.estimate <= available else
                    f" (still {plan.estimate / GIB:.1f} GiB: it may run out of memory)")
    return plan


def _replace(n: MemoryNeeds, **changes) -> MemoryNeeds:
    from dataclasses import replace

    return replace(n, **changes)


def module_params(modules: Sequence[torch.nn.Module]) -> int:
    seen, total = set(), 0
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def patcher_bytes(patchers) -> int:
    return int(sum(p.model_size() for p in patchers))


def latent_pixels(shape: Sequence[int]) -> int:
    return int(math.prod(shape))
