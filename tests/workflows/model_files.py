"""Tiny random model files under the exact names the example workflows use (``specs.py``).

What goes where (all random weights, made for the test, never downloaded):

=================================================  ===================================================
file (under the temporary models root)             contents
=================================================  ===================================================
``checkpoints/v1-5-pruned-emaonly.safetensors``     the tiny SD15 UNet of ``tests/comfy/tiny_models``
                                                    (``eps``), a TAESD VAE and a **full-size** random
                                                    SD1 CLIP-L text encoder (123.6 M params, fp16), so
                                                    ``CheckpointLoaderSimple`` returns a real CLIP and
                                                    ``CLIPTextEncode`` runs unchanged
``doodl/clip/CLIP-ViT-{B-32,L-14,g-14}-*/``         open_clip folders (``open_clip_config.json`` +
                                                    ``open_clip_model.safetensors``, the layout of the
                                                    Hugging Face ``laion/CLIP-*`` repositories) holding a
                                                    tiny ViT (32 px, width 32) + text tower
``doodl/clip/clip-vit-large-patch14/``              a transformers ``CLIPModel`` folder (tiny towers,
                                                    projection 768 like ViT-L/14, for the aesthetic head)
``doodl/aesthetic/sa_0_4_vit_l_14_linear.pth``      a LAION-layout linear head (768 -> 1), scores ~5.5
``doodl/aesthetic/sa_0_4_vit_b_32_linear.pth``      the same for ViT-B/32 (512 -> 1), with
``doodl/clip/clip-vit-base-patch32/``               a transformers ``CLIPModel`` folder, projection 512
``doodl/wsdan/dog.pth.tar``                         a WS-DAN checkpoint in the published layout
                                                    (``module.``-prefixed ``state_dict``, 120 classes);
                                                    the Inception-v3 trunk has its fixed full size
``input/example.png``                               ComfyUI's own ``input/example.png`` (copied)
``doodl/hps/HPS_v2.1_compressed.pt``                an HPS-layout checkpoint of open_clip ``ViT-S-32-alt``
                                                    (the smallest built-in architecture; the CPU run
                                                    sets the node's architecture to it)
``doodl/imagereward/``                              ``ImageReward.pt`` + ``med_config.json`` +
                                                    ``vocab.txt`` (tiny widths, published layout)
``doodl/clip/PickScore_v1/``, ``.../CLIP-ViT-H-14-*/`` transformers ``CLIPModel`` folders (tiny towers)
=================================================  ===================================================

Measured on this 2-core machine (one torch thread): writing everything takes about 3 s (the CLIP-L
text encoder is 1.2 s to draw, 0.35 s to save, 285 MB on disk); loading the checkpoint through
``CheckpointLoaderSimple`` takes 0.3 s and one ``CLIPTextEncode`` 0.25 s. The VAE is TAESD rather
than the full SD KL VAE because a KL decode + backward of two 8x8 latents costs 1.5 s per DOODL
iteration on one thread against 0.07 s; both are key-detected by the same loader.

Why a full-size CLIP-L: ComfyUI builds the SD1 text encoder with a fixed configuration and loads
the checkpoint with ``strict=False``, so a smaller encoder would leave uninitialized weights.
"""
from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from tests.workflows import specs

OPEN_CLIP_FOLDERS = (specs.CLIP_B32, specs.CLIP_L14, specs.CLIP_G14)
TINY_OPEN_CLIP = {
    "model_cfg": {
        "embed_dim": 16, "quick_gelu": False,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                       "std": [0.26862954, 0.26130258, 0.27577711]},
}


@dataclass
class WorkflowModels:
    models_root: Path
    input_dir: Path
    checkpoint: Path


