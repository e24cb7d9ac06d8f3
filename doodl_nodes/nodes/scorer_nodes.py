"""Scorer nodes: each builds a ``DOODL_SCORER`` for DOODLOptimize / DOODLOneStepGuidance.

Thin glue: model files come from the pack's folders (``bridge.folders``), models are built by
``doodl_nodes.scorers`` (no ComfyUI there) and ComfyUI objects are wrapped by
``bridge.clip_vision``. Loaded models are cached on the node instance, one per model slot (the
``LoraLoader.loaded_lora`` pattern), and in a small process-wide LRU (``bridge.model_cache``), so
re-running a graph or alternating prompts does not reload them. Models are built outside inference mode, so their weights are ordinary tensors.
"""
from __future__ import annotations

import os

import torch

from ..bridge import folders
from ..bridge.clip_vision import ComfyCLIPVisionEncoder, comfy_clip_pooled_embedding
from ..bridge.model_cache import SHARED_MODELS
from ..scorers.aesthetic import AESTHETIC_HEADS, AestheticScorer, load_aesthetic_head
from ..scorers.clip import CLIPImageScorer, CLIPTextScorer
from ..scorers.clip_models import (DTYPES, guess_open_clip_arch, load_clip_folder,
                                   load_open_clip)
from ..scorers.combine import CombinedScorer
from ..scorers.symmetry import SYMMETRY_AXES, SymmetryScorer
from ..scorers.wsdan import WSDAN_SOURCE, WSDANScorer, load_wsdan

folders.register_folders()

CATEGORY = "DOODL/scorers"
SCORER = "DOODL_SCORER"
NONE = "none"
CLIP_VISION_INPUT = "(CLIP_VISION input)"
COMFY_CLIP_INPUT = "(CLIP + CLIP_VISION inputs: SDXL clip_g)"
DOWNLOAD = "download: "
AUTO = "auto"
PRECISIONS = list(DTYPES)
#: open_clip (architecture, pretrained tag) pairs offered as explicit downloads.
OPEN_CLIP_DOWNLOADS = [("ViT-B-32", "laion2b_s34b_b79k"), ("ViT-B-32", "openai"),
                       ("ViT-L-14", "openai"), ("ViT-L-14", "laion2b_s32b_b82k"),
                       ("ViT-H-14", "laion2b_s32b_b79k"), ("ViT-g-14", "laion2b_s12b_b42k"),
                       ("ViT-bigG-14", "laion2b_s39b_b160k")]

PRECISION_TOOLTIP = ("Weight dtype of the models this node loads. fp32 is exact; bf16 halves "
                     "memory with safe gradients; fp16 gradients can underflow.")
ARCH_TOOLTIP = ("open_clip architecture of a single checkpoint file (e.g. ViT-B-32; "
                "ViT-L-14-quickgelu for OpenAI weights). 'auto' reads it from the file name. "
                "Ignored for model folders, downloads and CLIP_VISION inputs.")
WEIGHT_TOOLTIP = "Weight of this model in the ensemble (the loss is the weighted mean)."
SCORER_TOOLTIP = "A DOODL scorer: plug it into DOODL Optimize or DOODL One-Step Guidance."


# ----------------------------------------------------------------------------------- helpers


def _open_clip_downloads() -> list[str]:
    try:
        import open_clip
        known = set(open_clip.list_pretrained())
    except Exception:  # open_clip missing: files and CLIP_VISION still work
        known = set()
    return [f"{DOWNLOAD}{arch} / {tag}" for arch, tag in OPEN_CLIP_DOWNLOADS
            if (arch, tag) in known]


def _architectures() -> list[str]:
    try:
        import open_clip
        return [AUTO] + open_clip.list_models()
    except Exception:
        return [AUTO]


def _clip_choices(first: tuple[str, ...] = ()) -> list[str]:
    return list(first) + folders.clip_model_list() + _open_clip_downloads()


def _clip_cache_dir() -> str:
    return os.path.join(folders.first_folder("doodl_clip"), "open_clip_cache")


