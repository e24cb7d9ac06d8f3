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
