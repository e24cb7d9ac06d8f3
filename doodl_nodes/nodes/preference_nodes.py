"""Human-preference reward nodes: PickScore, HPSv2/2.1 and ImageReward as DOODL_SCORERs.

Thin glue like ``scorer_nodes.py`` (same model cache, folders and ``download:`` entries): files
come from ``models/doodl/clip`` (PickScore, a transformers CLIP folder), ``models/doodl/hps`` and
``models/doodl/imagereward``; the models are built by ``doodl_nodes.scorers`` and wrapped for
ComfyUI's model management by the bridge when DOODL runs. Each node's scorer composes with DOODL
Combine Scorers and works as DOODL Optimize's held-out ``monitor``.
"""
from __future__ import annotations

import os

import torch

from ..bridge import folders
from ..scorers.hps import HPS_ARCH, HPS_FILES, HPS_SOURCE, HPSScorer, load_hps
from ..scorers.imagereward import (IMAGEREWARD_FILES, IMAGEREWARD_SOURCE, ImageRewardScorer,
                                   load_imagereward)
from ..scorers.pickscore import (PICKSCORE_FILES, PICKSCORE_FOLDER, PICKSCORE_REPO,
                                 PickScoreScorer, load_pickscore)
from .scorer_nodes import (DOWNLOAD, PRECISION_TOOLTIP, PRECISIONS, _architectures, _ModelCache,
                           _output)

PROMPT_TOOLTIP = ("The prompt the image is scored against (usually the generation prompt; "
                  "convert to an input to share a text node with CLIP Text Encode).")
GOAL_TOOLTIP = "maximize: loss = -score. target: loss = |score - target|."
IMAGEREWARD_NAME = "ImageReward.pt"
PICKSCORE_DOWNLOAD = f"{DOWNLOAD}{PICKSCORE_REPO}"


def _prompt(prompt) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("'prompt' is empty: give the text the image should match (the "
                         "generation prompt)")
    return prompt


def _target(goal: str, target: float):
    if goal not in ("maximize", "target"):
        raise ValueError(f"'goal' must be maximize or target, got {goal!r}")
    return None if goal == "maximize" else float(target)


def _goal_inputs(default: float, lo: float, hi: float, step: float, scale: str) -> dict:
    return {
        "goal": (["maximize", "target"], {"default": "maximize", "tooltip": GOAL_TOOLTIP}),
        "target": ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step,
                             "tooltip": f"The score to reach with goal = target ({scale})."}),
    }


def _mtime_key(path: str, *rest):
    return (path, os.path.getmtime(path), *rest)


# ----------------------------------------------------------------------------------- PickScore


def _pickscore_choices() -> list[str]:
    found = [e for e in folders.clip_model_list() if e.endswith(folders.FOLDER_SUFFIX)]
    first = [e for e in found if "pickscore" in e.lower()]
    rest = [e for e in found if e not in first]
    download = [] if f"{PICKSCORE_FOLDER}/" in found else [PICKSCORE_DOWNLOAD]
    return first + download + rest


def _download_pickscore() -> str:
    folder = os.path.join(folders.first_folder("doodl_clip"), PICKSCORE_FOLDER)
    os.makedirs(folder, exist_ok=True)
    base = f"https://huggingface.co/{PICKSCORE_REPO}/resolve/main/"
    for alternatives in PICKSCORE_FILES:
        errors = []
        for name in alternatives:
            try:
                folders.download_file(base + name, "doodl_clip", f"{PICKSCORE_FOLDER}/{name}")
                break
            except folders.MissingModelError as exc:
                errors.append(str(exc))
        else:
            raise folders.MissingModelError(" ".join(errors))
    return folder


@_output
class DOODLPickScoreScorer(_ModelCache):
    DESCRIPTION = ("PickScore (a CLIP-H/14 fine-tuned on Pick-a-Pic human preferences): score = "
                   "logit_scale x cosine of the image and prompt embeddings (about 18-24 for SD "
                   "images); loss = -score, over crops or (num_crops 0) the whole image with "
                   "PickScore's own preprocessing. Any other CLIP folder gives the logit-scaled "
                   "CLIP score (ReNO's CLIP reward). ReNO weights it 0.05 next to HPSv2.1 5.0.")

    @classmethod
    def INPUT_TYPES(cls):
        choices = _pickscore_choices()
        return {
            "required": {
                "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": PROMPT_TOOLTIP}),
                "model": (choices, {
                    "default": choices[0],
                    "tooltip": "A CLIP model folder in models/doodl/clip: PickScore_v1/ (a copy of "
                               f"huggingface.co/{PICKSCORE_REPO}; '{PICKSCORE_DOWNLOAD}' fetches "
                               "its config.json and weights once, about 4 GB), or any transformers/"
                               "open_clip CLIP folder (reported as clip_score)."}),
                **_goal_inputs(25.0, 0.0, 100.0, 0.1, "PickScore is about 18-24"),
                "precision": (PRECISIONS, {"default": "fp32", "tooltip": PRECISION_TOOLTIP}),
            },
        }

    def build(self, prompt, model, goal, target, precision):
        prompt, target = _prompt(prompt), _target(goal, target)
        if model == PICKSCORE_DOWNLOAD:
            path = _download_pickscore()
            key = ("download", path, precision)
        else:
            kind, path = folders.resolve_clip_model(model)
            if kind != "folder":
                raise ValueError(f"'model' must be a CLIP model folder (config.json or "
                                 f"open_clip_config.json + weights), got the file '{model}'")
            key = _mtime_key(path, precision)
        bundle = self._cached("model", key, lambda: load_pickscore(path, dtype=precision))
        name = "pickscore" if "pickscore" in os.path.basename(path.rstrip("/")).lower() \
            else "clip_score"
        with torch.inference_mode(False):
            return (PickScoreScorer.from_bundle(bundle, prompt, target, score_name=name),)


