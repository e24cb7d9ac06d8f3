"""ImageReward (Xu et al. 2023): BLIP image-text matching fine-tuned on human preference rankings.

Published files (Hugging Face ``THUDM/ImageReward``): ``ImageReward.pt`` (a plain state dict:
``blip.visual_encoder.*``, a BLIP ViT-L/16; ``blip.text_encoder.*``, a BERT-base whose layers
cross-attend to the image tokens; ``mlp.layers.{0,2,4,6,7}.*``, a 768-1024-128-64-16-1 head, no
activations) and ``med_config.json`` (the BERT configuration); the ``image-reward`` package
tokenizes with ``bert-base-uncased``'s ``vocab.txt``. Its score::

    tokens = bert_tokenize(prompt, padding to 35, truncation)          # [CLS] ... [SEP] [PAD]...
    image  = normalize(center_crop(resize_shorter_side(pil, 224, bicubic)), OpenAI CLIP mean/std)
    h      = text_encoder(tokens, cross-attending to visual_encoder(image))[:, 0]   # the [CLS] state
    score  = (mlp(h) - 0.16717362830052426) / 1.0333394966054072                    # about -2..2

The architectures are written here in plain torch, with the published module names so the
checkpoint's keys map one to one (``blip.`` stripped; BLIP's unused ``vision_proj``/``text_proj``
and position-id buffers dropped). transformers' BERT cannot be used as is: its cross-attention
keys and values take the text width (768) while BLIP's take the image width (1024). The tokenizer
is a plain WordPiece implementation of ``BertTokenizer``'s (lower-casing, accent stripping,
punctuation splitting, greedy longest-match pieces), independent of the transformers version.
"""
from __future__ import annotations

import json
import math
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import freeze
from .clip_models import DTYPES
from .encoders import module_device, module_dtype
from .preference import PreferenceScorer
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize
from .weights import WeightsFileError, extract_state_dict, load_weights_file, strip_prefix

__all__ = ["ImageRewardModel", "BLIPVisionTransformer", "BLIPTextEncoder", "RewardMLP",
           "WordPieceTokenizer", "ImageRewardBundle", "load_imagereward", "ImageRewardScorer",
           "IMAGEREWARD_MEAN", "IMAGEREWARD_STD", "IMAGEREWARD_FILES", "IMAGEREWARD_SOURCE",
           "MAX_TOKENS", "MED_CONFIG", "VOCAB"]

IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
MAX_TOKENS = 35
MED_CONFIG = "med_config.json"
VOCAB = "vocab.txt"
IMAGEREWARD_SOURCE = "huggingface.co/THUDM/ImageReward (and bert-base-uncased's vocab.txt)"
#: the three files the model needs (beside each other) -> download URL
IMAGEREWARD_FILES = {
    "ImageReward.pt": "https://huggingface.co/THUDM/ImageReward/resolve/main/ImageReward.pt",
    MED_CONFIG: "https://huggingface.co/THUDM/ImageReward/resolve/main/med_config.json",
    VOCAB: "https://huggingface.co/google-bert/bert-base-uncased/resolve/main/vocab.txt",
}
#: BLIP ViTs use 64-wide attention heads (ViT-B/16: 12 heads, ViT-L/16: 16)
VIT_HEAD_WIDTH = 64


