"""Loading CLIP models for the scorers, offline unless the caller asks for a download.

Three sources, each giving a :class:`ClipBundle` (an image encoder plus, when the model has one, a
text encoder):

* **open_clip, architecture + local file** (:func:`load_open_clip` with ``checkpoint=``): the
  architecture is an open_clip model name (``ViT-B-32``, ``ViT-L-14-quickgelu`` ...); the file is a
  safetensors file or a weights-only PyTorch state dict, read by :func:`load_weights_file`.
* **open_clip, pretrained tag** (:func:`load_open_clip` with ``pretrained=``): open_clip downloads
  the weights (an explicit user action; needs a network) into ``cache_dir``.
* **open_clip folder** (a folder with ``open_clip_config.json`` and weights, e.g. a Hugging Face
  ``laion/CLIP-*`` repository) or **transformers folder** (``config.json`` with model_type ``clip``
  or ``clip_vision_model``): :func:`load_clip_folder`.

Models are built on the CPU in float32, then cast to ``dtype``; all weights are frozen. Nothing here
touches the network except an explicit ``pretrained=`` tag.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .base import freeze
from .encoders import HFCLIPImageEncoder, ImageEncoder, OpenCLIPImageEncoder, TextEncoder
from .encoders import module_device
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from .weights import WeightsFileError, extract_state_dict, load_weights_file, strip_prefix

__all__ = ["ClipBundle", "load_open_clip", "load_clip_folder", "clip_folder_kind",
           "hf_folder_state_dict", "guess_open_clip_arch", "OPEN_CLIP_CONFIG", "HF_CONFIG", "DTYPES"]

OPEN_CLIP_CONFIG = "open_clip_config.json"
HF_CONFIG = "config.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ClipBundle:
    """A loaded CLIP model: its image encoder and (if it has a text tower) its text encoder."""

    label: str
    image: ImageEncoder
    text: Optional[TextEncoder] = None
    #: ``exp(logit_scale)`` of the model (the temperature of its contrastive logits), if it has one
    logit_scale: Optional[float] = None


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    return dtype


def guess_open_clip_arch(filename: str) -> Optional[str]:
    """The longest open_clip model name contained in ``filename`` (case and ``_``/``-`` ignored)."""
    import open_clip

    def norm(s: str) -> str:
        return s.lower().replace("_", "-")

    name = norm(Path(filename).name)
    best = None
    for model in open_clip.list_models():
        if norm(model) in name and (best is None or len(model) > len(best)):
            best = model
    return best


def clip_folder_kind(folder: str | os.PathLike) -> Optional[str]:
    """``"open_clip"`` / ``"transformers"`` for a model folder, else None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if (folder / OPEN_CLIP_CONFIG).is_file():
        return "open_clip"
    if (folder / HF_CONFIG).is_file():
        return "transformers"
    return None


# ----------------------------------------------------------------------------------- open_clip


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_warning():
    flt = _DropMessage("No pretrained weights loaded")
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _open_clip_text(model, tokenizer, label: str) -> TextEncoder:
    # the text tower's own device: ComfyUI may have moved the image tower (the part a scorer
    # hands to its model management) to the GPU while the text tower stays where it was loaded
    tower = getattr(model, "text", None)
    if not isinstance(tower, torch.nn.Module):
        tower = getattr(model, "token_embedding", model)

    def encode(prompt: str) -> torch.Tensor:
        tokens = tokenizer([prompt]).to(module_device(tower))
        return model.encode_text(tokens)[0]

    dim = getattr(model, "text_projection", None)
    if isinstance(dim, torch.nn.Linear):
        dim = dim.out_features
    elif isinstance(dim, torch.Tensor):
        dim = dim.shape[-1]
    else:
        dim = model.visual.output_dim
    return TextEncoder(encode, dim, label, modules=[model])


