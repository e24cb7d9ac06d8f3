"""Fingerprints of ComfyUI functions that the pack replaces with a faster equivalent of its own.

A replacement (``channels_last.py``, ``fused_geglus.py``) reproduces one ComfyUI version's forward;
it is used only where the class's forward still has the source it was written against, so a ComfyUI
that changes that forward keeps its own (correct, only slower) instead of a stale copy.
"""
from __future__ import annotations

import hashlib
import inspect

__all__ = ["forward_fingerprint"]


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
