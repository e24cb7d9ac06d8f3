"""Input definitions shared by the node classes (one place for names, ranges and tooltips)."""
from __future__ import annotations

CATEGORY = "DOODL"

MODEL = ("MODEL", {"tooltip": "The diffusion model (any ComfyUI model: SD1.x, SD2.x, SDXL, SD3, Flux...)."})
POSITIVE = ("CONDITIONING", {"tooltip": "Positive conditioning (what the image should show)."})
NEGATIVE = ("CONDITIONING", {"tooltip": "Negative conditioning (used for classifier-free guidance)."})
CFG = ("FLOAT", {"default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                 "tooltip": "Classifier-free guidance scale. 1.0 skips the negative pass (half the cost)."})
SIGMAS = ("SIGMAS", {"tooltip": "Noise levels from a scheduler node (e.g. BasicScheduler), descending. "
                                "Use the same SIGMAS for inversion and generation."})
P = ("FLOAT", {"default": 0.93, "min": 0.5, "max": 1.0, "step": 0.01,
               "tooltip": "EDICT mixing weight p. 0.93 is the paper's; values in [0.9, 0.97] work for ~50 steps. "
                          "1.0 disables mixing."})
LEAPFROG = ("BOOLEAN", {"default": True,
                        "tooltip": "Alternate which EDICT sequence is updated first on every step, as the "
                                   "official EDICT code does (recommended)."})
SEED = ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                "tooltip": "Seed of the starting noise (drawn exactly like ComfyUI's own samplers) and of "
                           "DOODL's perturbations and crops."})
LATENT_SIZE = ("LATENT", {"tooltip": "An empty latent (e.g. EmptyLatentImage) that sets the size and batch."})
EDICT_LATENT = ("EDICT_LATENT", {"tooltip": "An EDICT pair from EDICT Inversion (or DOODL's best pair). When "
                                            "connected, generation starts from it instead of seeded noise."})
SCORER = ("DOODL_SCORER", {"tooltip": "What to optimize for: a scorer node (CLIP text, CLIP image, aesthetic, "
                                      "WS-DAN, symmetry) or a DOODL Combine Scorers node."})
NUM_CROPS = ("INT", {"default": 16, "min": 0, "max": 128,
                     "tooltip": "Random crops per image fed to the scorer (the paper uses 16). 0 scores the "
                                "whole image once. More crops cost scorer time and memory."})
CUT_POWER = ("FLOAT", {"default": 0.3, "min": 0.01, "max": 10.0, "step": 0.01,
                       "tooltip": "Crop size distribution: side = rand^cut_power * (max - min) + min. Below 1 "
                                  "favours large crops (0.3 is DOODL's default)."})
CROP_REDUCTION = (["auto", "min", "mean"], {"default": "auto",
                  "tooltip": "How the crops' losses combine per image. auto: each scorer's own choice in the "
                             "released DOODL code (the best crop for CLIP text/image, the mean score for the "
                             "aesthetic head, the mean cross-entropy for WS-DAN; combined scorers keep each "
                             "part's own). min: the best crop for every scorer. mean: the mean loss."})
