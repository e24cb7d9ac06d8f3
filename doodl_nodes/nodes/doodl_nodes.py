"""DOODL nodes: the optimizer, and the one-step guidance baseline as a SAMPLER."""
from __future__ import annotations

import json

from ..bridge.doodl_run import SCORE_IMAGES, DoodlRequest, run_doodl
from ..bridge.guidance_sampler import BASELINE_VARIANTS, one_step_guidance_sampler
from ..bridge.progress import json_safe
from ..core.chains import CHAINS
from ..core.crops import CropConfig
from ..core.optimize import DoodlConfig
from . import common as c


class DOODLOptimize:
    DESCRIPTION = (
        "DOODL: optimizes the starting noise so that the final decoded image scores well, by "
        "backpropagating the scorer's loss on the decoded pixels through the whole EDICT chain "
        "(constant memory in the number of steps). Each iteration costs about 3x one EDICT sampling "
        "run. Generate from a seed and an empty latent, or edit an EDICT pair from EDICT Inversion. "
        "Shows the loss and a preview every iteration; can be cancelled at any time.")
    CATEGORY = c.CATEGORY
    RETURN_TYPES = ("LATENT", "LATENT", "IMAGE", "IMAGE", "STRING", "EDICT_LATENT", "NOISE")
    RETURN_NAMES = ("latent", "best_latent", "iterates", "loss_plot", "loss_history", "best_edict_latent",
                    "noise")
    OUTPUT_TOOLTIPS = (
        "The image latent after the last update.",
        "The latent of the best-scoring iterate (lowest loss).",
        "A strip of decoded iterates, left to right (up to 'strip_frames').",
        "The loss per iteration (best iterate circled).",
        "JSON with the losses, best iteration, final scores and, with a monitor, its loss and scores "
        "per iteration.",
        "The best EDICT pair (or the best latent of the euler chain): regenerate it with EDICT "
        "Generate, or continue optimizing.",
        "The best iterate's starting noise (unit variance), for SamplerCustomAdvanced: sample it with "
        "another model of the same latent space (e.g. optimize on SDXL-Turbo, sample with SDXL). "
        "Empty with start_step > 0.",
    )
    FUNCTION = "optimize"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        d = DoodlConfig()
        return {"required": {
            "model": c.MODEL,
            "vae": ("VAE", {"tooltip": "The model's VAE; decoding is differentiable (never tiled)."}),
            "positive": c.POSITIVE, "negative": c.NEGATIVE, "cfg": c.CFG, "sigmas": c.SIGMAS,
            "scorer": c.SCORER, "seed": c.SEED,
            "iterations": ("INT", {"default": d.iterations, "min": 0, "max": 1000,
                                   "tooltip": "Optimization steps (the paper uses 10-50; momentum needs ~10 to act)."}),
            "lr": ("FLOAT", {"default": d.lr, "min": 0.0, "max": 1000.0, "step": 0.01,
                             "tooltip": "Learning rate (the paper's lambda, official grad_scale): multiplies "
                                        "the loss before clipping."}),
            "momentum": ("FLOAT", {"default": d.momentum, "min": 0.0, "max": 0.999, "step": 0.01,
                                   "tooltip": "Momentum of the update (0.9 in the paper)."}),
            "clip": ("FLOAT", {"default": d.clip, "min": 0.0, "max": 1.0, "step": 0.0001, "round": False,
                               "tooltip": "Element-wise gradient clip on the unit-variance noise (1e-3 in the "
                                          "paper). 0 disables clipping."}),
            "perturbation": ("FLOAT", {"default": d.perturbation, "min": 0.0, "max": 1.0, "step": 0.0001,
                                       "round": False,
                                       "tooltip": "Std of the Gaussian noise added each update (1e-4 in the paper)."}),
            "renormalize": ("BOOLEAN", {"default": d.renormalize,
                                        "tooltip": "Keep the noise on its initial norm (the 'Gaussian shell'). Turn "
                                                   "off when editing an inverted image."}),
            "tie_latents": ("BOOLEAN", {"default": d.tie_latents,
                                        "tooltip": "Average the EDICT pair after each update (x = y). Turn off when "
                                                   "editing an inverted image (the pair differs)."}),
            "start_step": ("INT", {"default": d.start_step, "min": 0, "max": 10000,
                                   "tooltip": "Optimize the latent after this many denoising steps instead of the "
                                              "starting noise (cheaper, changes less). 0 = the noise."}),
            "grad_mode": (["checkpoint", "reversible"], {"default": d.grad_mode,
                          "tooltip": "checkpoint: keep each step's input (a few KB) and recompute; reversible: "
                                     "rebuild inputs with the EDICT inverse (2 more model calls per step)."}),
            "num_crops": c.NUM_CROPS, "cut_power": c.CUT_POWER, "crop_reduction": c.CROP_REDUCTION,
            "score_images": (list(SCORE_IMAGES), {"default": "both",
                             "tooltip": "Which EDICT outputs are decoded and scored: both (official), x only, or "
                                        "the mean of the pair (one decode: faster, less memory)."}),
            "precision": (["bf16", "fp32"], {"default": "bf16",
                          "tooltip": "Dtype of the differentiable pass. bf16 is fast; fp32 is exact but uses "
                                     "more memory on fp16/bf16 models. fp16 gradients underflow, so it is not offered."}),
        }, "optional": {
            "latent": c.LATENT_SIZE,
            "edict_latent": c.EDICT_LATENT,
            "p": c.P, "leapfrog": c.LEAPFROG,
            "decoder_checkpointing": ("BOOLEAN", {"default": True,
                                      "tooltip": "Activation checkpointing of the VAE decoder and the scorer networks: "
                                                 "their layers are recomputed in the backward pass instead of kept. "
                                                 "Same values; measured on SD1.5 512x512 (H200): 15.2 -> 6.6 GiB for "
                                                 "about 2 % more time. Off keeps everything (only where memory is "
                                                 "plentiful); the memory plan turns it on anyway when memory is short."}),
            "strip_frames": ("INT", {"default": 8, "min": 1, "max": 64,
                                     "tooltip": "How many iterates the 'iterates' strip shows."}),
            "chain": (list(CHAINS), {"default": "edict",
                      "tooltip": "edict: the paper's exactly invertible pair (2 model calls per step; needs at "
                                 "least 2 steps; edits inverted images). euler: one latent, plain Euler/DDIM "
                                 "steps (1 model call per step, works from 1 step: the sampler few-step models "
                                 "such as SDXL-Turbo and Flux-schnell are made for; no editing of inversions). "
                                 "With euler, p, leapfrog, tie_latents and score_images do nothing."}),
            "monitor": (c.SCORER[0], {"tooltip": "Optional held-out scorer (or DOODL Combine Scorers): scored on "
                                                 "the whole decoded image every iteration but never "
                                                 "differentiated. Its loss and scores go into the loss history, "
                                                 "the live view (second curve) and the summary, so you see when "
                                                 "the optimized reward rises while others fall (reward hacking)."}),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    def optimize(self, model, vae, positive, negative, cfg, sigmas, scorer, seed, iterations, lr, momentum,
                 clip, perturbation, renormalize, tie_latents, start_step, grad_mode, num_crops, cut_power,
                 crop_reduction, score_images, precision, latent=None, edict_latent=None, p=0.93,
                 leapfrog=True, decoder_checkpointing=True, strip_frames=8, chain="edict", monitor=None,
                 unique_id=None):
        config = DoodlConfig(iterations=iterations, lr=lr, momentum=momentum, clip=clip,
                             perturbation=perturbation, renormalize=renormalize, tie_latents=tie_latents,
                             p=p, leapfrog=leapfrog, grad_mode=grad_mode, seed=seed, start_step=start_step,
                             chain=chain)
        request = DoodlRequest(config=config, crops=CropConfig(num_crops, cut_power, crop_reduction),
                               score_images=score_images, precision=precision,
                               decoder_checkpointing=decoder_checkpointing, strip_frames=strip_frames,
                               node_id=unique_id, monitor=monitor)
        out = run_doodl(model, vae, positive, negative, cfg, sigmas, scorer, request,
                        edict_latent=edict_latent, latent=latent, seed=seed)
        base = {k: v for k, v in (latent or {}).items() if k not in ("samples", "noise_mask")}
        # json_safe: NaN/inf become null (browsers cannot parse NaN in websocket messages)
        summary = {"best_iteration": out.best_iteration, "best_loss": out.best_loss,
                   "final_loss": out.final_loss, "status": out.status, "scores": out.scores,
                   "warnings": out.warnings, "memory": out.memory}
        if out.monitor is not None:
            summary["monitor"] = {"name": out.monitor["name"],
                                  "best": _at(out.monitor, out.best_iteration),
                                  "last": _at(out.monitor, len(out.monitor["losses"]) - 1)}
        summary = json_safe(summary)
        history = {"losses": json_safe(out.losses), **summary}
        if out.monitor is not None:
            history["monitor"] = json_safe(out.monitor)
        ui = {"doodl_losses": history["losses"], "doodl_summary": [summary]}
        if out.monitor is not None:
            ui["doodl_monitor"] = json_safe(out.monitor["losses"])
        result = ({**base, "samples": out.final}, {**base, "samples": out.best}, out.strip, out.plot,
                  json.dumps(history), out.best_pair, out.noise)
        return {"ui": ui, "result": result}


def _at(monitor: dict, i: int):
    """The monitor's loss and scores at iteration ``i`` (None past the recorded ones)."""
    if not 0 <= i < len(monitor["losses"]):
        return None
    return {"iteration": i, "loss": monitor["losses"][i], "scores": monitor["scores"][i]}


class DOODLOneStepGuidance:
    DESCRIPTION = ("The paper's baseline as a sampler: at every step, decode a one-step x0 estimate, score "
                   "it, and add the scorer's gradient to the denoising direction (classifier guidance "
                   "without a noise-aware classifier). Two variants: the pack's (the CFG x0 estimate, "
                   "Euler steps) and the released DOODL code's (x0 from the unconditional prediction "
                   "blended with the noisy input, EDICT steps). Plug into SamplerCustom to compare with "
                   "DOODL from the same seed.")
    CATEGORY = c.CATEGORY + "/sampling"
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("A guided sampler (Euler/DDIM or EDICT, by variant); plug into SamplerCustom.",)
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "vae": ("VAE", {"tooltip": "The model's VAE, used to decode the one-step estimate."}),
            "scorer": c.SCORER,
            "guidance_scale": ("FLOAT", {"default": 30.0, "min": 0.0, "max": 100000.0, "step": 0.1,
                               "tooltip": "Strength of the gradient (the paper's lambda; it uses 30 for CLIP "
                                          "text). 0 is plain Euler sampling."}),
            "num_crops": c.NUM_CROPS, "cut_power": c.CUT_POWER, "crop_reduction": c.CROP_REDUCTION,
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                             "tooltip": "Seed of the random crops."}),
        }, "optional": {
            "decoder_checkpointing": ("BOOLEAN", {"default": False,
                                      "tooltip": "Recompute the VAE decoder in backward to save memory."}),
            "variant": (list(BASELINE_VARIANTS), {"default": "cfg_x0_euler",
                        "tooltip": "cfg_x0_euler: score the guided call's own CFG x0 estimate, Euler (DDIM) "
                                   "steps, one model call with grad per step. official: the released DOODL "
                                   "code's baseline: x0 from the unconditional (negative) prediction blended "
                                   "with the noisy input, EDICT steps with both model calls guided (about 3x "
                                   "the cost; needs a negative conditioning)."}),
            "p": c.P, "leapfrog": c.LEAPFROG,
        }}

    def get_sampler(self, vae, scorer, guidance_scale, num_crops, cut_power, crop_reduction, seed,
                    decoder_checkpointing=False, variant="cfg_x0_euler", p=0.93, leapfrog=True):
        return (one_step_guidance_sampler(vae, scorer, guidance_scale,
                                          CropConfig(num_crops, cut_power, crop_reduction), seed,
                                          decoder_checkpointing, variant, float(p), bool(leapfrog)),)


NODE_CLASS_MAPPINGS = {"DOODLOptimize": DOODLOptimize, "DOODLOneStepGuidance": DOODLOneStepGuidance}
NODE_DISPLAY_NAME_MAPPINGS = {"DOODLOptimize": "DOODL Optimize",
                              "DOODLOneStepGuidance": "DOODL One-Step Guidance (baseline)"}