def _load_clip(entry: str, architecture: str, precision: str):
    """A ClipBundle for a dropdown entry (a model folder, a checkpoint file, or a download)."""
    if entry.startswith(DOWNLOAD):
        arch, tag = (part.strip() for part in entry[len(DOWNLOAD):].split("/", 1))
        return load_open_clip(arch, pretrained=tag, cache_dir=_clip_cache_dir(), dtype=precision)
    kind, path = folders.resolve_clip_model(entry)
    if kind == "folder":
        return load_clip_folder(path, dtype=precision)
    arch = guess_open_clip_arch(entry) if architecture == AUTO else architecture
    if arch is None:
        raise ValueError(f"cannot tell the open_clip architecture of '{entry}' from its name: set "
                         f"'architecture' (e.g. ViT-B-32), or use a model folder with its "
                         f"open_clip_config.json")
    return load_open_clip(arch, checkpoint=path, dtype=precision)


def _clip_key(entry: str, architecture: str, precision: str):
    if entry.startswith(DOWNLOAD):
        return (entry, precision)
    kind, path = folders.resolve_clip_model(entry)
    return (entry, path, os.path.getmtime(path), architecture, precision)


class _ModelCache:
    """One loaded model per slot on the node instance (``LoraLoader.loaded_lora``), backed by the
    process-wide ``SHARED_MODELS`` so that a node dropped from the graph and re-created later (as
    ComfyUI does when prompts alternate) finds its model without reloading it."""

    def _cached(self, slot: str, key, load):
        cache = self.__dict__.setdefault("_loaded", {})
        hit = cache.get(slot)
        if hit is not None and hit[0] == key:
            return hit[1]
        cache.pop(slot, None)  # release the old model before loading the new one

        def load_plain():
            with torch.inference_mode(False), torch.no_grad():
                return load()

        value = SHARED_MODELS.get((type(self).__name__, slot, key), load_plain)
        cache[slot] = (key, value)
        return value

    def _clip(self, slot: str, entry: str, architecture: str, precision: str):
        return self._cached(slot, _clip_key(entry, architecture, precision),
                            lambda: _load_clip(entry, architecture, precision))


def _comfy_vision(clip_vision, input_name: str, load: bool = False) -> ComfyCLIPVisionEncoder:
    if clip_vision is None:
        raise ValueError(f"'{input_name}' is not connected: connect a Load CLIP Vision node, or "
                         f"pick a model file instead of {CLIP_VISION_INPUT!r}")
    encoder = ComfyCLIPVisionEncoder(clip_vision)
    return encoder.load() if load else encoder


def _images(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) -> (B, 3, H, W) float in [0, 1]."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        raise ValueError("reference_images must be a ComfyUI IMAGE batch")
    return image[..., :3].movedim(-1, 1).float()


def _output(cls):
    cls.RETURN_TYPES = (SCORER,)
    cls.RETURN_NAMES = ("scorer",)
    cls.OUTPUT_TOOLTIPS = (SCORER_TOOLTIP,)
    cls.FUNCTION = "build"
    cls.CATEGORY = CATEGORY
    return cls


# ----------------------------------------------------------------------------------- nodes