def _random_like(template: dict, seed: int, dtype=torch.float16) -> dict:
    """Unit-variance-preserving random tensors (weights ~ N(0, 1/fan_in); norms 1; biases 0)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in template.items():
        if len(v.shape) >= 2:
            t = torch.randn(tuple(v.shape), generator=g) / max(1, v.shape[-1]) ** 0.5
        elif k.endswith("weight"):
            t = torch.ones(tuple(v.shape))
        else:
            t = torch.zeros(tuple(v.shape))
        out[k] = t.to(dtype)
    return out


@functools.lru_cache(maxsize=1)
def _sd1_clip_state_dict() -> dict:
    import comfy.sd1_clip

    with torch.inference_mode(False), torch.device("meta"):
        template = comfy.sd1_clip.SDClipModel().state_dict()
    template.pop("logit_scale", None)  # not part of SD checkpoints
    with torch.inference_mode(False):
        return _random_like(template, seed=11)


def write_checkpoint(path: Path, seed: int = 0) -> Path:
    """An SD1.5-layout checkpoint: tiny UNet + TAESD VAE + full-size random CLIP-L text encoder."""
    from safetensors.torch import save_file

    from tests.comfy.tiny_models import tiny_unet_state_dict, tiny_vae_state_dict

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(False):
        sd = {"cond_stage_model." + k: v for k, v in _sd1_clip_state_dict().items()}
        sd.update({"model.diffusion_model." + k: v.half() for k, v in tiny_unet_state_dict("eps", seed).items()})
        sd.update({"first_stage_model." + k: v.half() for k, v in tiny_vae_state_dict("eps", "taesd", seed).items()})
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def write_open_clip_folder(folder: Path, seed: int) -> Path:
    import open_clip
    from safetensors.torch import save_file

    if (folder / "open_clip_model.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_OPEN_CLIP, indent=1))
    with torch.inference_mode(False):
        torch.manual_seed(seed)
        model = open_clip.create_model("local-dir:" + str(folder), load_weights=False, device="cpu")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                  str(folder / "open_clip_model.safetensors"))
    return folder


def write_hf_clip_folder(folder: Path, projection_dim: int = 768, seed: int = 3) -> Path:
    import transformers

    if (folder / "config.json").is_file():
        return folder
    with torch.inference_mode(False):
        torch.manual_seed(seed)
        config = transformers.CLIPConfig(
            text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406,
                             eos_token_id=49407, pad_token_id=49407),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=32, patch_size=8),
            projection_dim=projection_dim)
        transformers.CLIPModel(config).eval().save_pretrained(str(folder))
    return folder


def write_aesthetic_head(path: Path, dim: int = 768, seed: int = 4) -> Path:
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode(False):
        torch.save({"weight": torch.randn(1, dim, generator=g) * 2.0, "bias": torch.tensor([5.5])}, path)
    return path


def write_wsdan(path: Path, num_classes: int = 120, seed: int = 5) -> Path:
    from doodl_nodes.scorers.wsdan import WSDAN

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(False):
        torch.manual_seed(seed)
        model = WSDAN(num_classes)
        sd = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
        torch.save({"epoch": 80, "state_dict": sd, "best_prec1": torch.tensor([85.0]),
                    "center": torch.zeros(num_classes, 8)}, path)
    return path


def write_preference_models(doodl_root: Path) -> None:
    """The reward files of the preference workflow (``specs_rewards.py``), in published layouts."""
    from tests.scorers import preference_files as pf
    from tests.workflows import specs_rewards as sr

    if not (doodl_root / "hps" / sr.HPS_FILE).is_file():
        pf.write_hps(doodl_root / "hps" / sr.HPS_FILE, "ViT-S-32-alt", seed=30)
    if not (doodl_root / "imagereward" / sr.IMAGEREWARD_FILE).is_file():
        pf.write_imagereward(doodl_root / "imagereward", seed=31)
    for i, name in enumerate((sr.PICKSCORE, sr.CLIP_H14)):
        if not (doodl_root / "clip" / name / "config.json").is_file():
            pf.write_hf_clip(doodl_root / "clip" / name.rstrip("/"), seed=32 + i)


def write_input_image(input_dir: Path, comfyui_root: Path | None) -> Path:
    """ComfyUI's own ``input/example.png`` (a synthetic image only if the checkout lacks it)."""
    input_dir.mkdir(parents=True, exist_ok=True)
    dest = input_dir / specs.IMAGE
    src = comfyui_root / "input" / specs.IMAGE if comfyui_root else None
    if src is not None and src.is_file():
        shutil.copyfile(src, dest)
    else:
        from PIL import Image

        yy, xx = torch.meshgrid(torch.linspace(0, 1, 256), torch.linspace(0, 1, 256), indexing="ij")
        img = torch.stack([xx, yy, 1 - xx * yy], -1).mul(255).byte().numpy()
        Image.fromarray(img).save(dest)
    return dest


def write_workflow_models(models_root: Path, input_dir: Path, comfyui_root: Path | None = None) -> WorkflowModels:
    """Everything the example workflows load, under ``models_root`` (+ the input image)."""
    models_root = Path(models_root)
    ckpt = write_checkpoint(models_root / "checkpoints" / specs.CHECKPOINT)
    from tests.workflows.model_files_arch import write_arch_models  # SDXL / Flux workflows (issue 14)

    write_arch_models(models_root)
    clip_root = models_root / "doodl" / "clip"
    for i, name in enumerate(OPEN_CLIP_FOLDERS):
        write_open_clip_folder(clip_root / name.rstrip("/"), seed=20 + i)
    write_hf_clip_folder(clip_root / specs.CLIP_L14_OPENAI.rstrip("/"))
    write_hf_clip_folder(clip_root / specs.CLIP_B32_OPENAI.rstrip("/"), projection_dim=512, seed=6)
    write_aesthetic_head(models_root / "doodl" / "aesthetic" / specs.AESTHETIC_HEAD)
    write_aesthetic_head(models_root / "doodl" / "aesthetic" / specs.AESTHETIC_HEAD_B32, dim=512, seed=7)
    write_wsdan(models_root / "doodl" / "wsdan" / specs.WSDAN_DOGS)
    write_preference_models(models_root / "doodl")
    write_input_image(Path(input_dir), comfyui_root)
    return WorkflowModels(models_root, Path(input_dir), ckpt)