# ----------------------------------------------------------------------------- image encoder


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = _Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = _Mlp(width, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class BLIPVisionTransformer(nn.Module):
    """BLIP's ViT (pre-norm blocks, LayerNorm eps 1e-6, exact GELU, class token): normalized
    pixels ``(N, 3, S, S)`` -> every token's final state ``(N, 1 + (S/patch)^2, width)``."""

    def __init__(self, image_size: int = 224, patch_size: int = 16, width: int = 1024,
                 depth: int = 24, heads: int = 16, mlp_hidden: Optional[int] = None,
                 eps: float = 1e-6):
        super().__init__()
        self.image_size, self.width = image_size, width
        grid = image_size // patch_size
        self.patch_embed = _PatchEmbed(patch_size, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, width))
        self.blocks = nn.ModuleList(_Block(width, heads, mlp_hidden or 4 * width, eps)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=eps)

    def forward(self, pixels):
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed[:, :x.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# ----------------------------------------------------------------------------- text encoder

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu,
                "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
                "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


@dataclass
class TextConfig:
    """The fields of BLIP's ``med_config.json`` the encoder uses (BERT-base for ImageReward)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 30524
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    encoder_width: int = 1024

    @classmethod
    def from_json(cls, path: str | os.PathLike, encoder_width: int) -> "TextConfig":
        try:
            cfg = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise WeightsFileError(f"cannot read the BLIP text configuration {path}: {exc}") from None
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise WeightsFileError(f"{path}: only absolute position embeddings are supported")
        if cfg.get("hidden_act", "gelu") not in _ACTIVATIONS:
            raise WeightsFileError(f"{path}: unsupported hidden_act {cfg.get('hidden_act')!r}")
        known = {f for f in cls.__dataclass_fields__ if f != "encoder_width"}
        return cls(**{k: v for k, v in cfg.items() if k in known}, encoder_width=encoder_width)


class _SelfAttention(nn.Module):
    """Named ``self`` in the checkpoint; ``kv_width`` is the image width for cross-attention."""

    def __init__(self, width: int, kv_width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(kv_width, width)
        self.value = nn.Linear(kv_width, width)

    def forward(self, x, context, mask):
        def split(t):
            return t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(context)), split(self.value(context))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).reshape(x.shape)


class _Output(nn.Module):
    def __init__(self, width_in: int, width: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(width_in, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class _BertAttention(nn.Module):
    def __init__(self, cfg: TextConfig, kv_width: int):
        super().__init__()
        self.self = _SelfAttention(cfg.hidden_size, kv_width, cfg.num_attention_heads)
        self.output = _Output(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x, context, mask):
        return self.output(self.self(x, context, mask), x)


class _Intermediate(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def forward(self, x):
        return self.act(self.dense(x))


class _BertLayer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.attention = _BertAttention(cfg, cfg.hidden_size)
        self.crossattention = _BertAttention(cfg, cfg.encoder_width)
        self.intermediate = _Intermediate(cfg)
        self.output = _Output(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x, text_mask, image_tokens):
        x = self.attention(x, x, text_mask)
        x = self.crossattention(x, image_tokens, None)  # every image token is attended
        return self.output(self.intermediate(x), x)


class _Embeddings(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                            padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ids):
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(positions))


class _Encoder(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.layer = nn.ModuleList(_BertLayer(cfg) for _ in range(cfg.num_hidden_layers))


class BLIPTextEncoder(nn.Module):
    """BLIP's "multimodal" BERT (word + position embeddings, no token types; each layer:
    self-attention, cross-attention to the image tokens, feed-forward; post-LayerNorm):
    ``(ids, mask, image_tokens) -> hidden states (N, L, hidden)``."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)

    def forward(self, ids, mask, image_tokens):
        x = self.embeddings(ids)
        # BERT's additive padding mask: 0 for tokens, -10000 for padding
        additive = (1.0 - mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.encoder.layer:
            x = layer(x, additive, image_tokens)
        return x


class RewardMLP(nn.Module):
    """ImageReward's head: Linear-Dropout-Linear-Dropout-Linear-Dropout-Linear-Linear, 1 output."""

    def __init__(self, in_features: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x):
        return self.layers(x).squeeze(-1)


class ImageRewardModel(nn.Module):
    """``(normalized pixels (N, 3, S, S), ids (1|N, L), mask (1|N, L)) -> rewards (N,)``,
    normalized with the published mean and std."""

    def __init__(self, visual_encoder: BLIPVisionTransformer, text_encoder: BLIPTextEncoder,
                 mlp: RewardMLP, mean: float = IMAGEREWARD_MEAN, std: float = IMAGEREWARD_STD):
        super().__init__()
        self.visual_encoder, self.text_encoder, self.mlp = visual_encoder, text_encoder, mlp
        self.mean, self.std = float(mean), float(std)

    def forward(self, pixels, ids, mask):
        image_tokens = self.visual_encoder(pixels)
        n = image_tokens.shape[0]
        ids, mask = ids.expand(n, -1), mask.expand(n, -1)
        cls = self.text_encoder(ids, mask, image_tokens)[:, 0]
        return (self.mlp(cls).float() - self.mean) / self.std


# ----------------------------------------------------------------------------- tokenizer


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class WordPieceTokenizer:
    """``bert-base-uncased`` tokenization from its ``vocab.txt`` (BERT's basic tokenizer, then
    greedy longest-match WordPiece), ``[CLS] ... [SEP]`` padded with ``[PAD]`` to ``max_length``.
    BLIP's two added tokens ([DEC], [ENC]) never occur in a prompt's ids and are not needed."""

    def __init__(self, vocab_file: str | os.PathLike, max_length: int = MAX_TOKENS):
        try:
            lines = Path(vocab_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise WeightsFileError(f"cannot read the BERT vocabulary {vocab_file}: {exc}") from None
        self.vocab = {tok.rstrip("\n"): i for i, tok in enumerate(lines) if tok}
        for special in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"):
            if special not in self.vocab:
                raise WeightsFileError(f"{vocab_file} is not a BERT vocabulary: no {special} token")
        self.max_length = max_length

    def _basic(self, text: str) -> list[str]:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch).startswith("C")
                                          and ch not in "\t\n\r"):
                continue
            if _is_cjk(cp):
                chars.append(f" {ch} ")
            elif ch.isspace() or unicodedata.category(ch) == "Zs":
                chars.append(" ")
            else:
                chars.append(ch)
        words = []
        for word in "".join(chars).strip().split():
            word = unicodedata.normalize("NFD", word.lower())
            word = "".join(c for c in word if unicodedata.category(c) != "Mn")
            current = ""
            for ch in word:
                if _is_punctuation(ch):
                    if current:
                        words.append(current)
                    words.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def _pieces(self, word: str) -> list[str]:
        if len(word) > 100:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        return [p for w in self._basic(text) for p in self._pieces(w)]

    def __call__(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, mask)``, each ``(1, max_length)`` int64."""
        tokens = ["[CLS]"] + self.tokenize(text)[:self.max_length - 2] + ["[SEP]"]
        ids = [self.vocab[t] for t in tokens]
        pad = self.max_length - len(ids)
        mask = [1] * len(ids) + [0] * pad
        ids = ids + [self.vocab["[PAD]"]] * pad
        return torch.tensor([ids]), torch.tensor([mask])


# ----------------------------------------------------------------------------- loading


@dataclass
class ImageRewardBundle:
    model: ImageRewardModel
    tokenizer: WordPieceTokenizer
    label: str


def _convert(state: dict) -> dict:
    """Published keys -> this module's: ``blip.`` stripped, BLIP's unused parts dropped."""
    out = {}
    for key, value in strip_prefix(state, "module.").items():
        if key.startswith("blip."):
            key = key[len("blip."):]
        if key.startswith(("visual_encoder.", "text_encoder.", "mlp.")) and \
                not key.endswith("position_ids"):
            out[key] = value
    return out


def _vision_from_state(state: dict, where: str) -> BLIPVisionTransformer:
    try:
        width = state["visual_encoder.cls_token"].shape[-1]
        patch = state["visual_encoder.patch_embed.proj.weight"].shape[-1]
        tokens = state["visual_encoder.pos_embed"].shape[1] - 1
        hidden = state["visual_encoder.blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as exc:
        raise WeightsFileError(
            f"{where} is not an ImageReward checkpoint: no {exc.args[0]} (expected keys "
            f"blip.visual_encoder.*, blip.text_encoder.*, mlp.layers.*)") from None
    depth = len({k.split(".")[2] for k in state if k.startswith("visual_encoder.blocks.")})
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise WeightsFileError(f"{where}: {tokens} image tokens do not form a square grid")
    heads = max(1, width // VIT_HEAD_WIDTH)
    return BLIPVisionTransformer(grid * patch, patch, width, depth, heads, hidden)


def load_imagereward(path: str | os.PathLike, med_config: str | os.PathLike | None = None,
                     vocab: str | os.PathLike | None = None, dtype="fp32") -> ImageRewardBundle:
    """``ImageReward.pt`` (+ ``med_config.json`` and ``vocab.txt``, by default beside it): the
    model (frozen, eval mode, CPU, ``dtype``: a torch dtype or fp32/bf16/fp16) and its tokenizer."""
    dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    path = Path(path)
    where = str(path)
    med_config = Path(med_config) if med_config else path.parent / MED_CONFIG
    vocab = Path(vocab) if vocab else path.parent / VOCAB
    for needed, what in ((med_config, "the BLIP text configuration"),
                         (vocab, "bert-base-uncased's vocabulary")):
        if not needed.is_file():
            raise WeightsFileError(
                f"{needed} ({what}) not found: ImageReward needs ImageReward.pt, {MED_CONFIG} and "
                f"{VOCAB} in one folder; get them from {IMAGEREWARD_SOURCE}")
    raw = load_weights_file(path, hint=f"ImageReward; from {IMAGEREWARD_SOURCE}")
    state = _convert(extract_state_dict(raw, where=where))
    vision = _vision_from_state(state, where)
    cfg = TextConfig.from_json(med_config, encoder_width=vision.width)
    if "mlp.layers.0.weight" not in state:
        raise WeightsFileError(f"{where} has no reward head (mlp.layers.*): is it ImageReward.pt?")
    model = ImageRewardModel(vision, BLIPTextEncoder(cfg),
                             RewardMLP(state["mlp.layers.0.weight"].shape[1]))
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise WeightsFileError(f"{where} does not match {med_config.name}: {detail}") from None
    return ImageRewardBundle(freeze(model.to(dtype)), WordPieceTokenizer(vocab), path.name)


# ----------------------------------------------------------------------------- scorer


class ImageRewardScorer(PreferenceScorer):
    """The normalized ImageReward of the image for the prompt (``image-reward``'s ``score``)."""

    score_name = "imagereward"

    def __init__(self, bundle: ImageRewardBundle, prompt: str, target: Optional[float] = None,
                 name: Optional[str] = None):
        super().__init__(prompt, target, name, label=bundle.label)
        self.model = bundle.model
        with torch.inference_mode(False):  # ordinary tensors even when a node builds the scorer
            self.ids, self.mask = bundle.tokenizer(prompt)
        self.input_size = bundle.model.visual_encoder.image_size

    def score_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        m = self.model
        device, dtype = module_device(m), module_dtype(m)
        x = normalize(pixels.float(), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
        return m(x.to(device=device, dtype=dtype), self.ids.to(device), self.mask.to(device))

    def _modules(self) -> list[nn.Module]:
        return [self.model]
