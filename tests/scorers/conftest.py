"""Tiny randomly initialized CLIP models (open_clip and transformers), built once per session."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
TINY_ARCH = "DoodlTinyCLIP-test"
EMBED_DIM = 16
IMAGE_SIZE = 32

TINY_OPEN_CLIP = {
    "embed_dim": EMBED_DIM,
    "quick_gelu": True,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 32, "patch_size": 8,
                   "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 2},
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run far faster on one thread here (two threads spin on a shared 2-core CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_open_clip(tmp_path_factory):
    """``(arch, checkpoint_path, model)``: a registered tiny open_clip architecture + safetensors.

    Weights are rounded to fp16 values (stored as fp32) so a ComfyUI fp16 copy is exact.
    """
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("open_clip")
    cfg = root / f"{TINY_ARCH}.json"
    cfg.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(str(cfg))
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_ARCH, pretrained=None)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    path = root / f"{TINY_ARCH}_random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return TINY_ARCH, path, model.eval()


@pytest.fixture(scope="session")
def tiny_hf_folder(tmp_path_factory):
    """A transformers CLIPModel folder (config.json + model.safetensors, no tokenizer files)."""
    import transformers

    folder = tmp_path_factory.mktemp("hf") / "tiny-hf-clip"
    torch.manual_seed(1)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=8),
        projection_dim=EMBED_DIM)
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture
def images():
    torch.manual_seed(2)
    return torch.rand(2, 3, 48, 40)


# ------------------------------------------------------------------ ComfyUI objects (tiny, random)

COMFY_VISION_CONFIG = {  # the vision tower of TINY_OPEN_CLIP, in ComfyUI's clip_vision format
    "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 32,
    "image_size": IMAGE_SIZE, "initializer_factor": 1.0, "initializer_range": 0.02,
    "intermediate_size": 128, "layer_norm_eps": 1e-5, "model_type": "clip_vision_model",
    "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": 2, "patch_size": 8,
    "projection_dim": EMBED_DIM, "torch_dtype": "float32",
}
TINY_TEXT = {"hidden_size": EMBED_DIM, "intermediate_size": 32, "num_attention_heads": 2,
             "num_hidden_layers": 3}


@pytest.fixture
def comfy_clip_vision(tiny_open_clip, tmp_path):
    """Factory: a ComfyUI ClipVisionModel holding the tiny open_clip vision weights, loaded like
    CLIPVisionLoader does (open_clip ``visual.*`` keys converted) under inference mode."""
    from tests.comfyui_env import require_comfyui

    require_comfyui()
    import comfy.cli_args
    import comfy.clip_vision

    def make(fp32=True, **config_overrides):
        cfg = dict(COMFY_VISION_CONFIG, **config_overrides)
        path = tmp_path / f"clip_vision_{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps(cfg))
        _, _, oc_model = tiny_open_clip
        sd = {k: v.clone() for k, v in oc_model.state_dict().items() if k.startswith("visual.")}
        args = comfy.cli_args.args
        old = args.fp32_text_enc
        args.fp32_text_enc = fp32
        try:
            with torch.inference_mode():  # as the loader node runs
                cv = comfy.clip_vision.ClipVisionModel(str(path))
                sd = comfy.clip_vision.convert_to_transformers(sd, "visual.")
                missing, unexpected = cv.load_sd(sd)
        finally:
            args.fp32_text_enc = old
        assert not missing and not unexpected, (missing, unexpected)
        return cv
    return make


@pytest.fixture
def comfy_text_clip():
    """Factory: a real ComfyUI CLIP object with tiny random text encoders (SDXL or SD1 layout)."""
    from types import SimpleNamespace

    from tests.comfyui_env import require_comfyui

    require_comfyui()
    import comfy.sd
    import comfy.sd1_clip
    import comfy.sdxl_clip

    def make(kind="sdxl"):
        if kind == "sdxl":
            target = SimpleNamespace(params={}, clip=comfy.sdxl_clip.SDXLClipModel,
                                     tokenizer=comfy.sdxl_clip.SDXLTokenizer)
        else:
            target = SimpleNamespace(params={}, clip=comfy.sd1_clip.SD1ClipModel,
                                     tokenizer=comfy.sd1_clip.SD1Tokenizer)
        options = {"clip_l_model_config": dict(TINY_TEXT), "clip_g_model_config": dict(TINY_TEXT)}
        with torch.inference_mode():
            clip = comfy.sd.CLIP(target=target, model_options=options)
            gen = torch.Generator().manual_seed(5)
            for name, p in clip.cond_stage_model.named_parameters():
                if "layer_norm" in name and name.endswith("weight"):
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        return clip
    return make
