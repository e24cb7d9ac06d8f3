"""Flux's transformer blocks without in-place residual adds, for passes that need gradients.

ComfyUI's Flux blocks (``comfy/ldm/flux/layers.py``) finish with in-place residual adds
(``txt += ...`` in the double-stream block, ``x += ...`` in the single-stream block). The tensor they
modify was just saved by a LayerNorm for its backward pass, so autograd refuses to differentiate
the model ("one of the variables needed for gradient computation has been modified by an inplace
operation"). Measured on the tiny Flux of the tests: every gradient through an unpatched Flux
fails this way; the same blocks written with out-of-place adds differentiate fine and give
bit-identical outputs (``tests/comfy/test_architectures.py``).

The fix uses ComfyUI's official block-replacement mechanism (``transformer_options
["patches_replace"]["dit"][("double_block" | "single_block", i)]``, read by Flux's ``forward_orig``),
set on a clone of the model for the passes with gradients only, so everything else (sampling,
other nodes) runs ComfyUI's own blocks. The replacements compute the same expressions in the same
order as ComfyUI 0.3.64's blocks, with ``a = a + b`` instead of ``a += b``. Blocks replaced by
something else (another pack's patch) are left alone; blocks whose class is not ComfyUI's own
Flux block (or overrides its ``forward``) are not replaced, and a model with modulation dims
(Chroma) is not handled (its ``apply_mod`` is in place too).
"""
from __future__ import annotations

import functools
import logging

import torch

from ..core.checkpointing import checkpointed

__all__ = ["differentiable_flux_blocks", "add_differentiable_blocks", "flux_block_classes",
           "ModelNotDifferentiable", "explain_inplace_error"]

log = logging.getLogger("doodl")


def flux_block_classes():
    """``(DoubleStreamBlock, SingleStreamBlock)`` of ComfyUI's Flux, or None when absent."""
    try:
        from comfy.ldm.flux.layers import DoubleStreamBlock, SingleStreamBlock
    except ImportError:  # pragma: no cover - ComfyUI without Flux
        return None
    return DoubleStreamBlock, SingleStreamBlock


def _double_forward(block, img, txt, vec, pe, attn_mask=None, transformer_options={}):
    """``DoubleStreamBlock.forward`` (modulation dims None) with out-of-place residual adds."""
    from comfy.ldm.flux.layers import apply_mod
    from comfy.ldm.flux.math import attention

    img_mod1, img_mod2 = block.img_mod(vec)
    txt_mod1, txt_mod2 = block.txt_mod(vec)

    img_modulated = apply_mod(block.img_norm1(img), (1 + img_mod1.scale), img_mod1.shift)
    img_qkv = block.img_attn.qkv(img_modulated)
    img_q, img_k, img_v = img_qkv.view(img_qkv.shape[0], img_qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    img_q, img_k = block.img_attn.norm(img_q, img_k, img_v)

    txt_modulated = apply_mod(block.txt_norm1(txt), (1 + txt_mod1.scale), txt_mod1.shift)
    txt_qkv = block.txt_attn.qkv(txt_modulated)
    txt_q, txt_k, txt_v = txt_qkv.view(txt_qkv.shape[0], txt_qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    txt_q, txt_k = block.txt_attn.norm(txt_q, txt_k, txt_v)

    if block.flipped_img_txt:
        attn = attention(torch.cat((img_q, txt_q), dim=2), torch.cat((img_k, txt_k), dim=2),
                         torch.cat((img_v, txt_v), dim=2), pe=pe, mask=attn_mask,
                         transformer_options=transformer_options)
        img_attn, txt_attn = attn[:, : img.shape[1]], attn[:, img.shape[1]:]
    else:
        attn = attention(torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2),
                         torch.cat((txt_v, img_v), dim=2), pe=pe, mask=attn_mask,
                         transformer_options=transformer_options)
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1]:]

    img = img + apply_mod(block.img_attn.proj(img_attn), img_mod1.gate, None)
    img = img + apply_mod(block.img_mlp(apply_mod(block.img_norm2(img), (1 + img_mod2.scale), img_mod2.shift)),
                          img_mod2.gate, None)
    txt = txt + apply_mod(block.txt_attn.proj(txt_attn), txt_mod1.gate, None)   # ComfyUI: txt += ...
    txt = txt + apply_mod(block.txt_mlp(apply_mod(block.txt_norm2(txt), (1 + txt_mod2.scale), txt_mod2.shift)),
                          txt_mod2.gate, None)
    if txt.dtype == torch.float16:
        txt = torch.nan_to_num(txt, nan=0.0, posinf=65504, neginf=-65504)
    return img, txt


