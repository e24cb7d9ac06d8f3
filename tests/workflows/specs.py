"""The example workflows, as compact graph specs: the single source the files are built from.

``build_workflows.py`` turns each :class:`Workflow` into a UI-format file in ``workflows/`` by
creating the nodes in the real ComfyUI frontend (so the file is exactly what the frontend saves),
and into its API-format twin in ``tests/api_prompts/`` with the frontend's own ``graphToPrompt``
(what "Export (API)" writes). The tests never read these specs: they check the committed files.

Model and image names are the ones real users have (the tests put tiny random files with exactly
these names into a temporary models folder, see ``model_files.py``):

* ``v1-5-pruned-emaonly.safetensors``: Stable Diffusion 1.5 (``models/checkpoints``).
* ``models/doodl/clip/<name>/``: copies of the Hugging Face repositories the DOODL code uses
  (``laion/CLIP-ViT-{B-32,L-14,g-14}-*``: ``open_clip_config.json`` + weights) and
  ``openai/clip-vit-{large-patch14,base-patch32}`` (transformers) for the aesthetic heads.
* ``models/doodl/aesthetic/sa_0_4_vit_{l_14,b_32}_linear.pth`` (LAION aesthetic predictor v1).
* ``models/doodl/wsdan/dog.pth.tar`` (WS-DAN, Stanford Dogs, from WS_DAN_PyTorch).
* ``example.png``: the image every ComfyUI install ships in ``ComfyUI/input``.

Settings follow the paper and the released DOODL demo notebook (docs/maintainers/released-doodl.md):
50 EDICT steps, 16 crops with cut power 0.3 (0.06 for personalization), each scorer's released crop
reduction (``auto``), and the demo's learning rate / clip / perturbation / tying / renormalization
per task. Where a workflow runs fewer iterations than the demo (a first try), its note says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
CLIP_B32 = "CLIP-ViT-B-32-laion2B-s34B-b79K/"
CLIP_L14 = "CLIP-ViT-L-14-laion2B-s32B-b82K/"
CLIP_G14 = "CLIP-ViT-g-14-laion2B-s12B-b42K/"
CLIP_L14_OPENAI = "clip-vit-large-patch14/"
CLIP_B32_OPENAI = "clip-vit-base-patch32/"
AESTHETIC_HEAD = "sa_0_4_vit_l_14_linear.pth"
AESTHETIC_HEAD_B32 = "sa_0_4_vit_b_32_linear.pth"
WSDAN_DOGS = "dog.pth.tar"
IMAGE = "example.png"
STEPS = 50


@dataclass
class Node:
    key: str                      # spec-local name (the file gets the frontend's numeric ids)
    type: str
    widgets: dict = field(default_factory=dict)   # widget name -> value (others keep their defaults)
    links: dict = field(default_factory=dict)     # input name -> (source key, output index)
    title: str | None = None
    col: int | None = None        # layout column (default: longest path from a source)
    size: tuple | None = None     # only for notes
    color: str | None = None      # "green", "blue", ... (LiteGraph node colours)


@dataclass
class Workflow:
    name: str                     # file stem in workflows/ and tests/api_prompts/
    title: str
    nodes: list


MODELS_NOTE = (
    "**Model files** (nothing is downloaded automatically):\n\n"
    f"- `models/checkpoints/{CHECKPOINT}` (Stable Diffusion 1.5; any SD1.x/SDXL/SD3/Flux checkpoint works)\n")


def _note(key, text, col=0, size=(420, 360)):
    return Node(key, "MarkdownNote", {"text": text}, title="Read me", col=col, size=size, color="yellow")


def _sd15(prompt: str, negative: str = "", shared_prompt: bool = True):
    """Checkpoint, prompt (a shared string when the scorer reads it too), sigmas."""
    nodes = [Node("ckpt", "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, col=0)]
    if shared_prompt:
        nodes += [Node("prompt", "PrimitiveStringMultiline", {"value": prompt}, title="Prompt", col=0),
                  Node("pos", "CLIPTextEncode", {"text": prompt}, {"clip": ("ckpt", 1), "text": ("prompt", 0)},
                       title="Positive", col=1, color="green")]
    else:
        nodes += [Node("pos", "CLIPTextEncode", {"text": prompt}, {"clip": ("ckpt", 1)}, title="Positive",
                       col=1, color="green")]
    nodes += [
        Node("neg", "CLIPTextEncode", {"text": negative}, {"clip": ("ckpt", 1)}, title="Negative", col=1,
             color="red"),
        Node("sched", "BasicScheduler", {"scheduler": "ddim_uniform", "steps": STEPS, "denoise": 1.0},
             {"model": ("ckpt", 0)}, title="EDICT steps (sigmas)", col=1),
    ]
    return nodes


def _doodl(widgets: dict, links: dict, col: int = 3):
    base = {"model": ("ckpt", 0), "vae": ("ckpt", 2), "positive": ("pos", 0), "negative": ("neg", 0),
            "sigmas": ("sched", 0), "scorer": ("scorer", 0)}
    return Node("doodl", "DOODLOptimize", {"control_after_generate": "fixed", **widgets}, {**base, **links},
                col=col)


def _outputs(prefix: str, col: int = 4):
    return [
        Node("decode", "VAEDecode", {}, {"samples": ("doodl", 1), "vae": ("ckpt", 2)}, title="Decode best iterate",
             col=col),
        Node("save", "SaveImage", {"filename_prefix": prefix}, {"images": ("decode", 0)}, title="DOODL result",
             col=col + 1),
        Node("plot", "PreviewImage", {}, {"images": ("doodl", 3)}, title="Loss per iteration", col=col),
        Node("strip", "PreviewImage", {}, {"images": ("doodl", 2)}, title="Iterates (left to right)", col=col),
    ]


# ------------------------------------------------------------------------------------ 1. text

TEXT_PROMPT = "A small blue book sitting on a large red book."

text_to_image = Workflow("doodl1_text_to_image", "DOODL text-to-image with a CLIP text scorer", [
    _note("note", "## DOODL: text-to-image, CLIP text scorer\n\n"
          "DOODL optimizes the *starting noise* so the final image matches the prompt under CLIP "
          "(paper section 5.1, a DrawBench prompt). The prompt node feeds both the text encoder and "
          "the scorer.\n\n" + MODELS_NOTE +
          f"- `models/doodl/clip/{CLIP_G14}`: a copy of the Hugging Face repository "
          "`laion/CLIP-ViT-g-14-laion2B-s12B-b42K` (what DOODL uses), or any CLIP in the dropdown\n\n"
          "Settings are the released demo's (learning rate 1, clip 1e-3, perturbation 1e-4, momentum "
          "0.9, tied and renormalized latents, 16 crops, cut power 0.3), except the iteration count: "
          "the demo runs **50**; this workflow runs 20 for a first try (raise `iterations` for the "
          "published setting).\n\n"
          "Each iteration costs about three EDICT sampling runs (forward, recompute, backward), so "
          "20 iterations cost about 60 sampling runs. Lower `steps` or raise `start_step` for "
          "quicker tries."),
    *_sd15(TEXT_PROMPT),
    Node("latent", "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}, col=1),
    Node("scorer", "DOODLCLIPTextScorer", {"prompt": TEXT_PROMPT, "clip_model": CLIP_G14, "precision": "bf16"},
         {"prompt": ("prompt", 0)}, col=2, color="blue"),
    _doodl({"cfg": 7.5, "seed": 0, "iterations": 20}, {"latent": ("latent", 0)}),
    *_outputs("DOODL/text"),
])


# --------------------------------------------------------------------------------- 2. aesthetic

aesthetic_edit = Workflow("doodl2_aesthetic_edit", "DOODL aesthetic editing of a photo", [
    _note("note", "## DOODL: aesthetic editing of a photo\n\n"
          "Paper section 5.3 / the released demo: invert the photo exactly with EDICT, then optimize "
          "the inverted noise pair toward aesthetic score 10 with an **empty prompt** (CFG 1: the "
          "negative pass would be identical), **without tying** the EDICT pair and **without "
          "renormalization** (both would move away from the photo), no perturbation, 25 iterations. "
          "Like the demo it scores with **both** LAION linear heads, ViT-L/14 weighted 0.25 and "
          "ViT-B/32 weighted 0.75 (the demo's weights 0.5 and 1.5 divided by the two models); the "
          "demo takes |weighted score - 10|, the Combine node the weighted sum of |score - 10|, which "
          "is the same while both scores are below 10.\n\n"
          "Load your own photo in *Load Image*.\n\n" + MODELS_NOTE +
          f"- `models/doodl/aesthetic/{AESTHETIC_HEAD}` and `{AESTHETIC_HEAD_B32}` "
          "(LAION-AI/aesthetic-predictor)\n"
          f"- `models/doodl/clip/{CLIP_L14_OPENAI}` and `{CLIP_B32_OPENAI}`: copies of "
          "`openai/clip-vit-large-patch14` and `openai/clip-vit-base-patch32` (each head was trained "
          "on its OpenAI CLIP's embeddings)"),
    Node("ckpt", "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, col=0),
    Node("image", "LoadImage", {"image": IMAGE}, title="Photo to edit", col=0),
    Node("pos", "CLIPTextEncode", {"text": ""}, {"clip": ("ckpt", 1)}, title="Empty prompt", col=1),
    Node("sched", "BasicScheduler", {"scheduler": "ddim_uniform", "steps": STEPS, "denoise": 1.0},
         {"model": ("ckpt", 0)}, title="EDICT steps (sigmas)", col=1),
    Node("scale", "ImageScale", {"upscale_method": "lanczos", "width": 512, "height": 512, "crop": "center"},
         {"image": ("image", 0)}, title="Resize to 512", col=1),
    Node("encode", "VAEEncode", {}, {"pixels": ("scale", 0), "vae": ("ckpt", 2)}, col=2),
    Node("invert", "EDICTInversion", {"cfg": 1.0},
         {"model": ("ckpt", 0), "positive": ("pos", 0), "negative": ("pos", 0), "sigmas": ("sched", 0),
          "latent": ("encode", 0)}, col=3),
    Node("head_l", "DOODLAestheticScorer", {"head": AESTHETIC_HEAD, "backbone": CLIP_L14_OPENAI,
                                            "goal": "target", "target": 10.0, "precision": "fp32"},
         title="Aesthetic head ViT-L/14", col=1, color="blue"),
    Node("head_b", "DOODLAestheticScorer", {"head": AESTHETIC_HEAD_B32, "backbone": CLIP_B32_OPENAI,
                                            "goal": "target", "target": 10.0, "precision": "fp32"},
         title="Aesthetic head ViT-B/32", col=1, color="blue"),
    Node("scorer", "DOODLCombineScorers", {"weight_1": 0.25, "weight_2": 0.75},
         {"scorer_1": ("head_l", 0), "scorer_2": ("head_b", 0)}, title="Both heads (demo weights)",
         col=2, color="blue"),
    Node("doodl", "DOODLOptimize",
         {"cfg": 1.0, "seed": 0, "control_after_generate": "fixed", "iterations": 25, "lr": 1.0,
          "perturbation": 0.0, "renormalize": False, "tie_latents": False},
         {"model": ("ckpt", 0), "vae": ("ckpt", 2), "positive": ("pos", 0), "negative": ("pos", 0),
          "sigmas": ("sched", 0), "scorer": ("scorer", 0), "edict_latent": ("invert", 0)}, col=4),
    Node("original", "PreviewImage", {}, {"images": ("scale", 0)}, title="Original", col=5),
    *_outputs("DOODL/aesthetic", col=5),
])


# ----------------------------------------------------------------------------- 3. personalization

PERSONAL_PROMPT = "A drawing of a girl wearing sunglasses on the beach."

personalization = Workflow("doodl3_personalization", "DOODL personalization with a CLIP image ensemble", [
    _note("note", "## DOODL: personalization with a reference image\n\n"
          "Paper section 5.4: the CLIP *image* ensemble (ViT-B/32, L/14, g/14 weighted 0.5/0.25/0.25) "
          "pulls the generation toward the reference image(s) while the prompt sets the scene. "
          "Settings from the released demo: lr 3, clip 3e-3, cut power 0.06, no perturbation. The "
          "demo ran **500** iterations (hours); this workflow runs 50 as a practical start. The "
          "ensemble weights are the paper's; the released notebook, asking for all three models, "
          "loads only ViT-B/32 (its model selection is an if/elif chain).\n\n"
          "Use your own reference images (a batch works: their mean embedding is the target).\n\n"
          + MODELS_NOTE +
          "- `models/doodl/clip/`: copies of the Hugging Face repositories "
          f"`laion/{CLIP_B32[:-1]}`, `laion/{CLIP_L14[:-1]}`, `laion/{CLIP_G14[:-1]}` (set a model to "
          "`none` to leave it out)"),
    *_sd15(PERSONAL_PROMPT, shared_prompt=False),
    Node("latent", "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}, col=1),
    Node("reference", "LoadImage", {"image": IMAGE}, title="Reference image", col=1),
    Node("scorer", "DOODLCLIPImageScorer",
         {"model_1": CLIP_B32, "weight_1": 0.5, "model_2": CLIP_L14, "weight_2": 0.25,
          "model_3": CLIP_G14, "weight_3": 0.25, "precision": "bf16"},
         {"reference_images": ("reference", 0)}, col=2, color="blue"),
    _doodl({"cfg": 7.5, "seed": 0, "iterations": 50, "lr": 3.0, "clip": 0.003, "perturbation": 0.0,
            "cut_power": 0.06}, {"latent": ("latent", 0)}),
    *_outputs("DOODL/personalization"),
])


# ------------------------------------------------------------------------- 4. fine-grained WS-DAN

WSDAN_PROMPT = "A Brabancon Griffon, a type of dog"

fine_grained = Workflow("doodl4_fine_grained", "DOODL fine-grained vocabulary expansion with WS-DAN", [
    _note("note", "## DOODL: fine-grained vocabulary expansion (WS-DAN)\n\n"
          "Paper section 5.2: Stable Diffusion often draws a generic dog for a rare breed. A WS-DAN "
          "classifier trained on Stanford Dogs steers the noise toward the breed. Settings from the "
          "released demo: class 110 (Brabancon griffon), lr 0.05, clip 1e-2, perturbation 1e-3, "
          "seed 1. The demo runs **50** iterations; this workflow runs 25 for a first try.\n\n"
          "Class indices are 0-based in the dataset's class order (birds: CUB-200 `classes.txt` minus "
          "1; aircraft: FGVC-Aircraft variants).\n\n" + MODELS_NOTE +
          f"- `models/doodl/wsdan/{WSDAN_DOGS}` (or `bird.pth.tar`, `aircraft.pth.tar`): the pretrained "
          "models linked from github.com/wvinzh/WS_DAN_PyTorch"),
    *_sd15(WSDAN_PROMPT, shared_prompt=False),
    Node("latent", "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}, col=1),
    Node("scorer", "DOODLWSDANScorer", {"checkpoint": WSDAN_DOGS, "class_index": 110, "precision": "fp32"},
         col=2, color="blue"),
    _doodl({"cfg": 7.5, "seed": 1, "iterations": 25, "lr": 0.05, "clip": 0.01, "perturbation": 0.001},
           {"latent": ("latent", 0)}),
    *_outputs("DOODL/wsdan"),
])


# --------------------------------------------------------------------------- 5. inversion round trip

INVERSION_PROMPT = "A child's drawing of a girl with big yellow hair in a pink dress."

inversion = Workflow("doodl5_edict_inversion", "EDICT exact inversion round trip", [
    _note("note", "## EDICT: exact inversion round trip\n\n"
          "EDICT Inversion turns the encoded image into the noise pair that regenerates it; EDICT "
          "Generate with the same model, prompt, CFG, sigmas and p rebuilds the latent to float64 "
          "rounding, so the reconstruction equals a plain VAE round trip of the input (the only "
          "difference you can see is the VAE's own encode/decode loss).\n\n"
          "Change the prompt of *EDICT Generate* (a second CLIP Text Encode) to edit the image "
          "instead; DOODL Optimize accepts the same pair (see the aesthetic-editing workflow).\n\n"
          + MODELS_NOTE),
    Node("ckpt", "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, col=0),
    Node("image", "LoadImage", {"image": IMAGE}, title="Input image", col=0),
    Node("pos", "CLIPTextEncode", {"text": INVERSION_PROMPT}, {"clip": ("ckpt", 1)}, title="Positive", col=1,
         color="green"),
    Node("neg", "CLIPTextEncode", {"text": ""}, {"clip": ("ckpt", 1)}, title="Negative", col=1, color="red"),
    Node("sched", "BasicScheduler", {"scheduler": "ddim_uniform", "steps": STEPS, "denoise": 1.0},
         {"model": ("ckpt", 0)}, title="EDICT steps (sigmas)", col=1),
    Node("scale", "ImageScale", {"upscale_method": "lanczos", "width": 512, "height": 512, "crop": "center"},
         {"image": ("image", 0)}, title="Resize to 512", col=1),
    Node("encode", "VAEEncode", {}, {"pixels": ("scale", 0), "vae": ("ckpt", 2)}, col=2),
    Node("invert", "EDICTInversion", {"cfg": 3.0},
         {"model": ("ckpt", 0), "positive": ("pos", 0), "negative": ("neg", 0), "sigmas": ("sched", 0),
          "latent": ("encode", 0)}, col=3),
    Node("generate", "EDICTGenerate", {"cfg": 3.0, "seed": 0, "control_after_generate": "fixed"},
         {"model": ("ckpt", 0), "positive": ("pos", 0), "negative": ("neg", 0), "sigmas": ("sched", 0),
          "edict_latent": ("invert", 0)}, col=4),
    Node("decode", "VAEDecode", {}, {"samples": ("generate", 0), "vae": ("ckpt", 2)}, title="Decode reconstruction",
         col=5),
    Node("decode_noise", "VAEDecode", {}, {"samples": ("invert", 1), "vae": ("ckpt", 2)},
         title="Decode inverted noise", col=4),
    Node("noise", "PreviewImage", {}, {"images": ("decode_noise", 0)}, title="Inverted noise x_T", col=5),
    Node("stitch", "ImageStitch", {"direction": "right", "match_image_size": True, "spacing_width": 8,
                                   "spacing_color": "white"},
         {"image1": ("scale", 0), "image2": ("decode", 0)}, title="Input | reconstruction", col=6),
    Node("save", "SaveImage", {"filename_prefix": "EDICT/round_trip"}, {"images": ("stitch", 0)},
         title="Input | reconstruction", col=7),
])


# --------------------------------------------------------------------------------- 6. comparison

COMPARE_PROMPT = "A blue bird and a brown bear."

comparison = Workflow("doodl6_vs_baselines", "DOODL vs one-step guidance vs plain sampling", [
    _note("note", "## DOODL vs one-step guidance vs plain sampling\n\n"
          "All four images start from the **same seed** (the noise is drawn exactly like ComfyUI's "
          "samplers):\n\n"
          "1. plain EDICT (DOODL's starting point),\n"
          "2. plain Euler (DDIM) sampling,\n"
          "3. one-step classifier guidance (the paper's baseline: the scorer's gradient on the one-step "
          "x0 estimate at every step, guidance scale 30 as in the paper; variant `official` is the "
          "released code's: x0 from the unconditional prediction, stepped with EDICT),\n"
          "4. DOODL (gradient through the whole chain, 20 iterations).\n\n" + MODELS_NOTE +
          f"- `models/doodl/clip/{CLIP_G14}` (`laion/CLIP-ViT-g-14-laion2B-s12B-b42K`)"),
    *_sd15(COMPARE_PROMPT),
    Node("latent", "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}, col=1),
    Node("scorer", "DOODLCLIPTextScorer", {"prompt": COMPARE_PROMPT, "clip_model": CLIP_G14, "precision": "bf16"},
         {"prompt": ("prompt", 0)}, col=2, color="blue"),
    Node("edict", "EDICTGenerate", {"cfg": 7.5, "seed": 0, "control_after_generate": "fixed"},
         {"model": ("ckpt", 0), "positive": ("pos", 0), "negative": ("neg", 0), "sigmas": ("sched", 0),
          "latent": ("latent", 0)}, title="Plain EDICT (seed 0)", col=3),
    Node("euler", "KSamplerSelect", {"sampler_name": "euler"}, col=2),
    Node("plain", "SamplerCustom", {"add_noise": True, "noise_seed": 0, "control_after_generate": "fixed",
                                    "cfg": 7.5},
         {"model": ("ckpt", 0), "positive": ("pos", 0), "negative": ("neg", 0), "sampler": ("euler", 0),
          "sigmas": ("sched", 0), "latent_image": ("latent", 0)}, title="Plain Euler (seed 0)", col=3),
    Node("guidance", "DOODLOneStepGuidance", {"guidance_scale": 30.0, "seed": 0, "variant": "official"},
         {"vae": ("ckpt", 2), "scorer": ("scorer", 0)}, col=2),
    Node("guided", "SamplerCustom", {"add_noise": True, "noise_seed": 0, "control_after_generate": "fixed",
                                     "cfg": 7.5},
         {"model": ("ckpt", 0), "positive": ("pos", 0), "negative": ("neg", 0), "sampler": ("guidance", 0),
          "sigmas": ("sched", 0), "latent_image": ("latent", 0)}, title="One-step guidance (seed 0)", col=3),
    _doodl({"cfg": 7.5, "seed": 0, "iterations": 20}, {"latent": ("latent", 0)}, col=3),
    Node("dec_edict", "VAEDecode", {}, {"samples": ("edict", 0), "vae": ("ckpt", 2)}, col=4),
    Node("dec_plain", "VAEDecode", {}, {"samples": ("plain", 0), "vae": ("ckpt", 2)}, col=4),
    Node("dec_guided", "VAEDecode", {}, {"samples": ("guided", 0), "vae": ("ckpt", 2)}, col=4),
    Node("dec_doodl", "VAEDecode", {}, {"samples": ("doodl", 1), "vae": ("ckpt", 2)}, col=4),
    Node("save_edict", "SaveImage", {"filename_prefix": "DOODL/compare_1_plain_edict"}, {"images": ("dec_edict", 0)},
         title="1. plain EDICT", col=5),
    Node("save_plain", "SaveImage", {"filename_prefix": "DOODL/compare_2_plain_euler"}, {"images": ("dec_plain", 0)},
         title="2. plain Euler", col=5),
    Node("save_guided", "SaveImage", {"filename_prefix": "DOODL/compare_3_one_step"},
         {"images": ("dec_guided", 0)}, title="3. one-step guidance", col=6),
    Node("save_doodl", "SaveImage", {"filename_prefix": "DOODL/compare_4_doodl"}, {"images": ("dec_doodl", 0)},
         title="4. DOODL", col=6),
    Node("plot", "PreviewImage", {}, {"images": ("doodl", 3)}, title="DOODL loss per iteration", col=4),
])

WORKFLOWS = [text_to_image, aesthetic_edit, personalization, fine_grained, inversion, comparison]

from tests.workflows.specs_arch import ARCH_WORKFLOWS  # noqa: E402  (SDXL-Turbo / Flux / SDXL workflows)
from tests.workflows.specs_rewards import WORKFLOWS as REWARD_WORKFLOWS  # noqa: E402  (doodl7, preference rewards)
WORKFLOWS += REWARD_WORKFLOWS + ARCH_WORKFLOWS