def _load_open_clip_state_dict(model, state_dict: dict, where: str) -> None:
    """open_clip's own checkpoint massaging (factory.load_checkpoint) on an in-memory state dict."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed
    from open_clip.model import resize_text_pos_embed

    # float32 first (the model is built in float32; published fine-tunes such as HPSv2 are fp16,
    # and open_clip's position-embedding resize has no half-precision kernel on the CPU)
    sd = {k: (v.float() if v.is_floating_point() else v)
          for k, v in strip_prefix(state_dict, "module.").items()}
    sd = convert_state_dict(model, sd)
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    for key in ("logit_scale", "logit_bias"):
        target = getattr(model, key, None)
        if key in sd and isinstance(target, torch.Tensor) and target.ndim != sd[key].ndim:
            sd[key] = sd[key].reshape(target.shape)
    if "logit_bias" not in sd and getattr(model, "logit_bias", None) is not None:
        sd["logit_bias"] = torch.zeros_like(model.logit_bias)
    sd.pop("text.transformer.embeddings.position_ids", None)
    try:
        resize_pos_embed(sd, model)
        resize_text_pos_embed(sd, model)
    except (AssertionError, RuntimeError, ValueError) as exc:  # widths differ: another architecture
        raise WeightsFileError(
            f"{where} does not match the chosen open_clip architecture ({exc}). Pick the "
            f"architecture the checkpoint was trained with.") from None
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise WeightsFileError(
            f"{where} does not match the chosen open_clip architecture: {detail} ... Pick the "
            f"architecture the checkpoint was trained with.") from None
    if missing or unexpected:
        raise WeightsFileError(
            f"{where} does not match the chosen open_clip architecture: {len(missing)} missing "
            f"keys {missing[:4]}, {len(unexpected)} unexpected keys {unexpected[:4]}. "
            f"Pick the architecture the checkpoint was trained with.")


def load_open_clip(arch: str, *, checkpoint: str | os.PathLike | None = None,
                   pretrained: Optional[str] = None, cache_dir: Optional[str] = None,
                   dtype="fp32") -> ClipBundle:
    """An open_clip model from a local ``checkpoint`` file, or a ``pretrained`` tag (downloads)."""
    import open_clip

    dtype = _dtype(dtype)
    if arch not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {arch!r}; known ones include "
                         f"ViT-B-32, ViT-L-14, ViT-H-14, ViT-g-14, ViT-bigG-14 "
                         f"(open_clip.list_models() lists all)")
    if checkpoint is not None:
        where = f"{checkpoint}"
        with _quiet_random_init_warning():  # the weights are loaded right below
            model = open_clip.create_model(arch, pretrained=None, pretrained_image=False,
                                           pretrained_text=False, device="cpu")
        state = extract_state_dict(load_weights_file(checkpoint, hint=f"open_clip {arch}"),
                                   where=where)
        _load_open_clip_state_dict(model, state, where)
        label = f"{arch} ({Path(checkpoint).name})"
    elif pretrained:
        pcfg = open_clip.get_pretrained_cfg(arch, pretrained) or {}
        if not pcfg:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            raise ValueError(f"open_clip has no pretrained tag {pretrained!r} for {arch}; "
                             f"known tags: {tags}")
        model = open_clip.create_model(arch, pretrained=pretrained, cache_dir=cache_dir,
                                       force_quick_gelu=bool(pcfg.get("quick_gelu", False)),
                                       device="cpu", weights_only=True)
        label = f"{arch} ({pretrained})"
    else:
        raise ValueError(f"load_open_clip({arch!r}) needs a checkpoint file or a pretrained tag")
    return _bundle_open_clip(model, open_clip.get_tokenizer(arch), label, dtype)


def _logit_scale(model) -> Optional[float]:
    scale = getattr(model, "logit_scale", None)
    return float(scale.detach().float().exp()) if isinstance(scale, torch.Tensor) else None


def _bundle_open_clip(model, tokenizer, label: str, dtype: torch.dtype) -> ClipBundle:
    scale = _logit_scale(model)
    model = freeze(model.to(dtype=dtype))
    text = _open_clip_text(model, tokenizer, label) if hasattr(model, "encode_text") else None
    return ClipBundle(label, OpenCLIPImageEncoder(model, label), text, scale)


# ----------------------------------------------------------------------------------- folders


def load_clip_folder(folder: str | os.PathLike, dtype="fp32") -> ClipBundle:
    """A CLIP model from a local folder (open_clip or transformers layout); never downloads."""
    folder = Path(folder)
    kind = clip_folder_kind(folder)
    dtype = _dtype(dtype)
    if kind == "open_clip":
        import open_clip
        from open_clip.factory import _find_checkpoint_in_dir

        checkpoint = _find_checkpoint_in_dir(folder)
        if checkpoint is None:  # open_clip would silently return a random model
            raise WeightsFileError(f"{folder} has {OPEN_CLIP_CONFIG} but no weights file "
                                   f"(.safetensors, .bin or .pth) beside it")
        spec = f"local-dir:{folder}"
        with _quiet_random_init_warning():  # the weights are loaded right below
            model = open_clip.create_model(spec, device="cpu", load_weights=False,
                                           pretrained_image=False, pretrained_text=False)
        state = extract_state_dict(load_weights_file(checkpoint, hint="open_clip folder"),
                                   where=checkpoint)
        _load_open_clip_state_dict(model, state, checkpoint)
        return _bundle_open_clip(model, open_clip.get_tokenizer(spec), folder.name, dtype)
    if kind == "transformers":
        return _load_hf_clip(folder, dtype)
    raise WeightsFileError(
        f"{folder} is not a CLIP model folder: it needs {OPEN_CLIP_CONFIG} (open_clip) or "
        f"{HF_CONFIG} (transformers CLIPModel / CLIPVisionModelWithProjection) beside the weights")


def _hf_preprocess(folder: Path, default_size: int):
    mean, std, size = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, default_size
    path = folder / "preprocessor_config.json"
    if path.is_file():
        cfg = json.loads(path.read_text())
        mean = cfg.get("image_mean", mean)
        std = cfg.get("image_std", std)
        crop = cfg.get("crop_size", size)
        size = crop.get("height", size) if isinstance(crop, dict) else int(crop)
    return size, mean, std


def _hf_tokenizer(folder: Path, context_length: int):
    """The folder's tokenizer, else open_clip's CLIP BPE (the same ids as CLIPTokenizer)."""
    if any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)

        def tokenize(prompt: str):
            enc = tok([prompt], padding="max_length", max_length=context_length,
                      truncation=True, return_tensors="pt")
            return enc["input_ids"], enc.get("attention_mask")
        return tokenize

    from open_clip.tokenizer import SimpleTokenizer

    simple = SimpleTokenizer(context_length=context_length)

    def tokenize(prompt: str):
        return simple([prompt]), None
    return tokenize


#: weight files of a transformers folder, in the order they are looked for (an index lists shards)
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
              "pytorch_model.bin.index.json")


def hf_folder_state_dict(folder: str | os.PathLike) -> dict:
    """The state dict of a transformers model folder, read with :func:`load_weights_file`
    (safetensors, or a weights-only pickle: a ``pytorch_model.bin`` carrying code is refused before
    any of it runs). Sharded checkpoints (``*.index.json``) are merged."""
    folder = Path(folder)
    for name in HF_WEIGHTS:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(extract_state_dict(load_weights_file(folder / shard), where=shard))
            return state
        return extract_state_dict(load_weights_file(path), where=str(path))
    raise WeightsFileError(f"{folder} has {HF_CONFIG} but no weights beside it "
                           f"(one of {', '.join(HF_WEIGHTS)})")


def _hf_from_state_dict(cls, folder: Path, state: dict):
    """``cls`` built from the folder's config with ``state`` (no second read of the weights)."""
    config = cls.config_class.from_pretrained(str(folder), local_files_only=True)
    state = {k: v for k, v in strip_prefix(state, "module.").items()
             if not k.endswith("position_ids")}  # a buffer older checkpoints saved
    model, info = cls.from_pretrained(None, config=config, state_dict=state,
                                      output_loading_info=True)
    missing = [k for k in info.get("missing_keys", ()) if not k.endswith("position_ids")]
    if missing:
        raise WeightsFileError(f"the weights in {folder} do not match its {HF_CONFIG}: "
                               f"{len(missing)} missing keys {sorted(missing)[:4]}")
    return model.float()


