"""Workflows for few-step and flow models (issue 14): SDXL-Turbo, Flux schnell, SDXL/Flux editing, ReNO's
noise transfer. Appended to ``specs.WORKFLOWS`` by ``specs.py`` (import ``specs`` first; this module
takes its ``Node``/``Workflow`` classes from it).

File names are the ones the model publishers use (the tests write tiny random files under these
names, ``model_files_arch.py``):

* ``models/checkpoints/sd_xl_turbo_1.0_fp16.safetensors`` (stabilityai/sdxl-turbo) and
  ``models/checkpoints/sd_xl_base_1.0.safetensors`` (stabilityai/stable-diffusion-xl-base-1.0);
* ``models/diffusion_models/flux1-schnell.safetensors`` and ``flux1-dev.safetensors``
  (black-forest-labs/FLUX.1-schnell, FLUX.1-dev), ``models/vae/ae.safetensors`` (from the same
  repositories), ``models/text_encoders/clip_l.safetensors`` and ``t5xxl_fp16.safetensors``
  (comfyanonymous/flux_text_encoders).
"""
from __future__ import annotations

from tests.workflows.specs import CLIP_G14, IMAGE, Node, Workflow, _note
from tests.workflows.model_files_arch import (CLIP_L, FLUX_DEV, FLUX_SCHNELL, FLUX_VAE, SDXL_BASE, SDXL_TURBO,
                                              T5XXL)

SCORER_NOTE = (f"- `models/doodl/clip/{CLIP_G14}`: a copy of the Hugging Face repository "
               "`laion/CLIP-ViT-g-14-laion2B-s12B-b42K` (the CLIP text scorer), or any CLIP in the dropdown\n")
FLUX_FILES = (
    f"- `models/diffusion_models/{{unet}}` ({{repo}})\n"
    f"- `models/text_encoders/{CLIP_L}` and `{T5XXL}` (comfyanonymous/flux_text_encoders; "
    "`t5xxl_fp8_e4m3fn.safetensors` works too)\n"
    f"- `models/vae/{FLUX_VAE}` (the Flux VAE from the FLUX.1 repositories)\n")
DOODL_DEFAULTS = {"control_after_generate": "fixed", "seed": 0, "num_crops": 16}


def _flux_loaders(unet: str):
    return [Node("unet", "UNETLoader", {"unet_name": unet, "weight_dtype": "default"}, col=0),
            Node("clip", "DualCLIPLoader", {"clip_name1": CLIP_L, "clip_name2": T5XXL, "type": "flux"}, col=0),
            Node("vae", "VAELoader", {"vae_name": FLUX_VAE}, col=0)]


def _doodl_outputs(prefix: str, model_vae, col: int = 4):
    return [
        Node("decode", "VAEDecode", {}, {"samples": ("doodl", 1), "vae": model_vae}, title="Decode best iterate",
             col=col),
        Node("save", "SaveImage", {"filename_prefix": prefix}, {"images": ("decode", 0)}, title="DOODL result",
             col=col + 1),
        Node("plot", "PreviewImage", {}, {"images": ("doodl", 3)}, title="Loss per iteration", col=col),
        Node("strip", "PreviewImage", {}, {"images": ("doodl", 2)}, title="Iterates (left to right)", col=col),
    ]


# ------------------------------------------------------------------------ 8. SDXL-Turbo, 1-4 steps

TURBO_PROMPT = "A red fox reading a newspaper on a park bench, autumn, photograph."

