"""Run a ComfyUI UNet channels-last end to end (held by ``fast_unet.py`` for a graphed run).

Why (measured on an H200, benchmarks/RESULTS.md run 12): with ComfyUI's NCHW weights, cuDNN turns
every convolution's input to NHWC and back (3.1 of 11.7 ms of an SD1.5 no-grad call); PyTorch's
GroupNorm returns NCHW whatever it is given; and ComfyUI's ``SpatialTransformer`` ends with an NCHW
``.contiguous()`` copy, so a channels-last model is converted back and forth around every norm and
every transformer, and its residual adds mix layouts (strided, unvectorized kernels).

- :func:`channels_last_weights`: the model's 4-D weights re-laid channels-last **in place** (same
  values, same device, same ``Parameter`` objects; one weight at a time, so no second copy of the
  model), NCHW again on exit;
- :func:`layout_keeping_transformers`: its ``SpatialTransformer`` blocks run
  :func:`_layout_keeping_forward`, ComfyUI's forward with the final reshape left as a channels-last
  view instead of an NCHW copy (only where the class's forward is the one this was written
  against, see :data:`KNOWN_FORWARDS`).

With the fused GroupNorm kernels (which keep the layout) the model then stays channels-last from the
first convolution to the last. The values differ from an NCHW call only by floating-point rounding
(5e-4 relative in fp16).
"""
from __future__ import annotations

import contextlib

import torch

from .fingerprints import replaced_forwards

__all__ = ["channels_last_weights", "layout_keeping_transformers", "KNOWN_FORWARDS"]

#: fingerprints (``fingerprints.forward_fingerprint``) of the ``SpatialTransformer.forward`` that
#: :func:`_layout_keeping_forward` reproduces (ComfyUI 0.3.64); another version keeps its own forward
KNOWN_FORWARDS = frozenset({"b1ff85f3b8b6c59d"})


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
    with replaced_forwards(module, _transformer_class(), KNOWN_FORWARDS, _layout_keeping_forward) as n:
        yield n