def _load_hf_clip(folder: Path, dtype: torch.dtype) -> ClipBundle:
    import transformers

    config = json.loads((folder / HF_CONFIG).read_text())
    model_type = config.get("model_type")
    label = folder.name
    if model_type == "clip":
        cls = transformers.CLIPModel
    elif model_type == "clip_vision_model":
        cls = transformers.CLIPVisionModelWithProjection
    else:
        raise WeightsFileError(f"{folder / HF_CONFIG} has model_type {model_type!r}; only CLIP "
                               f"models ('clip', 'clip_vision_model') can score images")
    model = _hf_from_state_dict(cls, folder, hf_folder_state_dict(folder))
    scale = _logit_scale(model)
    model = freeze(model.to(dtype=dtype))
    vcfg = model.config.vision_config if model_type == "clip" else model.config
    size, mean, std = _hf_preprocess(folder, vcfg.image_size)
    image = HFCLIPImageEncoder(model.vision_model, model.visual_projection, size, mean, std, label)
    text = None
    if model_type == "clip":
        tokenize = _hf_tokenizer(folder, model.config.text_config.max_position_embeddings)
        text_model, text_projection = model.text_model, model.text_projection

        def encode(prompt: str) -> torch.Tensor:
            ids, mask = tokenize(prompt)
            device = module_device(text_model)
            out = text_model(input_ids=ids.to(device),
                             attention_mask=None if mask is None else mask.to(device))
            pooled = out.pooler_output if hasattr(out, "pooler_output") else out[1]
            return text_projection(pooled)[0]

        text = TextEncoder(encode, text_projection.weight.shape[0], label,
                           modules=[text_model, text_projection])
    return ClipBundle(label, image, text, scale)
