"""EDICT nodes: a SAMPLER for SamplerCustom, exact inversion, and generation from an EDICT pair."""
from __future__ import annotations

import comfy.samplers

from ..bridge.edict_ops import generate_latent, invert_latent, sample_edict
from . import common as c


class EDICTSampler:
    DESCRIPTION = ("EDICT as a sampler for SamplerCustom / SamplerCustomAdvanced: deterministic, exactly "
                   "invertible sampling with two coupled latent sequences (float64 state). Costs two model "
                   "calls per step.")
    CATEGORY = c.CATEGORY + "/sampling"
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("An EDICT sampler; plug it into SamplerCustom's sampler input.",)
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"p": c.P, "leapfrog": c.LEAPFROG}}

    def get_sampler(self, p, leapfrog):
        return (comfy.samplers.KSAMPLER(sample_edict, {"p": float(p), "leapfrog": bool(leapfrog)}),)


class EDICTInversion:
    DESCRIPTION = ("Exact EDICT inversion: turns an encoded image (LoadImage -> VAEEncode) into the EDICT "
                   "noise pair that regenerates it exactly with EDICT Generate (same model, SIGMAS, p). Edit "
                   "by generating with another prompt, or optimize it with DOODL Optimize.")
    CATEGORY = c.CATEGORY + "/sampling"
    RETURN_TYPES = ("EDICT_LATENT", "LATENT")
    RETURN_NAMES = ("edict_latent", "noise_latent")
    OUTPUT_TOOLTIPS = ("The inverted EDICT pair (float64) with the model and sigmas it belongs to.",
                       "A LATENT view of the inverted noise x_T (for previews, or SamplerCustom with add_noise off).")
    FUNCTION = "invert"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": c.MODEL, "positive": c.POSITIVE, "negative": c.NEGATIVE, "cfg": c.CFG, "sigmas": c.SIGMAS,
            "latent": ("LATENT", {"tooltip": "The encoded image to invert (from VAEEncode)."}),
            "p": c.P, "leapfrog": c.LEAPFROG,
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    def invert(self, model, positive, negative, cfg, sigmas, latent, p, leapfrog, unique_id=None):
        el, view = invert_latent(model, positive, negative, cfg, sigmas, latent, p=p, leapfrog=leapfrog,
                                 node_id=unique_id)
        out = {k: v for k, v in latent.items() if k not in ("samples", "noise_mask")}
        out["samples"] = view
        return (el, out)


class EDICTGenerate:
    DESCRIPTION = ("EDICT generation: from an EDICT pair (exact reconstruction of an inverted image) or from "
                   "seeded noise of the latent's size. Same result as SamplerCustom with the EDICT sampler.")
    CATEGORY = c.CATEGORY + "/sampling"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The generated latent (decode it with VAEDecode).",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": c.MODEL, "positive": c.POSITIVE, "negative": c.NEGATIVE, "cfg": c.CFG, "sigmas": c.SIGMAS,
            "seed": c.SEED, "p": c.P, "leapfrog": c.LEAPFROG,
        }, "optional": {"edict_latent": c.EDICT_LATENT, "latent": c.LATENT_SIZE},
            "hidden": {"unique_id": "UNIQUE_ID"}}

    def generate(self, model, positive, negative, cfg, sigmas, seed, p, leapfrog, edict_latent=None,
                 latent=None, unique_id=None):
        samples = generate_latent(model, positive, negative, cfg, sigmas, edict_latent=edict_latent,
                                  latent=latent, seed=seed, p=p, leapfrog=leapfrog, node_id=unique_id)
        out = {k: v for k, v in (latent or {}).items() if k not in ("samples", "noise_mask")}
        out["samples"] = samples
        return (out,)


NODE_CLASS_MAPPINGS = {"EDICTSampler": EDICTSampler, "EDICTInversion": EDICTInversion,
                       "EDICTGenerate": EDICTGenerate}
NODE_DISPLAY_NAME_MAPPINGS = {"EDICTSampler": "EDICT Sampler", "EDICTInversion": "EDICT Inversion",
                              "EDICTGenerate": "EDICT Generate"}
