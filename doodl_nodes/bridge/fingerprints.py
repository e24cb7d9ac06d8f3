"""ComfyUI forwards that the pack replaces with a faster equivalent of its own, and their fingerprints.

A replacement (``channels_last.py``, ``fused_geglus.py``) reproduces one ComfyUI version's forward;
:func:`replaced_forwards` uses it only where the class's forward still has the source it was written
against, so a ComfyUI that changes that forward keeps its own (correct, only slower) instead of a
stale copy.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import logging
from typing import Callable, Optional

import torch

__all__ = ["forward_fingerprint", "replaced_forwards"]

log = logging.getLogger("doodl")


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
def replaced_forwards(module: torch.nn.Module, cls: Optional[type], known: frozenset, forward: Callable):
    """Within the context every submodule of ``module`` of exactly class ``cls`` (and without an
    instance-level forward of someone else's) runs ``forward(submodule, *args, **kwargs)``, provided
    ``cls.forward``'s fingerprint is in ``known``; put back after. Yields how many were replaced."""
    ok = cls is not None and forward_fingerprint(cls.forward) in known
    if cls is not None and not ok:
        log.debug("DOODL: %s.forward is not the one the pack's replacement knows; left as it is", cls.__name__)
    swapped = []
    try:
        if ok:
            for m in module.modules():
                if type(m) is cls and "forward" not in m.__dict__:
                    m.forward = functools.partial(forward, m)
                    swapped.append(m)
        yield len(swapped)
    finally:
        for m in swapped:
            with contextlib.suppress(AttributeError):
                del m.forward
