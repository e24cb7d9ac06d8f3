"""Tiny random SD-architecture models, built THROUGH ComfyUI's own loaders, for CPU integration tests.

Call ``tests.comfyui_env.require_comfyui()`` before anything here (the functions import ``comfy``
lazily, so importing this module is free and works without ComfyUI).

Kinds (see ``SPECS``):

=============  ==========================  ===================  ==========================================
kind           architecture (detected)     prediction           how
=============  ==========================  ===================  ==========================================
``eps``        SD15 UNet, context 768      EPS, discrete        native: ``supported_models.SD15``
``v``          SD20 UNet, context 1024     V_PREDICTION         native: ``SD20.model_type`` rule (below)
``flow``       SD3 MMDiT, 16 ch, T5 4096   CONST (FLOW), shift  native: ``supported_models.SD3``
``v_patched``  the ``eps`` UNet            V_PREDICTION         ``ModelSamplingDiscrete`` node patch
=============  ==========================  ===================  ==========================================

Gotchas, all found in ComfyUI 0.3.64 (``comfy/model_detection.py``, ``comfy/supported_models.py``):

* **Detection sets the floor on size.** ``load_diffusion_model_state_dict`` returns ``None`` unless
  a ``supported_models`` entry matches the *detected* config, and SD15/SD20/SDXL all require
  ``model_channels == 320`` (the first conv's width). What is free: the number of levels
  (``channel_mult`` is read from the keys; one level at multiplier 1 = no down/up-sampling),
  res blocks per level, per-block transformer depth (0 or 1), and the middle block
  (``transformer_depth_middle=-2`` = none). ``eps`` is therefore a one-level, one-res-block SD15
  UNet with a single transformer (needed: ``context_dim`` and ``use_linear_in_transformer`` are
  read from the first transformer found): 16.2 M parameters.
* **SD2 v-prediction is a statistics rule:** ``SD20.model_type`` returns V_PREDICTION when
  ``std(output_blocks.11.1.transformer_blocks.0.norm1.bias) > 0.09``. The key needs >= 12 output
  blocks (one level with 11 res blocks gives 12) with a transformer on output block 11; we give
  that bias std 0.2. 72.9 M parameters (the 12 output res blocks at 320 channels dominate); a
  forward of a 2x4x8x8 batch takes ~0.12 s on one CPU thread (eps: 0.03 s, flow: < 0.01 s).
  ``v_patched`` is the cheap alternative (the 16 M ``eps`` UNet + ComfyUI's own
  ``ModelSamplingDiscrete(v_prediction)`` object patch, which is also exactly how users run
  v-models that are not auto-detected).
* **UNet output blocks are listed in reverse:** ``UNetModel`` consumes ``transformer_depth_output``
  with ``pop()``, so the transformer of output block 11 is the *first* list entry.
* **SD3 MMDiT is genuinely tiny:** ``depth = x_embedder.proj.weight.shape[0] // 64`` (hidden =
  64*depth, heads = depth), while the context width (``context_embedder``), the pooled width
  (``y_embedder``) and the position-embedding grid (``pos_embed``) are all read from the keys.
  Flux and AuraFlow are not usable: their hidden size (3072) is hard-coded in detection.
* **The loaders pop keys:** ``load_diffusion_model_state_dict`` (``BaseModel.load_model_weights``)
  pops every key of the dict it is given, so the public ``*_state_dict`` functions return a fresh
  dict each call (tensors shared with a cache, which is safe because ``load_state_dict`` copies).
* **Inference tensors:** everything ComfyUI builds inside ``torch.inference_mode()`` (as
  ``execution.py`` runs every node) has inference-tensor parameters. The cached random tensors
  are made under ``torch.inference_mode(False)``, so the cache does not depend on the mode of
  the first caller, while ``load_tiny_model``/``tiny_vae`` build a *fresh* model each call in
  the caller's mode, exactly like a loader node. Never cache a ModelPatcher across tests: the
  pack's autograd shim replaces parameters in place.
* **VAE:** ``comfy.sd.VAE(sd=..., config={"params": {"ddconfig": ..., "embed_dim": ...}})``
  accepts a small ``AutoencoderKL`` (``arch="kl_small"``, 0.37 M params, 5 ms decode). File
  loaders (``VAELoader``, ``CheckpointLoaderSimple``) cannot pass ``config``: they detect from
  keys, which gives either the full-size SD/SD3 VAE (``arch="kl_full"``, 83.7 M params, ~0.13 s
  to decode an 8x8 latent on 2 cores) or TAESD (``arch="taesd"``, 2.4 M params, detected from
  ``taesd_decoder.1.weight``, latent channels from its shape). The 16-channel ``kl_small``
  keeps AutoencoderKL's 1x1 quant convs (real SD3 VAEs have none); ``kl_full`` for ``flow`` is
  the real SD3 ``AutoencodingEngine`` layout. With ``config=``, ``VAE.latent_channels`` is left
  at 4 (only the key-detection branches set it), so ``tiny_vae`` sets it for 16 channels.
* **No CLIP:** a checkpoint written here holds UNet + VAE only; ``CheckpointLoaderSimple`` then
  returns CLIP ``None`` with a warning. In a server graph, the core ``LotusConditioning`` node is
  the only input-free CONDITIONING source (1 x 77 x 1024): it fits the ``v`` (SD20) model.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

KINDS = ("eps", "v", "flow", "v_patched", "sdxl", "flux", "flux_schnell")
#: the architecture matrix of tests/comfy/test_architectures.py: kind -> what it stands for
ARCHITECTURES = {"eps": "SD1.5", "v": "SD2 (v)", "sdxl": "SDXL", "flow": "SD3", "flux": "Flux dev",
                 "flux_schnell": "Flux schnell"}
VAE_ARCHS = ("kl_small", "kl_full", "taesd")


@dataclass(frozen=True)
class TinySpec:
    """What a kind is and what ComfyUI must detect for it (tests assert these)."""

    kind: str
    model_config: str  # class name in comfy.supported_models
    model_type: str  # comfy.model_base.ModelType member name (of the unpatched model)
    prediction: str  # class in comfy.model_sampling the effective model_sampling must subclass
    sampling: str  # sigma-schedule class in comfy.model_sampling
    latent_channels: int
    context_dim: int
    pooled_dim: int
    base_kind: str  # whose UNet weights it uses
    patch: str | None = None  # how the effective model sampling is obtained, if patched
    notes: str = ""


SPECS = {
    "eps": TinySpec("eps", "SD15", "EPS", "EPS", "ModelSamplingDiscrete", 4, 768, 768, "eps"),
    "v": TinySpec("v", "SD20", "V_PREDICTION", "V_PREDICTION", "ModelSamplingDiscrete", 4, 1024, 1024, "v",
                  notes="detected by SD20.model_type's norm1.bias std rule"),
    "flow": TinySpec("flow", "SD3", "FLOW", "CONST", "ModelSamplingDiscreteFlow", 16, 4096, 2048, "flow",
                     notes="SD3 MMDiT depth 2 (hidden 128), shift 3.0"),
    "v_patched": TinySpec("v_patched", "SD15", "EPS", "V_PREDICTION", "ModelSamplingDiscrete", 4, 768, 768, "eps",
                          patch="comfy_extras.nodes_model_advanced.ModelSamplingDiscrete(v_prediction)"),
    "sdxl": TinySpec("sdxl", "KOALA_700M", "EPS", "EPS", "ModelSamplingDiscrete", 4, 2048, 1280, "sdxl",
                     notes="model_base.SDXL (ADM: pooled CLIP-G + size embeddings, 2816 wide) with the "
                           "layout of ComfyUI's KOALA_700M entry (a distilled SDXL)"),
    "flux": TinySpec("flux", "Flux", "FLUX", "CONST", "ModelSamplingFlux", 16, 4096, 768, "flux",
                     notes="Flux dev (guidance embedding), hidden 64; needs tests/comfy/tiny_widths.py"),
    "flux_schnell": TinySpec("flux_schnell", "FluxSchnell", "FLOW", "CONST", "ModelSamplingDiscreteFlow", 16, 4096,
                             768, "flux_schnell",
                             notes="Flux schnell (no guidance embedding); needs tests/comfy/tiny_widths.py"),
}
#: kinds whose loading needs the test-only width patch of tests/comfy/tiny_widths.py
NEEDS_WIDTH_PATCH = ("flux", "flux_schnell")


def spec(kind: str) -> TinySpec:
    if kind not in SPECS:
        raise ValueError(f"unknown tiny model kind {kind!r}; choose one of {KINDS}")
    return SPECS[kind]


# ----------------------------------------------------------------------------------------------
# UNet / DiT configs (constructor arguments; detection must give these back)

_UNET_COMMON = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320,
                    use_spatial_transformer=True, legacy=False, transformer_depth_middle=-2)

_UNET_CONFIGS = {
    # One level, one res block + transformer in, two res blocks out, no middle block.
    "eps": dict(_UNET_COMMON, num_res_blocks=[1], channel_mult=[1], transformer_depth=[1],
                transformer_depth_output=[0, 1], context_dim=768, use_linear_in_transformer=False,
                num_heads=8),
    # 12 output blocks so that output_blocks.11 exists; its transformer is listed FIRST (pop order).
    "v": dict(_UNET_COMMON, num_res_blocks=[11], channel_mult=[1], transformer_depth=[1] + [0] * 10,
              transformer_depth_output=[1] + [0] * 11, context_dim=1024, use_linear_in_transformer=True,
              num_head_channels=64, attn_precision=torch.float32),
}

# SDXL: model_channels 320, context 2048, ADM 2816 and use_linear are what every SDXL entry of
# supported_models requires; KOALA_700M's transformer_depth [0, 2, 5] (one res block per level) is
# the smallest of them. channel_mult is read from the keys, so all three levels stay 320 wide.
_UNET_CONFIGS["sdxl"] = dict(_UNET_COMMON, num_res_blocks=[1, 1, 1], channel_mult=[1, 1, 1],
                             transformer_depth=[0, 2, 5], transformer_depth_output=[0, 0, 0, 0, 0, 0],
                             context_dim=2048, use_linear_in_transformer=True, num_head_channels=64,
                             adm_in_channels=2816, num_classes="sequential")

# Flux: one double and one single block, hidden 64 (2 heads of 32; rope axes 4/14/14 keep the real
# 16:56:56 split); T5's real 4096-wide context and CLIP-L's 768-wide pooled vector.
_FLUX_CONFIG = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                    hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1,
                    axes_dim=[4, 14, 14], theta=10000, patch_size=2, qkv_bias=True)

_SD2_V_KEY = "output_blocks.11.1.transformer_blocks.0.norm1.bias"

_MMDIT_CONFIG = dict(patch_size=2, in_channels=16, out_channels=16, depth=2, input_size=None,
                     adm_in_channels=2048, num_patches=16 * 16, pos_embed_max_size=16,
                     pos_embed_scaling_factor=None, x_block_self_attn_layers=[],
                     context_embedder_config={"target": "torch.nn.Linear",
                                              "params": {"in_features": 4096, "out_features": 128}})


def _template_unet(kind: str) -> dict[str, torch.Tensor]:
    """Meta-device state dict of the network, to learn key names and shapes without allocating."""
    import comfy.ops

    ops = comfy.ops.disable_weight_init
    if kind in ("flux", "flux_schnell"):
        from comfy.ldm.flux.model import Flux

        net = Flux(**_FLUX_CONFIG, guidance_embed=kind == "flux", dtype=torch.float32, device="meta", operations=ops)
    elif kind == "flow":
        from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

        net = OpenAISignatureMMDITWrapper(**_MMDIT_CONFIG, dtype=torch.float32, device="meta", operations=ops)
    else:
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

        net = UNetModel(**_UNET_CONFIGS[kind], dtype=torch.float32, device="meta", operations=ops)
    return net.state_dict()


def _randomize(template: dict[str, torch.Tensor], seed: int, gain: float = 1.0) -> dict[str, torch.Tensor]:
    """Fresh CPU fp32 tensors with the template's keys/shapes.

    Weights (ndim >= 2) ~ N(0, gain^2/fan_in) so activations stay O(1) and attention is not
    uniform (std 0.02 everywhere makes cross-attention nearly constant, hence the model nearly
    blind to its conditioning); norm scales ~ 1 + N(0, 0.02); biases ~ N(0, 0.02); position
    embeddings ~ N(0, 0.5). Nothing is zero-initialized, so no output is trivially zero.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in template.items():
        shape = tuple(v.shape)
        t = torch.empty(shape)
        if k.endswith("pos_embed"):
            t.normal_(0.0, 0.5, generator=g)
        elif len(shape) >= 2:
            fan_in = max(1, int(torch.Size(shape[1:]).numel()))
            t.normal_(0.0, gain / fan_in ** 0.5, generator=g)
        elif k.endswith("weight"):
            t.normal_(1.0, 0.02, generator=g)
        else:
            t.normal_(0.0, 0.02, generator=g)
        out[k] = t
    return out