@_output
class DOODLCLIPTextScorer(_ModelCache):
    DESCRIPTION = ("Scores how well the image matches a text prompt with a CLIP model: the loss "
                   "is the spherical distance between the image and text embeddings (DOODL eq. "
                   "10), over random crops; the score is their cosine similarity. Models: "
                   "open_clip or transformers files/folders in models/doodl/clip, an open_clip "
                   "download, or an SDXL CLIP (clip_g) with a matching clip_vision_g.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "prompt": ("STRING", {"multiline": True, "default": "",
                                      "tooltip": "The text the image should match."}),
                "clip_model": (_clip_choices((COMFY_CLIP_INPUT,)), {
                    "tooltip": "CLIP model: a file or folder in models/doodl/clip, 'download:' "
                               "(open_clip fetches the weights once; needs a network), or the "
                               "connected SDXL CLIP + CLIP_VISION (clip_g with clip_vision_g)."}),
                "architecture": (_architectures(), {"default": AUTO, "tooltip": ARCH_TOOLTIP}),
                "precision": (PRECISIONS, {"default": "fp32", "tooltip": PRECISION_TOOLTIP}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "SDXL/SD3 CLIP (uses its clip_g pooled output); "
                                             "only with the CLIP + CLIP_VISION choice."}),
                "clip_vision": ("CLIP_VISION", {
                    "tooltip": "The image tower matching the CLIP text tower (clip_vision_g for "
                               "SDXL clip_g); only with the CLIP + CLIP_VISION choice."}),
            },
        }

    def build(self, prompt, clip_model, architecture, precision, clip=None, clip_vision=None):
        if not prompt or not prompt.strip():
            raise ValueError("'prompt' is empty: type the text the image should match")
        if clip_model == COMFY_CLIP_INPUT:
            encoder = _comfy_vision(clip_vision, "clip_vision")
            embedding = comfy_clip_pooled_embedding(clip, prompt)
            return (CLIPTextScorer(encoder, embedding, prompt=prompt,
                                   name=f"CLIP text (ComfyUI clip_g + {encoder.label})"),)
        bundle = self._clip("clip", clip_model, architecture, precision)
        if bundle.text is None:
            raise ValueError(f"'{clip_model}' has no text tower (an image-only CLIP model): pick "
                             f"a full CLIP model for text scoring")
        with torch.inference_mode(False):
            return (CLIPTextScorer.from_text(bundle.image, bundle.text, prompt),)


@_output
class DOODLCLIPImageScorer(_ModelCache):
    DESCRIPTION = ("Personalization: scores how close the image is to reference images in CLIP "
                   "space, with up to three CLIP image encoders. Each encoder's target is the "
                   "normalized mean embedding of the references; the loss is the weighted mean of "
                   "spherical distances (the paper: ViT-B/32, L/14, g/14 at 0.5/0.25/0.25).")

    @classmethod
    def INPUT_TYPES(cls):
        required = {"reference_images": ("IMAGE", {
            "tooltip": "One or more images of the subject; their mean CLIP embedding is the "
                       "target."})}
        defaults = {1: 0.5, 2: 0.25, 3: 0.25}
        for i in (1, 2, 3):
            first = (CLIP_VISION_INPUT,) if i == 1 else (NONE, CLIP_VISION_INPUT)
            required[f"model_{i}"] = (_clip_choices(first), {
                "tooltip": f"CLIP image encoder {i}: a file or folder in models/doodl/clip, "
                           f"'download:' (open_clip, needs a network), the clip_vision_{i} "
                           f"input" + (", or none" if i > 1 else "") + "."})
            required[f"architecture_{i}"] = (_architectures(), {"default": AUTO,
                                                                 "tooltip": ARCH_TOOLTIP})
            required[f"weight_{i}"] = ("FLOAT", {"default": defaults[i], "min": 0.0,
                                                 "max": 100.0, "step": 0.05,
                                                 "tooltip": WEIGHT_TOOLTIP})
        required["precision"] = (PRECISIONS, {"default": "fp32", "tooltip": PRECISION_TOOLTIP})
        optional = {f"clip_vision_{i}": ("CLIP_VISION", {
            "tooltip": f"A CLIP vision model for slot {i} (with model_{i} = "
                       f"{CLIP_VISION_INPUT})."}) for i in (1, 2, 3)}
        return {"required": required, "optional": optional}

    def build(self, reference_images, precision, **kw):
        refs = _images(reference_images)
        encoders, weights = [], []
        for i in (1, 2, 3):
            entry, weight = kw[f"model_{i}"], float(kw[f"weight_{i}"])
            if entry == NONE or weight == 0:
                continue
            if entry == CLIP_VISION_INPUT:
                encoders.append(_comfy_vision(kw.get(f"clip_vision_{i}"), f"clip_vision_{i}",
                                              load=True))
            else:
                encoders.append(self._clip(f"model_{i}", entry, kw[f"architecture_{i}"],
                                           precision).image)
            weights.append(weight)
        if not encoders:
            raise ValueError("no CLIP model selected: set model_1 (with a weight above 0)")
        with torch.inference_mode(False):
            return (CLIPImageScorer(encoders, weights, reference_images=refs),)


