"""The seventh example workflow: preference optimization with ReNO's four-reward weighting.

Appended to ``specs.WORKFLOWS`` (one line at the end of ``specs.py``). Model names are the ones
real users have (the tests put tiny random files under these names, ``model_files.py``):

* ``models/doodl/hps/HPS_v2.1_compressed.pt`` (``xswu/HPSv2``),
* ``models/doodl/imagereward/ImageReward.pt`` + ``med_config.json`` (``THUDM/ImageReward``) +
  ``vocab.txt`` (``google-bert/bert-base-uncased``),
* ``models/doodl/clip/PickScore_v1/`` (``yuvalkirstain/PickScore_v1``),
* ``models/doodl/clip/CLIP-ViT-H-14-laion2B-s32B-b79K/`` (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``,
  ReNO's CLIP reward),
* the aesthetic monitor: ``models/doodl/aesthetic/sa_0_4_vit_l_14_linear.pth`` on
  ``models/doodl/clip/clip-vit-large-patch14/``.
"""
from __future__ import annotations

from tests.workflows.specs import (AESTHETIC_HEAD, CLIP_L14_OPENAI, MODELS_NOTE, Node, Workflow, _doodl,
                                   _note, _outputs, _sd15)

HPS_FILE = "HPS_v2.1_compressed.pt"
HPS_ARCH = "ViT-H-14"
IMAGEREWARD_FILE = "ImageReward.pt"
PICKSCORE = "PickScore_v1/"
CLIP_H14 = "CLIP-ViT-H-14-laion2B-s32B-b79K/"
#: ReNO's weights (Eyring et al. 2024, section 4 / its code's defaults)
RENO_WEIGHTS = {"hps": 5.0, "imagereward": 1.0, "pickscore": 0.05, "clip": 0.01}

PREFERENCE_PROMPT = "A red fox reading a newspaper in a cozy cafe, warm light, detailed illustration"

preference = Workflow("doodl7_preference", "DOODL preference optimization with ReNO's reward mix", [
    _note("note", "## DOODL: human-preference rewards (ReNO's weighting)\n\n"
          "DOODL optimizes the starting noise for the weighted sum ReNO (NeurIPS 2024) uses: "
          f"**HPSv2.1 x {RENO_WEIGHTS['hps']:g}**, **ImageReward x {RENO_WEIGHTS['imagereward']:g}**, "
          f"**PickScore x {RENO_WEIGHTS['pickscore']:g}** and the logit-scaled **CLIP score x "
          f"{RENO_WEIGHTS['clip']:g}** (a PickScore node on laion CLIP-ViT-H-14: ReNO's CLIP reward is "
          "100 x cosine). Each reward's loss is -score, so these weights mean what they mean in ReNO.\n\n"
          "The **aesthetic head is the held-out monitor**: scored every iteration, never optimized. Its "
          "curve (orange, in the live view) and its scores in the history show *reward hacking*: the "
          "optimized rewards rise while an independent judge falls.\n\n"
          "Departures from ReNO: DOODL backpropagates through a 50-step EDICT chain of SD1.5 (ReNO "
          "through one-step models), with DOODL's update (lr 1, clip 1e-3, momentum 0.9, perturbation "
          "1e-4), 20 iterations for a first try, and DOODL's 16 random crops per image (an augmentation "
          "against adversarial gradients; ReNO scores the whole image once: set `num_crops` to 0 for "
          "that, which also uses each model's own preprocessing). About 4 GB of reward models in bf16.\n\n" + MODELS_NOTE +
          f"- `models/doodl/hps/{HPS_FILE}` (huggingface.co/xswu/HPSv2)\n"
          f"- `models/doodl/imagereward/{IMAGEREWARD_FILE}` and `med_config.json` "
          "(huggingface.co/THUDM/ImageReward) and `vocab.txt` (huggingface.co/google-bert/bert-base-uncased)\n"
          f"- `models/doodl/clip/{PICKSCORE}` (a copy of huggingface.co/yuvalkirstain/PickScore_v1)\n"
          f"- `models/doodl/clip/{CLIP_H14}` (a copy of huggingface.co/laion/{CLIP_H14[:-1]})\n"
          f"- monitor: `models/doodl/aesthetic/{AESTHETIC_HEAD}` on `models/doodl/clip/{CLIP_L14_OPENAI}` "
          "(openai/clip-vit-large-patch14)\n\n"
          "The reward nodes' `download:` entries fetch HPS, ImageReward and PickScore once.",
          size=(460, 560)),
    *_sd15(PREFERENCE_PROMPT),
    Node("latent", "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}, col=1),
    Node("hps", "DOODLHPSScorer", {"prompt": PREFERENCE_PROMPT, "checkpoint": HPS_FILE, "architecture": HPS_ARCH,
                                   "precision": "bf16"},
         {"prompt": ("prompt", 0)}, title="HPSv2.1", col=2, color="blue"),
    Node("imagereward", "DOODLImageRewardScorer", {"prompt": PREFERENCE_PROMPT, "checkpoint": IMAGEREWARD_FILE,
                                                   "precision": "bf16"},
         {"prompt": ("prompt", 0)}, title="ImageReward", col=2, color="blue"),
    Node("pickscore", "DOODLPickScoreScorer", {"prompt": PREFERENCE_PROMPT, "model": PICKSCORE, "precision": "bf16"},
         {"prompt": ("prompt", 0)}, title="PickScore", col=2, color="blue"),
    Node("clip", "DOODLPickScoreScorer", {"prompt": PREFERENCE_PROMPT, "model": CLIP_H14, "precision": "bf16"},
         {"prompt": ("prompt", 0)}, title="CLIP score (laion ViT-H-14)", col=2, color="blue"),
    Node("scorer", "DOODLCombineScorers",
         {"weight_1": RENO_WEIGHTS["hps"], "weight_2": RENO_WEIGHTS["imagereward"],
          "weight_3": RENO_WEIGHTS["pickscore"], "weight_4": RENO_WEIGHTS["clip"]},
         {"scorer_1": ("hps", 0), "scorer_2": ("imagereward", 0), "scorer_3": ("pickscore", 0),
          "scorer_4": ("clip", 0)}, title="ReNO reward mix", col=3, color="blue"),
    Node("monitor", "DOODLAestheticScorer", {"head": AESTHETIC_HEAD, "backbone": CLIP_L14_OPENAI,
                                             "goal": "maximize", "precision": "bf16"},
         title="Held-out monitor: aesthetic head", col=3, color="yellow"),
    _doodl({"cfg": 7.5, "seed": 0, "iterations": 20},
           {"latent": ("latent", 0), "monitor": ("monitor", 0)}, col=4),
    *_outputs("DOODL/preference", col=5),
])

WORKFLOWS = [preference]