@functools.lru_cache(maxsize=8)
def _cached_unet_sd(base_kind: str, seed: int) -> dict[str, torch.Tensor]:
    with torch.inference_mode(False), torch.no_grad():
        sd = _randomize(_template_unet(base_kind), seed)
        if base_kind == "v":
            g = torch.Generator().manual_seed(seed + 7919)
            sd[_SD2_V_KEY] = 0.2 * torch.randn(sd[_SD2_V_KEY].shape, generator=g)
    return sd


def tiny_unet_state_dict(kind: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Unprefixed diffusion-model state dict (a NEW dict each call: loaders pop its keys)."""
    return dict(_cached_unet_sd(spec(kind).base_kind, seed))


def install_width_patch() -> None:
    """The test-only loader patch of ``tiny_widths.py`` (found next to this file also when this
    module was loaded by path, as ``benchmarks/`` does, where another ``tests`` package may win)."""
    try:
        from tests.comfy.tiny_widths import install
    except ImportError:
        import importlib.util
        import sys

        spec = importlib.util.spec_from_file_location("doodl_tiny_widths", Path(__file__).with_name("tiny_widths.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules["doodl_tiny_widths"] = mod
        spec.loader.exec_module(mod)
        install = mod.install
    install()


def load_tiny_model(kind: str, seed: int = 0):
    """A fresh ``comfy.model_patcher.ModelPatcher`` loaded by ``comfy.sd.load_diffusion_model_state_dict``.

    Built in the caller's autograd mode: call it inside ``torch.inference_mode()`` to get the
    inference-tensor parameters a real ``UNETLoader`` produces. ``v_patched`` returns a clone
    of the ``eps`` model with ComfyUI's ``ModelSamplingDiscrete`` node applied.
    """
    import comfy.sd

    s = spec(kind)
    if kind in NEEDS_WIDTH_PATCH:
        install_width_patch()
    model = comfy.sd.load_diffusion_model_state_dict(tiny_unet_state_dict(kind, seed))
    if model is None:
        raise RuntimeError(f"ComfyUI did not detect the tiny {kind!r} model (detection rules changed?)")
    if s.patch is not None:
        model = patch_model_sampling(model, "v_prediction")
    return model


def patch_model_sampling(model, sampling: str, *, shift: float = 3.0):
    """Apply ComfyUI's own model-sampling node to a clone, as a user's workflow would.

    ``sampling`` is one of ModelSamplingDiscrete's options ("eps", "v_prediction", ...) or
    "sd3" for ``ModelSamplingSD3(shift)``. Returns the patched clone (the input is untouched).
    """
    from comfy_extras import nodes_model_advanced as nma

    if sampling == "sd3":
        return nma.ModelSamplingSD3().patch(model, shift)[0]
    return nma.ModelSamplingDiscrete().patch(model, sampling, False)[0]


# ----------------------------------------------------------------------------------------------
# VAEs

def _vae_channels(kind: str) -> int:
    return spec(kind).latent_channels


def _kl_ddconfig(channels: int, full: bool) -> dict:
    dd = dict(double_z=True, z_channels=channels, resolution=256, in_channels=3, out_ch=3, ch=128,
              ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)
    if not full:  # 3 downsamplings keep the 8x factor; 32 channels is GroupNorm(32)'s minimum
        dd.update(ch=32, ch_mult=[1, 1, 1, 1], num_res_blocks=1)
    return dd


def _template_vae(channels: int, arch: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        if arch == "taesd":
            from comfy.taesd.taesd import TAESD

            return TAESD(latent_channels=channels).state_dict()
        from comfy.ldm.models.autoencoder import AutoencoderKL

        sd = AutoencoderKL(ddconfig=_kl_ddconfig(channels, arch == "kl_full"), embed_dim=channels).state_dict()
    if arch == "kl_full" and channels == 16:  # SD3/Flux layout: AutoencodingEngine without quant convs
        sd = {k: v for k, v in sd.items() if not k.startswith(("quant_conv.", "post_quant_conv."))}
    return sd


@functools.lru_cache(maxsize=8)
def _cached_vae_sd(channels: int, arch: str, seed: int) -> dict[str, torch.Tensor]:
    with torch.inference_mode(False), torch.no_grad():
        return _randomize(_template_vae(channels, arch), seed + 1_000_003)


def tiny_vae_state_dict(kind: str, arch: str = "kl_small", seed: int = 0) -> dict[str, torch.Tensor]:
    """VAE state dict (unprefixed, a NEW dict each call) for the kind's latent channels."""
    if arch not in VAE_ARCHS:
        raise ValueError(f"unknown VAE arch {arch!r}; choose one of {VAE_ARCHS}")
    return dict(_cached_vae_sd(_vae_channels(kind), arch, seed))


def tiny_vae(kind: str, arch: str = "kl_small", seed: int = 0):
    """A fresh ``comfy.sd.VAE`` (built in the caller's autograd mode, like ``VAELoader``).

    ``kl_small`` goes through ``VAE(sd, config=...)`` (an ``AutoencoderKL``); ``kl_full`` and
    ``taesd`` go through key detection, exactly as a file loaded by ``VAELoader`` would.
    """
    import comfy.sd

    sd = tiny_vae_state_dict(kind, arch, seed)
    if arch == "kl_small":
        ch = _vae_channels(kind)
        vae = comfy.sd.VAE(sd=sd, config={"params": {"ddconfig": _kl_ddconfig(ch, False), "embed_dim": ch}})
        vae.latent_channels = ch  # the config= path never sets it (stays 4); encode() allocates with it
    else:
        vae = comfy.sd.VAE(sd=sd)
    if vae.first_stage_model is None or vae.latent_channels != _vae_channels(kind):
        raise RuntimeError(f"ComfyUI built an unexpected VAE for {kind!r}/{arch!r}")
    return vae


# ----------------------------------------------------------------------------------------------
# Conditioning and latents

def tiny_conditioning(kind: str, batch: int = 1, tokens: int = 77, seed: int = 0) -> list:
    """A CONDITIONING list ``[[cross_attn (B,T,C), {"pooled_output": (B,P)}]]`` for the kind.

    Random N(0,1) tensors with the widths the tiny model expects (SD1 CLIP-L 768/768, SD2
    OpenCLIP-H 1024/1024, SD3 T5 4096 + CLIP-L/G pooled 2048). Made outside inference mode.
    """
    s = spec(kind)
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode(False):
        cross = torch.randn((batch, tokens, s.context_dim), generator=g)
        pooled = torch.randn((batch, s.pooled_dim), generator=g)
    return [[cross, {"pooled_output": pooled}]]


def tiny_latent(kind: str, batch: int = 1, height: int = 8, width: int = 8) -> dict:
    """An EmptyLatentImage-style LATENT dict (zeros, raw VAE space) with the kind's channels."""
    return {"samples": torch.zeros((batch, _vae_channels(kind), height, width))}


# ----------------------------------------------------------------------------------------------
# Files for ComfyUI's loader nodes (UNETLoader, VAELoader, CheckpointLoaderSimple)

MODEL_FOLDERS = ("diffusion_models", "vae", "checkpoints", "text_encoders")


@dataclass
class TinyModelFiles:
    """Where ``write_tiny_model_files`` put things; file names are what loader nodes take."""

    models_root: Path
    yaml_path: Path
    unets: dict[str, str] = field(default_factory=dict)  # kind -> name in diffusion_models/
    vaes: dict[str, str] = field(default_factory=dict)  # kind -> name in vae/
    checkpoints: dict[str, str] = field(default_factory=dict)  # kind -> name in checkpoints/


def _save(sd: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | None) -> None:
    from safetensors.torch import save_file

    with torch.inference_mode(False):
        out = {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in sd.items()}
    save_file(out, str(path))


def write_extra_model_paths_yaml(yaml_path: Path, models_root: Path, custom_nodes_dir: Path | None = None) -> Path:
    """An ``--extra-model-paths-config`` YAML mapping the model folders (and custom nodes) to tmp dirs.

    ``custom_nodes`` is how ComfyUI's own execution tests load a pack from outside
    ``ComfyUI/custom_nodes`` (paths are absolute, so ``base_path`` joins leave them as they are).
    """
    import yaml

    conf = {"base_path": str(Path(models_root).resolve())}
    for folder in MODEL_FOLDERS:
        conf[folder] = folder
    if custom_nodes_dir is not None:
        conf["custom_nodes"] = str(Path(custom_nodes_dir).resolve())
    yaml_path = Path(yaml_path)
    yaml_path.write_text(yaml.safe_dump({"doodl_tests": conf}, sort_keys=False), encoding="utf-8")
    return yaml_path


def write_tiny_model_files(models_root: Path, kinds=("eps", "v", "flow"), *, vae_arch: str = "taesd",
                           checkpoints: bool = False, custom_nodes_dir: Path | None = None,
                           dtype: torch.dtype | None = None, seed: int = 0) -> TinyModelFiles:
    """Write tiny UNets (and VAEs, optionally UNet+VAE checkpoints) as safetensors plus a YAML.

    ``vae_arch`` must be detectable from keys (``taesd`` or ``kl_full``): file loaders cannot pass
    a small config. ``v_patched`` is not a file (patch a loaded ``eps`` model instead).
    ``dtype=torch.float16`` halves the files (the ``v`` UNet is 292 MB in fp32); on CPU ComfyUI
    loads them back as fp32. Existing files are reused.
    """
    if vae_arch not in ("taesd", "kl_full"):
        raise ValueError("file VAEs must be key-detectable: vae_arch 'taesd' or 'kl_full'")
    root = Path(models_root)
    for folder in MODEL_FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
    files = TinyModelFiles(models_root=root, yaml_path=root / "extra_model_paths.yaml")
    suffix = "" if dtype is None else "_" + str(dtype).replace("torch.", "")
    for kind in kinds:
        if spec(kind).patch is not None:
            raise ValueError(f"{kind!r} is a patch of another kind, not a file")
        unet_name = f"doodl_tiny_{kind}_unet_s{seed}{suffix}.safetensors"
        vae_name = f"doodl_tiny_vae{_vae_channels(kind)}ch_{vae_arch}_s{seed}{suffix}.safetensors"
        if not (root / "diffusion_models" / unet_name).exists():
            _save(tiny_unet_state_dict(kind, seed), root / "diffusion_models" / unet_name, dtype)
        if not (root / "vae" / vae_name).exists():
            _save(tiny_vae_state_dict(kind, vae_arch, seed), root / "vae" / vae_name, dtype)
        files.unets[kind] = unet_name
        files.vaes[kind] = vae_name
        if checkpoints:
            ckpt_name = f"doodl_tiny_{kind}_ckpt_{vae_arch}_s{seed}{suffix}.safetensors"
            if not (root / "checkpoints" / ckpt_name).exists():
                sd = {"model.diffusion_model." + k: v for k, v in tiny_unet_state_dict(kind, seed).items()}
                sd.update({"first_stage_model." + k: v for k, v in tiny_vae_state_dict(kind, vae_arch, seed).items()})
                _save(sd, root / "checkpoints" / ckpt_name, dtype)
            files.checkpoints[kind] = ckpt_name
    write_extra_model_paths_yaml(files.yaml_path, root, custom_nodes_dir)
    return files


def register_model_folders(models_root: Path) -> None:
    """In-process equivalent of the YAML: add the tmp folders to ``folder_paths`` (for node calls)."""
    import folder_paths

    for folder in MODEL_FOLDERS:
        folder_paths.add_model_folder_path(folder, os.path.join(str(models_root), folder))