def _single_forward(block, x, vec, pe, attn_mask=None, transformer_options={}):
    """``SingleStreamBlock.forward`` (modulation dims None) with an out-of-place residual add."""
    from comfy.ldm.flux.layers import apply_mod
    from comfy.ldm.flux.math import attention

    mod, _ = block.modulation(vec)
    qkv, mlp = torch.split(block.linear1(apply_mod(block.pre_norm(x), (1 + mod.scale), mod.shift)),
                           [3 * block.hidden_size, block.mlp_hidden_dim], dim=-1)
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = block.norm(q, k, v)
    attn = attention(q, k, v, pe=pe, mask=attn_mask, transformer_options=transformer_options)
    output = block.linear2(torch.cat((attn, block.mlp_act(mlp)), 2))
    x = x + apply_mod(output, mod.gate, None)   # ComfyUI: x += ...
    if x.dtype == torch.float16:
        x = torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return x


def _block_forward(forward, block, checkpoint: bool):
    """``forward(block, ...)`` bound to ``block``, checkpointed on passes with gradients if asked."""
    bound = functools.partial(forward, block)
    return checkpointed(bound) if checkpoint else bound


def _double_patch(block, checkpoint: bool = False):
    forward = _block_forward(_double_forward, block, checkpoint)

    def replace(args, extra):
        img, txt = forward(args["img"], args["txt"], args["vec"], args["pe"], args.get("attn_mask"),
                           args.get("transformer_options") or {})
        return {"img": img, "txt": txt}

    replace.doodl_differentiable = True
    return replace


def _single_patch(block, checkpoint: bool = False):
    forward = _block_forward(_single_forward, block, checkpoint)

    def replace(args, extra):
        return {"img": forward(args["img"], args["vec"], args["pe"], args.get("attn_mask"),
                               args.get("transformer_options") or {})}

    replace.doodl_differentiable = True
    return replace


def differentiable_flux_blocks(diffusion_model, checkpoint: bool = False) -> dict:
    """``{("double_block" | "single_block", i): replacement}`` for the Flux blocks of
    ``diffusion_model`` that are ComfyUI's own classes ({} for any other model). ``checkpoint``:
    the replacements run under activation checkpointing on passes with gradients
    (``model_checkpointing.py``)."""
    classes = flux_block_classes()
    if classes is None:
        return {}
    double_cls, single_cls = classes
    out = {}
    for name, cls, make, kind in (("double_blocks", double_cls, _double_patch, "double_block"),
                                  ("single_blocks", single_cls, _single_patch, "single_block")):
        for i, block in enumerate(getattr(diffusion_model, name, None) or []):
            if type(block).forward is cls.forward and isinstance(block, cls):
                out[(kind, i)] = make(block, checkpoint)
    return out


def add_differentiable_blocks(model_patcher, checkpoint: bool = False) -> int:
    """Set the replacements on ``model_patcher`` (a clone the caller owns) for the blocks nothing
    else replaces yet; returns how many were set. ``checkpoint``: see
    :func:`differentiable_flux_blocks`."""
    dm = model_patcher.get_model_object("diffusion_model")
    blocks = differentiable_flux_blocks(dm, checkpoint)
    if not blocks:
        return 0
    taken = (model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {})
             .get("dit", {}))
    added = 0
    for (kind, i), fn in blocks.items():
        if (kind, i) in taken:
            log.info("DOODL: %s %d is already replaced by another patch; left as it is", kind, i)
            continue
        model_patcher.set_model_patch_replace(fn, "dit", kind, i)
        added += 1
    return added


_INPLACE_MARK = "modified by an inplace operation"


class ModelNotDifferentiable(RuntimeError):
    """Autograd cannot differentiate this model's code as it is (an in-place op on a saved tensor)."""


def explain_inplace_error(exc: BaseException, base_model, what: str = "DOODL"):
    """A :class:`ModelNotDifferentiable` naming the model and the way out when ``exc`` is autograd's
    in-place error, else None (the caller re-raises ``exc``)."""
    if not isinstance(exc, RuntimeError) or _INPLACE_MARK not in str(exc):
        return None
    arch = f"{type(base_model).__name__} ({type(getattr(base_model, 'diffusion_model', None)).__name__})"
    first = str(exc).splitlines()[0][:300]
    return ModelNotDifferentiable(
        f"{what} cannot backpropagate through this model, {arch}: a layer modifies in place a tensor "
        f"that autograd saved for the backward pass ({first}). The pack replaces ComfyUI's own Flux "
        "blocks for this reason; here the in-place code comes from another block (a model patch from "
        "a custom node that replaces transformer blocks, or an architecture whose code does this). "
        "Feed this node the model without such patches; EDICT sampling and inversion need no "
        "gradients and work with it.")