# ----------------------------------------------------------------------------------- HPS


def _hps_choices() -> list[str]:
    files = folders.folder_list("doodl_hps")
    return files + [f"{DOWNLOAD}{name}" for name in HPS_FILES if name not in files]


@_output
class DOODLHPSScorer(_ModelCache):
    DESCRIPTION = ("Human Preference Score v2 / v2.1 (an open_clip ViT-H-14 fine-tuned on "
                   "HPDv2): score = cosine of the normalized image and prompt embeddings, as the "
                   "hpsv2 package computes it (about 0.2-0.35); loss = -score. num_crops 0 uses "
                   "HPS's own preprocessing (longest side to 224, black padding). ReNO optimizes "
                   "HPSv2.1 with weight 5.0.")

    @classmethod
    def INPUT_TYPES(cls):
        choices = _hps_choices()
        preferred = next((c for c in choices if "v2.1" in c), choices[0])
        archs = _architectures()
        return {
            "required": {
                "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": PROMPT_TOOLTIP}),
                "checkpoint": (choices, {
                    "default": preferred,
                    "tooltip": "HPS checkpoint in models/doodl/hps: HPS_v2.1_compressed.pt or "
                               f"HPS_v2_compressed.pt from {HPS_SOURCE}; 'download:' fetches it "
                               "once (about 2 GB)."}),
                "architecture": (archs, {
                    "default": HPS_ARCH if HPS_ARCH in archs else archs[0],
                    "tooltip": "The open_clip architecture of the checkpoint: ViT-H-14 for the "
                               "published HPSv2 and HPSv2.1 files."}),
                **_goal_inputs(0.35, -1.0, 1.0, 0.005, "HPS is a cosine, about 0.2-0.35"),
                "precision": (PRECISIONS, {"default": "fp32", "tooltip": PRECISION_TOOLTIP}),
            },
        }

    def build(self, prompt, checkpoint, architecture, goal, target, precision):
        prompt, target = _prompt(prompt), _target(goal, target)
        if checkpoint.startswith(DOWNLOAD):
            name = checkpoint[len(DOWNLOAD):]
            if name not in HPS_FILES:
                raise ValueError(f"unknown HPS download {name!r}; choose one of {sorted(HPS_FILES)}")
            path = folders.download_file(HPS_FILES[name], "doodl_hps", name)
        else:
            path = folders.resolve_file("doodl_hps", checkpoint, "HPS checkpoint", HPS_SOURCE)
        if architecture == "auto":
            architecture = HPS_ARCH
        bundle = self._cached("hps", _mtime_key(path, architecture, precision),
                              lambda: load_hps(path, architecture, dtype=precision))
        return (HPSScorer.from_bundle(bundle, prompt, target),)


# ----------------------------------------------------------------------------------- ImageReward


def _imagereward_choices() -> list[str]:
    files = folders.folder_list("doodl_imagereward")
    return files + ([] if IMAGEREWARD_NAME in files else [f"{DOWNLOAD}{IMAGEREWARD_NAME}"])


@_output
class DOODLImageRewardScorer(_ModelCache):
    DESCRIPTION = ("ImageReward (BLIP ViT-L image encoder, BERT text encoder cross-attending to "
                   "the image, MLP head) trained on human preference rankings: the score is "
                   "normalized as the image-reward package does (about -2..2; 0 = average); "
                   "loss = -score. Needs ImageReward.pt, med_config.json and bert-base-uncased's "
                   "vocab.txt in models/doodl/imagereward. ReNO weights it 1.0.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": PROMPT_TOOLTIP}),
                "checkpoint": (_imagereward_choices(), {
                    "tooltip": "ImageReward.pt in models/doodl/imagereward, with med_config.json "
                               "and vocab.txt beside it; 'download:' fetches all three once "
                               f"({IMAGEREWARD_SOURCE}; about 1.8 GB)."}),
                **_goal_inputs(2.0, -10.0, 10.0, 0.05, "ImageReward is about -2..2"),
                "precision": (PRECISIONS, {"default": "fp32", "tooltip": PRECISION_TOOLTIP}),
            },
        }

    def build(self, prompt, checkpoint, goal, target, precision):
        prompt, target = _prompt(prompt), _target(goal, target)
        if checkpoint.startswith(DOWNLOAD):
            path = None
            for name, url in IMAGEREWARD_FILES.items():
                got = folders.download_file(url, "doodl_imagereward", name)
                path = got if name == IMAGEREWARD_NAME else path
        else:
            path = folders.resolve_file("doodl_imagereward", checkpoint, "ImageReward checkpoint",
                                        IMAGEREWARD_SOURCE)
        bundle = self._cached("imagereward", _mtime_key(path, precision),
                              lambda: load_imagereward(path, dtype=precision))
        return (ImageRewardScorer(bundle, prompt, target),)


NODE_CLASS_MAPPINGS = {
    "DOODLPickScoreScorer": DOODLPickScoreScorer,
    "DOODLHPSScorer": DOODLHPSScorer,
    "DOODLImageRewardScorer": DOODLImageRewardScorer,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "DOODLPickScoreScorer": "DOODL PickScore Scorer",
    "DOODLHPSScorer": "DOODL HPSv2 Scorer",
    "DOODLImageRewardScorer": "DOODL ImageReward Scorer",
}