def _aesthetic_choices() -> list[str]:
    files = folders.folder_list("doodl_aesthetic")
    missing = [f"{DOWNLOAD}{name}" for name in AESTHETIC_HEADS if name not in files]
    return files + missing


@_output
class DOODLAestheticScorer(_ModelCache):
    DESCRIPTION = ("Aesthetic score of the image (about 1-10) from a LAION aesthetic head on a "
                   "CLIP image embedding: the LAION linear heads (ViT-L/14, ViT-B/32; what DOODL "
                   "used) or the improved MLP (ViT-L/14). Loss: -score (maximize) or "
                   "|score - target|, with the score clamped to [1, 10] as in DOODL (no gradient "
                   "from crops scored outside that range). Heads need OpenAI CLIP backbones.")

    @classmethod
    def INPUT_TYPES(cls):
        backbones = _clip_choices((CLIP_VISION_INPUT,))
        preferred = f"{DOWNLOAD}ViT-L-14 / openai"
        return {
            "required": {
                "head": (_aesthetic_choices(), {
                    "tooltip": "Aesthetic head in models/doodl/aesthetic; 'download:' fetches "
                               "it once from GitHub (LAION-AI/aesthetic-predictor or "
                               "christophschuhmann/improved-aesthetic-predictor)."}),
                "backbone": (backbones, {
                    "default": preferred if preferred in backbones else backbones[0],
                    "tooltip": "The CLIP image model the head was trained on: OpenAI ViT-L/14 "
                               "for the L/14 and MLP heads, OpenAI ViT-B/32 for the B/32 head "
                               "(a file, an open_clip download, or a ViT-L/14 CLIP_VISION)."}),
                "architecture": (_architectures(), {"default": AUTO, "tooltip": ARCH_TOOLTIP}),
                "goal": (["maximize", "target"], {
                    "default": "maximize",
                    "tooltip": "maximize: loss = -score. target: loss = |score - target|."}),
                "target": ("FLOAT", {"default": 10.0, "min": 1.0, "max": 10.0, "step": 0.1,
                                     "tooltip": "Aesthetic score to reach (1-10); only used "
                                                "with goal = target."}),
                "precision": (PRECISIONS, {"default": "fp32", "tooltip": PRECISION_TOOLTIP}),
            },
            "optional": {
                "clip_vision": ("CLIP_VISION", {
                    "tooltip": "A ViT-L/14 CLIP vision model (with backbone = "
                               f"{CLIP_VISION_INPUT})."}),
            },
        }

    def build(self, head, backbone, architecture, goal, target, precision, clip_vision=None):
        if head.startswith(DOWNLOAD):
            name = head[len(DOWNLOAD):]
            path = folders.download_file(AESTHETIC_HEADS[name][2], "doodl_aesthetic", name)
        else:
            known = AESTHETIC_HEADS.get(os.path.basename(head))
            path = folders.resolve_file(
                "doodl_aesthetic", head, "aesthetic head",
                known[2] if known else "github.com/LAION-AI/aesthetic-predictor or "
                                       "github.com/christophschuhmann/improved-aesthetic-predictor")
        aesthetic_head = self._cached("head", (path, os.path.getmtime(path)),
                                      lambda: load_aesthetic_head(path))
        if backbone == CLIP_VISION_INPUT:
            encoder = _comfy_vision(clip_vision, "clip_vision")
        else:
            encoder = self._clip("backbone", backbone, architecture, precision).image
        with torch.inference_mode(False):
            return (AestheticScorer(encoder, aesthetic_head,
                                    target=None if goal == "maximize" else float(target)),)


