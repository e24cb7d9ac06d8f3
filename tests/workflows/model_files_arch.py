"""Tiny random files for the SDXL / Flux workflows (``specs_arch.py``), under their real file names.

=================================================  ===================================================
file (under the temporary models root)             contents
=================================================  ===================================================
``checkpoints/sd_xl_turbo_1.0_fp16.safetensors``    the tiny SDXL UNet of ``tests/comfy/tiny_models``
``checkpoints/sd_xl_base_1.0.safetensors``          (``sdxl``: ComfyUI's KOALA_700M layout of
                                                    ``model_base.SDXL``; seeds 0 and 1), a TAESD VAE
                                                    (4 channels), the **full-size** random CLIP-L of
                                                    the SD1.5 checkpoint and a CLIP-G at the real width
                                                    1280 with 3 layers and MLP 256 (SDXL checkpoint
                                                    layout: ``conditioner.embedders.{0,1}``)
``diffusion_models/flux1-schnell.safetensors``      the tiny Flux schnell / dev DiTs (hidden 64, one
``diffusion_models/flux1-dev.safetensors``          double and one single block)
``text_encoders/clip_l.safetensors``                the full-size random CLIP-L (text_model layout)
``text_encoders/t5xxl_fp16.safetensors``            a T5 encoder with T5-XXL's width 4096, 24 layers
                                                    and vocabulary (what ComfyUI's detector checks),
                                                    but 2 heads of 16 and an MLP of 32 (143 M params,
                                                    almost all the 32128 x 4096 embedding)
``vae/ae.safetensors``                              a 16-channel TAESD (Flux's latent channels)
=================================================  ===================================================

Flux's hidden size, T5's heads/MLP and CLIP-G's depth/MLP are fixed in ComfyUI's code; the server
(and in-process users) load these files with the test-only patch of ``tests/comfy/tiny_widths.py``,
which reads those widths from the tensors. Everything is fp16 (ComfyUI computes in fp32 on CPU).
Measured on this 2-core machine: writing all of them takes about 7 s (drawing the T5 embedding and
the CLIP towers dominates), 1.6 GB on disk; loading the SDXL checkpoint 0.8 s and encoding a prompt
0.3 s; DualCLIPLoader (flux) + one encode about 2 s. ComfyUI logs no missing or unexpected keys.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

SDXL_TURBO = "sd_xl_turbo_1.0_fp16.safetensors"
SDXL_BASE = "sd_xl_base_1.0.safetensors"
FLUX_SCHNELL = "flux1-schnell.safetensors"
FLUX_DEV = "flux1-dev.safetensors"
CLIP_L = "clip_l.safetensors"
T5XXL = "t5xxl_fp16.safetensors"
FLUX_VAE = "ae.safetensors"

TINY_CLIP_G = {"num_hidden_layers": 3, "intermediate_size": 256}  # SDXL reads layer -2: > 2 layers
TINY_T5 = {"d_ff": 32, "num_heads": 2, "d_kv": 16}


def _save(sd: dict, path: Path) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(False):
        save_file({k: v.to(torch.float16).contiguous() for k, v in sd.items()}, str(path))
    return path


@functools.lru_cache(maxsize=1)
def _clip_g_state_dict() -> dict:
    from comfy.sdxl_clip import SDXLClipG

    from tests.workflows.model_files import _random_like

    with torch.inference_mode(False), torch.device("meta"):
        template = SDXLClipG(device="meta", model_options={"clip_g_model_config": dict(TINY_CLIP_G)}).state_dict()
    template.pop("logit_scale", None)
    with torch.inference_mode(False):
        return _random_like(template, seed=12)


@functools.lru_cache(maxsize=1)
def _t5_state_dict() -> dict:
    import json
    import os

    import comfy.ops
    import comfy.text_encoders.sd3_clip as sd3_clip
    from comfy.text_encoders.t5 import T5

    from tests.workflows.model_files import _random_like

    with open(os.path.join(os.path.dirname(sd3_clip.__file__), "t5_config_xxl.json")) as f:
        config = {**json.load(f), **TINY_T5}
    with torch.inference_mode(False):
        template = T5(config, torch.float16, "meta", comfy.ops.manual_cast).state_dict()
        return _random_like(template, seed=13)


def _sdxl_checkpoint(seed: int) -> dict:
    from tests.comfy.tiny_models import tiny_unet_state_dict, tiny_vae_state_dict
    from tests.workflows.model_files import _sd1_clip_state_dict

    sd = {"model.diffusion_model." + k: v for k, v in tiny_unet_state_dict("sdxl", seed).items()}
    sd.update({"first_stage_model." + k: v for k, v in tiny_vae_state_dict("sdxl", "taesd", seed).items()})
    sd.update({"conditioner.embedders.0." + k: v for k, v in _sd1_clip_state_dict().items()})
    sd.update({"conditioner.embedders.1.model." + k: v for k, v in _clip_g_state_dict().items()})
    return sd


def write_arch_models(models_root: Path) -> dict:
    """Write every file above that is missing; returns {file name: path}."""
    from tests.comfy.tiny_models import tiny_unet_state_dict, tiny_vae_state_dict
    from tests.workflows.model_files import _sd1_clip_state_dict

    root = Path(models_root)
    jobs = {
        root / "checkpoints" / SDXL_TURBO: lambda: _sdxl_checkpoint(0),
        root / "checkpoints" / SDXL_BASE: lambda: _sdxl_checkpoint(1),
        root / "diffusion_models" / FLUX_SCHNELL: lambda: tiny_unet_state_dict("flux_schnell", 0),
        root / "diffusion_models" / FLUX_DEV: lambda: tiny_unet_state_dict("flux", 0),
        root / "text_encoders" / CLIP_L: lambda: {k.removeprefix("transformer."): v
                                                 for k, v in _sd1_clip_state_dict().items()},
        root / "text_encoders" / T5XXL: _t5_state_dict,
        root / "vae" / FLUX_VAE: lambda: tiny_vae_state_dict("flux", "taesd", 0),
    }
    out = {}
    for path, make in jobs.items():
        if not path.is_file():
            _save(make(), path)
        out[path.name] = path
    return out
