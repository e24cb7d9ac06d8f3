"""Run a ComfyUI UNet channels-last end to end for the duration of a CUDA-graph run.

Why (measured on an H200, benchmarks/RESULTS.md run 12): with ComfyUI's NCHW weights, cuDNN turns
every convolution's input to NHWC and back (3.1 of 11.7 ms of an SD1.5 no-grad call); PyTorch's
GroupNorm returns NCHW whatever it is given; and ComfyUI's ``SpatialTransformer`` ends with an NCHW
``.contiguous()`` copy, so a channels-last model is converted back and forth around every norm and
every transformer, and its residual adds mix layouts (strided, unvectorized kernels).

Within :func:`channels_last_unet`:

- the diffusion model's 4-D weights are re-laid channels-last **in place** (same values, same
  device, same ``Parameter`` objects; one weight at a time, so no second copy of the model), and
  put back to NCHW on exit;
- its GroupNorm (+SiLU) layers run the fused kernels of ``fused_norms.py``, which keep the layout;
- its ``SpatialTransformer`` blocks run :func:`_layout_keeping_forward`, ComfyUI's forward with the
  final reshape left as a channels-last view instead of an NCHW copy (applied only where the
  class's forward is the one this was written against, see :data:`KNOWN_FORWARDS`).

Only the run's own calls see this (``chain.py`` holds the context around the whole run, so eager
calls inside it and the recorded graphs compute the same function); ComfyUI gets its model back as
it was. The values differ from an NCHW call only by floating-point rounding (5e-4 relative in fp16).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import logging

import torch

from .fused_norms import fused_group_norms

__all__ = ["channels_last_unet", "channels_last_weights", "layout_keeping_transformers", "forward_fingerprint",
           "KNOWN_FORWARDS"]

log = logging.getLogger("doodl")

#: fingerprints (:func:`forward_fingerprint`) of the ``SpatialTransformer.forward`` that
#: :func:`_layout_keeping_forward` reproduces (ComfyUI 0.3.64); another version keeps its own forward
KNOWN_FORWARDS = frozenset({"b1ff85f3b8b6c59d"})


def forward_fingerprint(fn) -> str:
    """A hash of a function's source, ignoring indentation, blank lines and comments ("" if the
    source cannot be read)."""
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        return ""
    lines = [line.strip() for line in src.splitlines()]
    text = "\n".join(line for line in lines if line and not line.startswith("#"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def channels_last_weights(module: torch.nn.Module):
    """The floating-point 4-D parameters of ``module`` re-laid channels-last in place for the
    context, then NCHW again. Yields how many were re-laid (already channels-last ones are left)."""
    changed = []
    try:
        for p in module.parameters():
            if p.dim() == 4 and p.is_floating_point() and not p.is_contiguous(memory_format=torch.channels_last):
                # in the parameter's own mode: an inference tensor (a model ComfyUI loaded) stays one
                with torch.no_grad(), torch.inference_mode(p.is_inference()):
                    p.data = p.data.contiguous(memory_format=torch.channels_last)
                changed.append(p)
        yield len(changed)
    finally:
        for p in changed:
            with torch.no_grad(), torch.inference_mode(p.is_inference()):
                p.data = p.data.contiguous()


def _layout_keeping_forward(block, x, context=None, transformer_options={}):  # noqa: B006 (ComfyUI's signature)
    """``SpatialTransformer.forward`` of ComfyUI 0.3.64, except that the tokens go back to an image
    as a view (channels-last for a channels-last input) instead of an NCHW copy; the values are the
    same."""
    if not isinstance(context, list):
        context = [context] * len(block.transformer_blocks)
    b, c, h, w = x.shape
    transformer_options["activations_shape"] = list(x.shape)
    residual = x
    x = block.norm(x)
    if not block.use_linear:
        x = block.proj_in(x)
    tokens = x.movedim(1, 3).flatten(1, 2).contiguous()   # a no-op for a channels-last x
    if block.use_linear:
        tokens = block.proj_in(tokens)
    for i, layer in enumerate(block.transformer_blocks):
        transformer_options["block_index"] = i
        tokens = layer(tokens, context=context[i], transformer_options=transformer_options)
    if block.use_linear:
        tokens = block.proj_out(tokens)
    x = tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1]).movedim(3, 1)
    if not block.use_linear:
        x = block.proj_out(x)
    return x + residual


def _transformer_class():
    try:
        from comfy.ldm.modules.attention import SpatialTransformer
    except ImportError:  # pragma: no cover - ComfyUI always has it
        return None
    return SpatialTransformer


@contextlib.contextmanager
def layout_keeping_transformers(module: torch.nn.Module):
    """Within the context the ``SpatialTransformer`` blocks of ``module`` (exactly that class, with
    the known forward) run :func:`_layout_keeping_forward`. Yields how many were swapped."""
    cls = _transformer_class()
    swapped = []
    known = cls is not None and forward_fingerprint(cls.forward) in KNOWN_FORWARDS
    if cls is not None and not known:
        log.debug("DOODL: SpatialTransformer.forward is not the one channels_last.py knows; left as it is")
    try:
        if known:
            for m in module.modules():
                if type(m) is cls and "forward" not in m.__dict__:
                    m.forward = functools.partial(_layout_keeping_forward, m)
                    swapped.append(m)
        yield len(swapped)
    finally:
        for m in swapped:
            with contextlib.suppress(AttributeError):
                del m.forward


@contextlib.contextmanager
def channels_last_unet(diffusion_model: torch.nn.Module, fused_norms: bool = True):
    """The three changes of the module docstring for the context. Yields the counts:
    ``{"channels_last_weights", "fused_group_norms", "layout_keeping_transformers"}``."""
    norms = fused_group_norms(diffusion_model) if fused_norms else contextlib.nullcontext(0)
    with channels_last_weights(diffusion_model) as w, norms as n, \
            layout_keeping_transformers(diffusion_model) as t:
        yield {"channels_last_weights": w, "fused_group_norms": n, "layout_keeping_transformers": t}