sdxl_turbo = Workflow("doodl8_sdxl_turbo_few_step", "DOODL on SDXL-Turbo: one-step noise optimization", [
    _note("note", "## DOODL on SDXL-Turbo (1-4 steps)\n\n"
          "Few-step distilled models make the whole chain one or a few model calls, so DOODL's exact "
          "gradient through it is cheap: this is the setting of ReNO (noise optimization of one-step "
          "models). The **euler** chain is the sampler SDXL-Turbo is distilled for (one latent, one model "
          "call per step); EDICT needs at least 2 steps. SDTurboScheduler gives Turbo's timesteps "
          "(1-4 steps); CFG 1 as Stability recommends (the negative prompt is then not evaluated).\n\n"
          "Settings are DOODL's (learning rate 1, clip 1e-3, perturbation 1e-4, momentum 0.9, "
          "renormalized noise, 16 crops, CLIP text scorer) with 50 iterations: each is one model call "
          "forward and one with its backward plus the decode and scorer (see the README for measured "
          "seconds per iteration). Use 512x512: SDXL-Turbo was trained at that size.\n\n"
          "**Model files** (nothing is downloaded automatically):\n\n"
          f"- `models/checkpoints/{SDXL_TURBO}` (stabilityai/sdxl-turbo)\n" + SCORER_NOTE),
    Node("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SDXL_TURBO}, col=0),
    Node("prompt", "PrimitiveStringMultiline", {"value": TURBO_PROMPT}, title="Prompt", col=0),
    Node("pos", "CLIPTextEncode", {"text": TURBO_PROMPT}, {"clip": ("ckpt", 1), "text": ("prompt", 0)},
         title="Positive", col=1, color="green"),
    Node("neg", "CLIPTextEncode", {"text": ""}, {"clip": ("ckpt", 1)}, title="Negative (unused at CFG 1)", col=1,
         color="red"),
    Node("sched", "SDTurboScheduler", {"steps": 1, "denoise": 1.0}, {"model": ("ckpt", 0)},
         title="Turbo steps (sigmas)", col=1),
    Node("latent", "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}, col=1),
    Node("scorer", "DOODLCLIPTextScorer", {"prompt": TURBO_PROMPT, "clip_model": CLIP_G14, "precision": "bf16"},
         {"prompt": ("prompt", 0)}, col=2, color="blue"),
    Node("doodl", "DOODLOptimize", {**DOODL_DEFAULTS, "cfg": 1.0, "iterations": 50, "chain": "euler"},
         {"model": ("ckpt", 0), "vae": ("ckpt", 2), "positive": ("pos", 0), "negative": ("neg", 0),
          "sigmas": ("sched", 0), "scorer": ("scorer", 0), "latent": ("latent", 0)}, col=3),
    *_doodl_outputs("DOODL/sdxl_turbo", ("ckpt", 2)),
])


# ------------------------------------------------------------------------- 9. Flux schnell, 4 steps

SCHNELL_PROMPT = "A glass teapot with a tiny galaxy swirling inside, studio photograph."

flux_schnell = Workflow("doodl9_flux_schnell_4_step", "DOODL on Flux schnell: 4-step noise optimization", [
    _note("note", "## DOODL on Flux schnell (4 steps)\n\n"
          "Flux schnell is distilled for 4 steps of the plain flow sampler: DOODL's **euler** chain "
          "(one model call per step) backpropagates the CLIP text scorer's loss through all four. "
          "CFG 1 (schnell has no guidance embedding and no negative prompt). On Flux the pack replaces "
          "ComfyUI's Flux blocks for the gradient pass with out-of-place twins (same numbers), "
          "because their in-place residual adds cannot be differentiated.\n\n"
          "Settings are DOODL's (learning rate 1, clip 1e-3, perturbation 1e-4, 16 crops) with 20 "
          "iterations, as a first try (each costs about three 4-step samplings at 1024x1024; see the "
          "README for measured seconds and memory).\n\n"
          "**Model files** (nothing is downloaded automatically):\n\n"
          + FLUX_FILES.format(unet=FLUX_SCHNELL, repo="black-forest-labs/FLUX.1-schnell") + SCORER_NOTE),
    *_flux_loaders(FLUX_SCHNELL),
    Node("prompt", "PrimitiveStringMultiline", {"value": SCHNELL_PROMPT}, title="Prompt", col=0),
    Node("pos", "CLIPTextEncode", {"text": SCHNELL_PROMPT}, {"clip": ("clip", 0), "text": ("prompt", 0)},
         title="Prompt (positive and negative: unused at CFG 1)", col=1, color="green"),
    Node("sched", "BasicScheduler", {"scheduler": "simple", "steps": 4, "denoise": 1.0}, {"model": ("unet", 0)},
         title="4 steps (sigmas)", col=1),
    Node("latent", "EmptySD3LatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, col=1),
    Node("scorer", "DOODLCLIPTextScorer", {"prompt": SCHNELL_PROMPT, "clip_model": CLIP_G14, "precision": "bf16"},
         {"prompt": ("prompt", 0)}, col=2, color="blue"),
    Node("doodl", "DOODLOptimize", {**DOODL_DEFAULTS, "cfg": 1.0, "iterations": 20, "chain": "euler"},
         {"model": ("unet", 0), "vae": ("vae", 0), "positive": ("pos", 0), "negative": ("pos", 0),
          "sigmas": ("sched", 0), "scorer": ("scorer", 0), "latent": ("latent", 0)}, col=3),
    *_doodl_outputs("DOODL/flux_schnell", ("vae", 0)),
])


# ------------------------------------------------------------- 10. EDICT editing with SDXL and Flux

EDIT_SOURCE = "A photograph of a bottle and a glass on a table."
EDIT_TARGET = "A watercolor painting of a bottle and a glass on a table."


def _edit_branch(key: str, model, clip, vae, *, scheduler: str, steps: int, cfg: float, col: int,
                 flux: bool):
    k = lambda s: f"{key}_{s}"  # noqa: E731
    neg_source = (k("src"), 0) if flux else (k("neg"), 0)
    neg_target = (k("tgt"), 0) if flux else (k("neg"), 0)
    nodes = [
        Node(k("src"), "CLIPTextEncode", {"text": EDIT_SOURCE}, {"clip": clip}, title=f"{key}: source prompt",
             col=col, color="green"),
        Node(k("tgt"), "CLIPTextEncode", {"text": EDIT_TARGET}, {"clip": clip}, title=f"{key}: edit prompt",
             col=col, color="green"),
        Node(k("sched"), "BasicScheduler", {"scheduler": scheduler, "steps": steps, "denoise": 1.0},
             {"model": model}, title=f"{key}: EDICT steps", col=col),
        Node(k("scale"), "ImageScale", {"upscale_method": "lanczos", "width": 1024, "height": 1024,
                                        "crop": "center"}, {"image": ("image", 0)}, title="Resize to 1024",
             col=col),
        Node(k("encode"), "VAEEncode", {}, {"pixels": (k("scale"), 0), "vae": vae}, col=col + 1),
        Node(k("invert"), "EDICTInversion", {"cfg": cfg},
             {"model": model, "positive": (k("src"), 0), "negative": neg_source, "sigmas": (k("sched"), 0),
              "latent": (k("encode"), 0)}, title=f"{key}: invert with the source prompt", col=col + 2),
        Node(k("generate"), "EDICTGenerate", {"cfg": cfg, "seed": 0, "control_after_generate": "fixed"},
             {"model": model, "positive": (k("tgt"), 0), "negative": neg_target, "sigmas": (k("sched"), 0),
              "edict_latent": (k("invert"), 0)}, title=f"{key}: generate with the edit prompt", col=col + 3),
        Node(k("decode"), "VAEDecode", {}, {"samples": (k("generate"), 0), "vae": vae}, col=col + 4),
        Node(k("stitch"), "ImageStitch", {"direction": "right", "match_image_size": True, "spacing_width": 8,
                                          "spacing_color": "white"},
             {"image1": (k("scale"), 0), "image2": (k("decode"), 0)}, title=f"{key}: input | edit", col=col + 5),
        Node(k("save"), "SaveImage", {"filename_prefix": f"EDICT/edit_{key}"}, {"images": (k("stitch"), 0)},
             title=f"{key}: input | edit", col=col + 6),
    ]
    if not flux:
        nodes.insert(2, Node(k("neg"), "CLIPTextEncode", {"text": ""}, {"clip": clip}, title=f"{key}: negative",
                             col=col, color="red"))
    return nodes


edict_edit = Workflow("doodl10_edict_edit_sdxl_flux", "EDICT inversion and prompt editing with SDXL and Flux", [
    _note("note", "## EDICT: exact inversion and prompt editing, SDXL and Flux\n\n"
          "EDICT Inversion turns the photo into the noise pair that regenerates it exactly under the "
          "**source** prompt; EDICT Generate runs the same pair with the **edit** prompt, so what the "
          "prompts share stays and what differs changes. With the source prompt in both it is a round "
          "trip to float rounding (see the round-trip workflow).\n\n"
          "- **SDXL** (top): 50 steps, CFG 3 with an empty negative prompt.\n"
          "- **Flux dev** (bottom): 28 steps, CFG 1 (Flux dev is guidance-distilled: its guidance "
          "embedding, 3.5 unless a FluxGuidance node sets it, replaces CFG; the negative input is "
          "then not evaluated, so the prompt itself is connected).\n\n"
          "Use your own photo in *Load Image*; lower the steps for quicker tries.\n\n"
          "**Model files** (nothing is downloaded automatically):\n\n"
          f"- `models/checkpoints/{SDXL_BASE}` (stabilityai/stable-diffusion-xl-base-1.0)\n"
          + FLUX_FILES.format(unet=FLUX_DEV, repo="black-forest-labs/FLUX.1-dev")),
    Node("image", "LoadImage", {"image": IMAGE}, title="Photo to edit", col=0),
    Node("ckpt", "CheckpointLoaderSimple", {"ckpt_name": SDXL_BASE}, col=0),
    *_flux_loaders(FLUX_DEV),
    *_edit_branch("sdxl", ("ckpt", 0), ("ckpt", 1), ("ckpt", 2), scheduler="ddim_uniform", steps=50, cfg=3.0,
                  col=1, flux=False),
    *_edit_branch("flux", ("unet", 0), ("clip", 0), ("vae", 0), scheduler="simple", steps=28, cfg=1.0,
                  col=1, flux=True),
])


# ------------------------------------------------------- 11. ReNO's transfer: Turbo noise -> SDXL base

TRANSFER_PROMPT = "A lighthouse on a cliff at sunset, a flock of birds, oil painting."

reno_transfer = Workflow("doodl11_reno_transfer_sdxl", "Optimize the noise on SDXL-Turbo, sample it with SDXL base", [
    _note("note", "## ReNO's noise transfer: optimize on SDXL-Turbo, sample with SDXL base\n\n"
          "SDXL-Turbo and SDXL base share a latent space, so a starting noise is meaningful to both. "
          "DOODL optimizes the noise through SDXL-Turbo's cheap 4-step **euler** chain; its **noise** "
          "output (the best iterate's unit-variance starting noise) then drives SDXL base through "
          "SamplerCustomAdvanced, next to the same seed's plain noise for comparison.\n\n"
          "1024x1024 (SDXL base's size; Turbo was trained at 512 and still works here), Turbo at CFG 1, "
          "base at CFG 7 with 30 Euler steps; DOODL's settings (learning rate 1, clip 1e-3, "
          "perturbation 1e-4, 16 crops, CLIP text scorer), 50 iterations.\n\n"
          "**Model files** (nothing is downloaded automatically):\n\n"
          f"- `models/checkpoints/{SDXL_TURBO}` (stabilityai/sdxl-turbo)\n"
          f"- `models/checkpoints/{SDXL_BASE}` (stabilityai/stable-diffusion-xl-base-1.0)\n" + SCORER_NOTE),
    Node("turbo", "CheckpointLoaderSimple", {"ckpt_name": SDXL_TURBO}, title="SDXL-Turbo", col=0),
    Node("base", "CheckpointLoaderSimple", {"ckpt_name": SDXL_BASE}, title="SDXL base", col=0),
    Node("prompt", "PrimitiveStringMultiline", {"value": TRANSFER_PROMPT}, title="Prompt", col=0),
    Node("t_pos", "CLIPTextEncode", {"text": TRANSFER_PROMPT}, {"clip": ("turbo", 1), "text": ("prompt", 0)},
         title="Turbo: positive", col=1, color="green"),
    Node("t_neg", "CLIPTextEncode", {"text": ""}, {"clip": ("turbo", 1)}, title="Turbo: negative (unused)", col=1,
         color="red"),
    Node("t_sched", "SDTurboScheduler", {"steps": 4, "denoise": 1.0}, {"model": ("turbo", 0)},
         title="Turbo steps (sigmas)", col=1),
    Node("latent", "EmptyLatentImage", {"width": 1024, "height": 1024, "batch_size": 1}, col=1),
    Node("scorer", "DOODLCLIPTextScorer", {"prompt": TRANSFER_PROMPT, "clip_model": CLIP_G14, "precision": "bf16"},
         {"prompt": ("prompt", 0)}, col=2, color="blue"),
    Node("doodl", "DOODLOptimize", {**DOODL_DEFAULTS, "cfg": 1.0, "iterations": 50, "chain": "euler"},
         {"model": ("turbo", 0), "vae": ("turbo", 2), "positive": ("t_pos", 0), "negative": ("t_neg", 0),
          "sigmas": ("t_sched", 0), "scorer": ("scorer", 0), "latent": ("latent", 0)},
         title="DOODL on SDXL-Turbo", col=3),
    Node("b_pos", "CLIPTextEncode", {"text": TRANSFER_PROMPT}, {"clip": ("base", 1), "text": ("prompt", 0)},
         title="Base: positive", col=1, color="green"),
    Node("b_neg", "CLIPTextEncode", {"text": "blurry, low quality"}, {"clip": ("base", 1)}, title="Base: negative",
         col=1, color="red"),
    Node("guider", "CFGGuider", {"cfg": 7.0}, {"model": ("base", 0), "positive": ("b_pos", 0),
                                               "negative": ("b_neg", 0)}, col=3),
    Node("sampler", "KSamplerSelect", {"sampler_name": "euler"}, col=3),
    Node("b_sched", "BasicScheduler", {"scheduler": "normal", "steps": 30, "denoise": 1.0}, {"model": ("base", 0)},
         title="Base steps (sigmas)", col=3),
    Node("seed_noise", "RandomNoise", {"noise_seed": 0, "control_after_generate": "fixed"},
         title="The same seed's plain noise", col=3),
    Node("after", "SamplerCustomAdvanced", {}, {"noise": ("doodl", 6), "guider": ("guider", 0),
                                                "sampler": ("sampler", 0), "sigmas": ("b_sched", 0),
                                                "latent_image": ("latent", 0)},
         title="SDXL base from DOODL's noise", col=4),
    Node("before", "SamplerCustomAdvanced", {}, {"noise": ("seed_noise", 0), "guider": ("guider", 0),
                                                 "sampler": ("sampler", 0), "sigmas": ("b_sched", 0),
                                                 "latent_image": ("latent", 0)},
         title="SDXL base from the seed's noise", col=4),
    Node("dec_after", "VAEDecode", {}, {"samples": ("after", 0), "vae": ("base", 2)}, col=5),
    Node("dec_before", "VAEDecode", {}, {"samples": ("before", 0), "vae": ("base", 2)}, col=5),
    Node("dec_turbo", "VAEDecode", {}, {"samples": ("doodl", 1), "vae": ("turbo", 2)}, title="Turbo's best iterate",
         col=4),
    Node("save_after", "SaveImage", {"filename_prefix": "DOODL/transfer_base_optimized_noise"},
         {"images": ("dec_after", 0)}, title="SDXL base, optimized noise", col=6),
    Node("save_before", "SaveImage", {"filename_prefix": "DOODL/transfer_base_seed_noise"},
         {"images": ("dec_before", 0)}, title="SDXL base, seed noise", col=6),
    Node("turbo_best", "PreviewImage", {}, {"images": ("dec_turbo", 0)}, title="SDXL-Turbo, best iterate", col=5),
    Node("plot", "PreviewImage", {}, {"images": ("doodl", 3)}, title="Loss per iteration", col=5),
])

ARCH_WORKFLOWS = [sdxl_turbo, flux_schnell, edict_edit, reno_transfer]
