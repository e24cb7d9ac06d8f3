"""TEST-ONLY patch: ComfyUI's loaders build Flux, T5-XXL and SDXL's CLIP-G at the widths of the tensors.

ComfyUI 0.3.64 reads most architecture sizes from the weights, but a few are fixed in code, so a
tiny random model of these architectures cannot be loaded as it is:

==========================  ===========================================  =============================
what                        fixed in ComfyUI                             read from the tensors here
==========================  ===========================================  =============================
Flux DiT (dev and schnell)  ``model_detection.detect_unet_config``:       ``img_in.weight`` rows,
                            hidden 3072, 24 heads, mlp ratio 4, rope      ``key_norm.scale`` (head
                            axes [16, 56, 56]                              width), ``img_mlp.0`` rows,
                                                                          ``txt_in.weight`` columns
T5-XXL (Flux, SD3)          ``text_encoders/t5_config_xxl.json``: d_ff    ``wi_0`` rows, ``q`` rows,
                            10240, 64 heads x 64, 24 layers               ``relative_attention_bias``
CLIP-G (SDXL checkpoints)   ``clip_config_bigg.json``: 32 layers, MLP     layer count, ``fc1`` rows,
                            5120, 20 heads                                heads = width / 64
==========================  ===========================================  =============================

Everything else is ComfyUI's own code path: the same ``supported_models`` entry is matched
(``Flux`` / ``FluxSchnell`` on ``guidance_embed``), the same model and text-encoder classes are
built, the same samplers and conditioning run. The text-encoder widths go in through ComfyUI's own
option for that purpose (``model_options["<name>_model_config"]``, read by ``SDClipModel``); only the
place that fills it is patched (``comfy.sd.load_text_encoder_state_dicts`` and
``comfy.sd.load_state_dict_guess_config``, whose loader nodes pass no such options). For tensors of
the real sizes every override is empty, so a real file loads exactly as without the patch
(``tests/comfy/test_architectures.py`` checks that).

What stays at the real size (detection needs it): T5's ``d_model`` 4096 and 24 layers (the T5-XXL
detector looks at block 23 and a 4096 width), so the Flux context width is the real 4096; CLIP-G's
width 1280 (SDXL's context is CLIP-L 768 + CLIP-G 1280 and the pooled output 1280 feeds the ADM).

Use: ``install()`` in the test process (idempotent); the workflow server loads this file as a
whitelisted test-only custom node (``SERVER_NODE_NAME``), whose import calls ``install()``.
"""
from __future__ import annotations

import functools

SERVER_NODE_NAME = "doodl_test_tiny_widths"

FLUX_FIXED = {"hidden_size": 3072, "num_heads": 24, "mlp_ratio": 4.0, "axes_dim": [16, 56, 56],
              "context_in_dim": 4096}
_T5_FIXED = {"d_ff": 10240, "num_heads": 64, "d_kv": 64}
_CLIP_G_FIXED = {"num_hidden_layers": 32, "intermediate_size": 5120, "num_attention_heads": 20}
_CLIP_G_PREFIX = "conditioner.embedders.1.model.transformer.text_model."


def flux_overrides(sd, prefix: str = "") -> dict:
    """Flux DiT sizes read from the tensors that differ from ComfyUI's fixed ones ({} for real files)."""
    hidden = int(sd[prefix + "img_in.weight"].shape[0])
    norm = prefix + "double_blocks.0.img_attn.norm.key_norm.scale"
    if norm not in sd:
        norm = prefix + "single_blocks.0.norm.key_norm.scale"
    head = int(sd[norm].shape[0]) if norm in sd else 128
    mlp_key = prefix + "double_blocks.0.img_mlp.0.weight"
    found = {"hidden_size": hidden, "num_heads": hidden // head,
             "mlp_ratio": float(sd[mlp_key].shape[0]) / hidden if mlp_key in sd else 4.0,
             # the real split 16:56:56 of a 128-wide head, scaled to the head width
             "axes_dim": [head // 8, 7 * head // 16, 7 * head // 16],
             "context_in_dim": int(sd[prefix + "txt_in.weight"].shape[1])}
    return {k: v for k, v in found.items() if v != FLUX_FIXED[k]}


def t5_overrides(sd) -> dict:
    """T5 encoder sizes (``d_ff``, heads, head width) that differ from ``t5_config_xxl.json``."""
    q = "encoder.block.0.layer.0.SelfAttention.q.weight"
    if q not in sd or "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" not in sd:
        return {}
    heads = int(sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape[1])
    found = {"d_ff": int(sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]),
             "num_heads": heads, "d_kv": int(sd[q].shape[0]) // heads}
    return {k: v for k, v in found.items() if v != _T5_FIXED[k]}


def clip_g_overrides(sd, prefix: str = _CLIP_G_PREFIX) -> dict:
    """CLIP-G sizes of a checkpoint's second text encoder that differ from ``clip_config_bigg.json``."""
    fc1 = prefix + "encoder.layers.0.mlp.fc1.weight"
    if fc1 not in sd:
        return {}
    layers = 0
    while f"{prefix}encoder.layers.{layers}.mlp.fc1.weight" in sd:
        layers += 1
    width = int(sd[fc1].shape[1])
    found = {"num_hidden_layers": layers, "intermediate_size": int(sd[fc1].shape[0]),
             "num_attention_heads": width // 64}
    return {k: v for k, v in found.items() if v != _CLIP_G_FIXED[k]}


def install() -> None:
    """Patch ComfyUI's loaders in this process (idempotent)."""
    import comfy.model_detection as md
    import comfy.sd

    if getattr(md.detect_unet_config, "doodl_tiny_widths", False):
        return

    detect = md.detect_unet_config

    @functools.wraps(detect)
    def detect_unet_config(state_dict, key_prefix, metadata=None):
        config = detect(state_dict, key_prefix, metadata=metadata)
        if config is not None and config.get("image_model") == "flux":
            config.update(flux_overrides(state_dict, key_prefix))
        return config

    load_te = comfy.sd.load_text_encoder_state_dicts

    @functools.wraps(load_te)
    def load_text_encoder_state_dicts(state_dicts=[], embedding_directory=None, clip_type=None,
                                      model_options={}, **kwargs):
        for sd in state_dicts:
            found = t5_overrides(sd)
            if found and "t5xxl_model_config" not in model_options:
                model_options = {**model_options, "t5xxl_model_config": found}
        if clip_type is None:
            clip_type = comfy.sd.CLIPType.STABLE_DIFFUSION
        return load_te(state_dicts, embedding_directory, clip_type, model_options, **kwargs)

    guess = comfy.sd.load_state_dict_guess_config

    @functools.wraps(guess)
    def load_state_dict_guess_config(sd, *args, te_model_options={}, **kwargs):
        found = clip_g_overrides(sd)
        if found and "clip_g_model_config" not in te_model_options:
            te_model_options = {**te_model_options, "clip_g_model_config": found}
        return guess(sd, *args, te_model_options=te_model_options, **kwargs)

    for fn in (detect_unet_config, load_text_encoder_state_dicts, load_state_dict_guess_config):
        fn.doodl_tiny_widths = True
    md.detect_unet_config = detect_unet_config
    comfy.sd.load_text_encoder_state_dicts = load_text_encoder_state_dicts
    comfy.sd.load_state_dict_guess_config = load_state_dict_guess_config


def server_node_source() -> str:
    """This module as a custom-node package for the test server: installs the patch on import."""
    from pathlib import Path

    src = Path(__file__).read_text(encoding="utf-8")
    return src + "\n\ninstall()\nNODE_CLASS_MAPPINGS = {}\n"
