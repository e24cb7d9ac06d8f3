"""Refuse settings that silently break gradients or EDICT exactness, naming the setting.

- ``--use-sage-attention``: SageAttention is an inference kernel with no backward pass.
- ``--fast`` fp8 matrix multiplication (``fp8_matrix_mult``): ``torch._scaled_mm`` has no usable
  backward for our purpose, and fp8 weights quantize activations.
- cache/skip wrappers (EasyCache, LazyCache, TeaCache, FBCache, ...): they reuse stale model outputs,
  so the chain is neither the function we differentiate nor exactly invertible.
Tiled VAE decoding never happens here: the differentiable decode calls the VAE's network directly.
"""
from __future__ import annotations

import torch

import comfy.cli_args

__all__ = ["UnsafeSettingError", "check_gradient_safe", "check_exactness_safe", "cache_wrappers",
           "differentiable_attention_override", "builds_graph"]

_CACHE_MARKERS = ("cache", "teacache", "skip", "fbcache", "deepcache", "tgate")


class UnsafeSettingError(RuntimeError):
    """A ComfyUI setting or model patch that would silently break DOODL/EDICT."""


def cache_wrappers(model) -> list[str]:
    """Names of cache/skip wrappers attached to a ModelPatcher or its model_options."""
    found = []
    sources = [getattr(model, "wrappers", {}) or {}]
    topts = (getattr(model, "model_options", {}) or {}).get("transformer_options", {}) or {}
    sources.append(topts.get("wrappers", {}) or {})
    for wrappers in sources:
        for wtype, by_key in wrappers.items():
            for key, fns in (by_key or {}).items():
                if fns and any(m in str(key).lower() for m in _CACHE_MARKERS):
                    found.append(f"{key} ({wtype})")
    return sorted(set(found))


def check_exactness_safe(model, what: str = "EDICT") -> None:
    """Cache/skip wrappers make the chain non-deterministic in its inputs: refuse them."""
    wrappers = cache_wrappers(model)
    if wrappers:
        raise UnsafeSettingError(
            f"{what} cannot run on a model patched with a cache/skip wrapper: {', '.join(wrappers)}. "
            "These reuse stale model outputs, which breaks exact inversion and gradients. Feed this "
            "node the model from before the EasyCache/LazyCache/TeaCache-style node.")


def check_gradient_safe(model, what: str = "DOODL") -> None:
    """Everything ``check_exactness_safe`` refuses, plus settings without a backward pass."""
    check_exactness_safe(model, what)
    args = comfy.cli_args.args
    if getattr(args, "use_sage_attention", False):
        raise UnsafeSettingError(
            f"{what} needs gradients through attention, but ComfyUI was started with "
            "--use-sage-attention, an inference-only kernel without a backward pass. Restart "
            "ComfyUI without --use-sage-attention to use this node (EDICT sampling and inversion "
            "work with it).")
    fast = getattr(args, "fast", None) or set()
    if any(getattr(f, "value", f) == "fp8_matrix_mult" for f in fast):
        raise UnsafeSettingError(
            f"{what} needs gradients through every layer, but ComfyUI was started with --fast "
            "fp8 matrix multiplication (fp8_matrix_mult), which has no backward pass. Restart "
            "ComfyUI without --fast (or with --fast listing only other features).")


def differentiable_attention_override():
    """An ``optimized_attention_override`` for the gradient pass, or None when not needed.

    ComfyUI's sub-quadratic and split attention (its defaults when PyTorch's scaled-dot-product
    attention is not enabled, e.g. on CPU or with --use-split-cross-attention) size their chunks from
    the free memory, and when memory is short they switch to in-place softmax kernels
    (``torch.exp(x, out=x)``) that autograd cannot differentiate. The override routes those two to
    ComfyUI's PyTorch attention (the same function, differentiable at any memory level) only for
    calls that build a graph for gradients: grad mode on and a query, key or value that requires
    grad. Every other call, the no-grad forward chain included, runs the attention ComfyUI chose,
    so a chain sampled inside DOODL is the chain EDICT Generate or ComfyUI's samplers compute. (The
    two attentions differ only in rounding, 3.6e-7 on one CPU call in the test, but through a chain
    of calls that grew to 3e-5..2e-4 (absolute) in the final latents, which broke the regeneration tests while the
    override applied to every call.) Every other attention function is left alone.
    """
    import comfy.ldm.modules.attention as attention

    wrapped = [getattr(attention, n, None) for n in ("attention_sub_quad", "attention_split")]
    wrapped = [f for f in wrapped if f is not None]
    if attention.optimized_attention not in wrapped:
        return None
    # the override receives the undecorated function (ComfyUI's wrap_attn passes ``func``)
    chunked = set(wrapped) | {getattr(f, "__wrapped__", f) for f in wrapped}
    safe = attention.attention_pytorch

    def override(func, *args, **kwargs):
        if func in chunked and builds_graph(args, kwargs):
            return safe(*args, **kwargs)
        return func(*args, **kwargs)

    override.doodl_differentiable = True
    return override


def builds_graph(args, kwargs) -> bool:
    """True when an attention call with these arguments records an autograd graph: grad mode is
    on and one of its tensor arguments (query, key, value, mask) requires grad."""
    if not torch.is_grad_enabled():
        return False
    values = list(args) + list(kwargs.values())
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in values)
