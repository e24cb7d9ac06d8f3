"""ComfyUI's attention call made traceable into a cacheable compiled graph (``DOODL_TORCH_COMPILE``).

On CUDA, ComfyUI 0.3.64 wraps every ``scaled_dot_product_attention`` call in
``sdpa_kernel(SDPA_BACKEND_PRIORITY, set_priority=True)`` (``comfy/ops.py``: cuDNN's attention
first). Traced by Dynamo, that context manager leaves a call to
``torch.nn.attention._backend_from_string`` in the graph, which AOTAutograd's on-disk cache refuses
("Bypassing autograd cache due to: Unsupported call_function target _backend_from_string",
measured on an H200, benchmarks/RESULTS.md run 16): every process then traces and partitions the
UNet's forward and backward again (about 25 s of a warm process's 48 s first iteration, run 15).

:func:`attention_outside_graph` sets the same priority once, around the compiled capture, and lets
ComfyUI's attention call plain ``F.scaled_dot_product_attention`` inside it: the same backends in
the same order, chosen the same way, with nothing left in the graph that the cache refuses. On a
ComfyUI without that wrapper (CPU, older torch) it changes nothing.
"""
from __future__ import annotations

import contextlib

import torch.nn.functional as F

__all__ = ["attention_outside_graph"]


def _plain_sdpa(q, k, v, *args, **kwargs):
    return F.scaled_dot_product_attention(q, k, v, *args, **kwargs)


@contextlib.contextmanager
def attention_outside_graph():
    """Within the context ComfyUI's attention runs plain SDPA under its backend priority set once.
    Yields whether ComfyUI had the wrapper (and so whether anything changed)."""
    import comfy.ops

    priority = getattr(comfy.ops, "SDPA_BACKEND_PRIORITY", None)
    if priority is None:
        yield False
        return
    from torch.nn.attention import sdpa_kernel

    original = comfy.ops.scaled_dot_product_attention
    comfy.ops.scaled_dot_product_attention = _plain_sdpa
    try:
        with sdpa_kernel(priority, set_priority=True):
            yield True
    finally:
        comfy.ops.scaled_dot_product_attention = original
