"""Random-weight reward models written in the published file layouts (tests and workflow files).

* PickScore: a transformers ``CLIPModel`` folder (``config.json`` + ``model.safetensors``), the
  layout of ``yuvalkirstain/PickScore_v1`` (and of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``).
* HPSv2/2.1: ``torch.save({"state_dict": open_clip_model.state_dict(), ...})`` like
  ``HPS_v2*_compressed.pt`` (the open_clip architecture's own key layout).
* ImageReward: ``ImageReward.pt`` (a plain state dict: ``blip.visual_encoder.*`` (timm/BLIP ViT
  names), ``blip.text_encoder.*`` (BERT names, cross-attention keys/values of the image width),
  BLIP's unused ``blip.vision_proj``/``blip.text_proj``, ``mlp.layers.{0,2,4,6,7}``) written key by
  key from shapes here (not from the pack's modules), plus ``med_config.json`` and a ``vocab.txt``.

Sizes: ``tiny=True`` gives small widths where the layout allows them (the ImageReward head keeps
its fixed 1024-128-64-16 hidden sizes; the text width feeds it).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

#: a small BERT vocabulary: the special tokens at BERT's ids, words, pieces, punctuation
TINY_VOCAB = (["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
              + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + list("abcdefghijklmnopqrstuvwxyz")
              + ["a", "an", "the", "of", "on", "in", "with", "and", "red", "blue", "green", "fox",
                 "cat", "dog", "bird", "bear", "book", "small", "large", "sitting", "photo",
                 "painting", "cafe", "sun", "##s", "##ing", "##ed", "##er", "##y", "##e", "##a",
                 "##o", "##n", "##t", "##r", "##l", "##i"])

TINY_MED_CONFIG = {
    "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 64, "initializer_range": 0.02,
    "intermediate_size": 128, "layer_norm_eps": 1e-12, "max_position_embeddings": 64,
    "model_type": "bert", "num_attention_heads": 2, "num_hidden_layers": 2, "pad_token_id": 0,
    "type_vocab_size": 2, "vocab_size": len(TINY_VOCAB) + 2, "encoder_width": 768,
    "add_cross_attention": True,
}
#: the published med_config.json (BLIP / ImageReward)
FULL_MED_CONFIG = dict(TINY_MED_CONFIG, hidden_size=768, intermediate_size=3072,
                       max_position_embeddings=512, num_attention_heads=12, num_hidden_layers=12,
                       vocab_size=30524)
TINY_VISION = {"width": 128, "depth": 2, "patch": 16, "image_size": 64}
FULL_VISION = {"width": 1024, "depth": 24, "patch": 16, "image_size": 224}  # BLIP ViT-L/16

#: a small open_clip architecture for HPS-layout files (registered by ``register_tiny_hps``)
TINY_HPS_ARCH = "DoodlTinyHPS-test"
TINY_HPS_CONFIG = {
    "embed_dim": 32, "quick_gelu": False,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def _randn(gen, *shape, scale=None):
    fan_in = shape[-1] if len(shape) > 1 else 1
    return torch.randn(shape, generator=gen) * (scale if scale is not None else fan_in ** -0.5)


def imagereward_state_dict(med_config: dict, vision: dict, seed: int = 0,
                           dtype=torch.float32) -> dict:
    """Every tensor of ``ImageReward.pt`` with its published name and shape, random values."""
    g = torch.Generator().manual_seed(seed)
    w, h = vision["width"], med_config["hidden_size"]
    inter, mlp_hidden = med_config["intermediate_size"], vision["width"] * 4
    grid = vision["image_size"] // vision["patch"]
    sd = {}

    def linear(name, out_f, in_f):
        sd[f"{name}.weight"] = _randn(g, out_f, in_f)
        sd[f"{name}.bias"] = _randn(g, out_f, scale=0.02)

    def norm(name, n):
        sd[f"{name}.weight"] = 1 + _randn(g, n, scale=0.05)
        sd[f"{name}.bias"] = _randn(g, n, scale=0.05)

    v = "blip.visual_encoder"
    sd[f"{v}.cls_token"] = _randn(g, 1, 1, w, scale=0.02)
    sd[f"{v}.pos_embed"] = _randn(g, 1, grid * grid + 1, w, scale=0.02)
    sd[f"{v}.patch_embed.proj.weight"] = _randn(g, w, 3, vision["patch"], vision["patch"],
                                                scale=(3 * vision["patch"] ** 2) ** -0.5)
    sd[f"{v}.patch_embed.proj.bias"] = _randn(g, w, scale=0.02)
    for i in range(vision["depth"]):
        b = f"{v}.blocks.{i}"
        norm(f"{b}.norm1", w)
        linear(f"{b}.attn.qkv", 3 * w, w)
        linear(f"{b}.attn.proj", w, w)
        norm(f"{b}.norm2", w)
        linear(f"{b}.mlp.fc1", mlp_hidden, w)
        linear(f"{b}.mlp.fc2", w, mlp_hidden)
    norm(f"{v}.norm", w)
    t = "blip.text_encoder"
    sd[f"{t}.embeddings.position_ids"] = torch.arange(med_config["max_position_embeddings"])[None]
    sd[f"{t}.embeddings.word_embeddings.weight"] = _randn(g, med_config["vocab_size"], h, scale=0.5)
    sd[f"{t}.embeddings.position_embeddings.weight"] = _randn(
        g, med_config["max_position_embeddings"], h, scale=0.5)
    norm(f"{t}.embeddings.LayerNorm", h)
    for i in range(med_config["num_hidden_layers"]):
        lay = f"{t}.encoder.layer.{i}"
        for part, kv in (("attention", h), ("crossattention", w)):
            linear(f"{lay}.{part}.self.query", h, h)
            linear(f"{lay}.{part}.self.key", h, kv)
            linear(f"{lay}.{part}.self.value", h, kv)
            linear(f"{lay}.{part}.output.dense", h, h)
            norm(f"{lay}.{part}.output.LayerNorm", h)
        linear(f"{lay}.intermediate.dense", inter, h)
        linear(f"{lay}.output.dense", h, inter)
        norm(f"{lay}.output.LayerNorm", h)
    linear("blip.vision_proj", 256, w)  # BLIP's contrastive projections: unused by ImageReward
    linear("blip.text_proj", 256, h)
    for i, (o, n) in zip((0, 2, 4, 6, 7), ((1024, h), (128, 1024), (64, 128), (16, 64), (1, 16))):
        linear(f"mlp.layers.{i}", o, n)
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}


def write_imagereward(folder: Path, tiny: bool = True, seed: int = 0) -> Path:
    """``folder/ImageReward.pt`` + ``med_config.json`` + ``vocab.txt``; returns the checkpoint."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    med = TINY_MED_CONFIG if tiny else FULL_MED_CONFIG
    (folder / "med_config.json").write_text(json.dumps(med, indent=2))
    vocab = TINY_VOCAB + [f"w{i}" for i in range(max(0, med["vocab_size"] - 2 - len(TINY_VOCAB)))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    path = folder / "ImageReward.pt"
    with torch.inference_mode(False):
        torch.save(imagereward_state_dict(med, TINY_VISION if tiny else FULL_VISION, seed), path)
    return path


def register_tiny_hps(root: Path) -> str:
    """Register the tiny open_clip architecture with open_clip (idempotent); its name."""
    import open_clip

    if TINY_HPS_ARCH not in open_clip.list_models():
        cfg = Path(root) / f"{TINY_HPS_ARCH}.json"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(json.dumps(TINY_HPS_CONFIG))
        open_clip.add_model_config(str(cfg))
    return TINY_HPS_ARCH


def write_hps(path: Path, arch: str, seed: int = 0, dtype=torch.float16) -> Path:
    """An HPS-layout checkpoint (``{"state_dict": ...}``) of a random open_clip ``arch``."""
    import open_clip

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(False):
        torch.manual_seed(seed)
        model = open_clip.create_model(arch, pretrained=None, device="cpu")
        with torch.no_grad():
            model.logit_scale.fill_(4.6052)
        sd = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
              for k, v in model.state_dict().items()}
        torch.save({"state_dict": sd, "epoch": 1, "name": "random-hps-layout"}, path)
    return path


def write_hf_clip(folder: Path, tiny: bool = True, seed: int = 0, image_size: int = 32) -> Path:
    """A transformers ``CLIPModel`` folder (config.json + model.safetensors), PickScore's layout;
    ``tiny=False`` is CLIP-H/14 (PickScore_v1's and laion ViT-H-14's configuration)."""
    import transformers

    folder = Path(folder)
    if tiny:
        text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu")
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, image_size=image_size, patch_size=8,
                      hidden_act="gelu")
        projection = 32
    else:
        text = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096,
                    num_hidden_layers=24, num_attention_heads=16, max_position_embeddings=77,
                    hidden_act="gelu")
        vision = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                      num_attention_heads=16, image_size=224, patch_size=14, hidden_act="gelu")
        projection = 1024
    with torch.inference_mode(False):
        torch.manual_seed(seed)
        config = transformers.CLIPConfig(text_config=text, vision_config=vision,
                                         projection_dim=projection, logit_scale_init_value=4.6052)
        transformers.CLIPModel(config).eval().save_pretrained(str(folder))
    return folder