@_output
class DOODLWSDANScorer(_ModelCache):
    DESCRIPTION = ("Fine-grained class guidance with a WS-DAN classifier (Inception-v3 + "
                   "bilinear attention pooling) as in DOODL: cross-entropy of the class at 512 px "
                   "over random crops; the score is the class probability. Checkpoints (CUB-200 "
                   "birds, Stanford Dogs-120, FGVC-Aircraft-100) go in models/doodl/wsdan.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "checkpoint": (folders.folder_list("doodl_wsdan"), {
                    "tooltip": "WS-DAN checkpoint in models/doodl/wsdan (bird/dog/aircraft "
                               ".pth.tar from the WS_DAN_PyTorch README, or a safetensors copy)."}),
                "class_index": ("INT", {"default": 0, "min": 0, "max": 999, "step": 1,
                                        "tooltip": "0-based class index in the dataset's class "
                                                   "order (e.g. CUB classes.txt minus 1)."}),
                "precision": (PRECISIONS, {"default": "fp32", "tooltip": PRECISION_TOOLTIP}),
            },
        }

    def build(self, checkpoint, class_index, precision):
        path = folders.resolve_file("doodl_wsdan", checkpoint, "WS-DAN checkpoint", WSDAN_SOURCE)
        dtype = DTYPES[precision]
        model = self._cached("wsdan", (path, os.path.getmtime(path), precision),
                             lambda: load_wsdan(path).to(dtype))
        return (WSDANScorer(model, class_index),)


@_output
class DOODLSymmetryScorer:
    DESCRIPTION = ("Mirror symmetry: the loss is the mean squared difference between the image "
                   "and its mirror image (DOODL's demo 'symmetry' guidance). Ignores crops.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"axis": (list(SYMMETRY_AXES), {
            "default": "left-right",
            "tooltip": "left-right: compare with the horizontally flipped image; top-bottom: "
                       "with the vertically flipped one."})}}

    def build(self, axis):
        return (SymmetryScorer(axis),)


@_output
class DOODLCombineScorers:
    DESCRIPTION = ("Weighted sum of up to four scorers: loss = sum of weight_i * loss_i. Scores "
                   "are reported with the slot number as prefix (1.clip_cosine, ...). Chain "
                   "nodes for more.")

    @classmethod
    def INPUT_TYPES(cls):
        def weight(i):
            return ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.05,
                              "tooltip": f"Multiplies the loss of scorer_{i} (negative pushes "
                                         f"away)."})
        optional = {}
        for i in (2, 3, 4):
            optional[f"scorer_{i}"] = (SCORER, {"tooltip": f"Scorer {i} (optional)."})
            optional[f"weight_{i}"] = weight(i)
        return {"required": {"scorer_1": (SCORER, {"tooltip": "First scorer."}),
                             "weight_1": weight(1)},
                "optional": optional}

    def build(self, scorer_1, weight_1, **kw):
        scorers, weights = [scorer_1], [weight_1]
        for i in (2, 3, 4):
            if kw.get(f"scorer_{i}") is not None:
                scorers.append(kw[f"scorer_{i}"])
                weights.append(kw.get(f"weight_{i}", 1.0))
        return (CombinedScorer(scorers, weights),)


NODE_CLASS_MAPPINGS = {
    "DOODLCLIPTextScorer": DOODLCLIPTextScorer,
    "DOODLCLIPImageScorer": DOODLCLIPImageScorer,
    "DOODLAestheticScorer": DOODLAestheticScorer,
    "DOODLWSDANScorer": DOODLWSDANScorer,
    "DOODLSymmetryScorer": DOODLSymmetryScorer,
    "DOODLCombineScorers": DOODLCombineScorers,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "DOODLCLIPTextScorer": "DOODL CLIP Text Scorer",
    "DOODLCLIPImageScorer": "DOODL CLIP Image Scorer (personalization)",
    "DOODLAestheticScorer": "DOODL Aesthetic Scorer",
    "DOODLWSDANScorer": "DOODL WS-DAN Fine-Grained Scorer",
    "DOODLSymmetryScorer": "DOODL Symmetry Scorer",
    "DOODLCombineScorers": "DOODL Combine Scorers",
}
