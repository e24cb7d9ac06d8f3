"""Triton for the pack's fused kernels (``fused_norm.py``, ``fused_geglu.py``), and the fallback to
PyTorch's ops where it cannot run them.

Triton ships with PyTorch's CUDA wheels on Linux; elsewhere ``triton`` is None and every call runs
PyTorch's ops. ``TRITON_INTERPRET=1`` in the environment before import runs the kernels on CPU
tensors through Triton's interpreter (the tests do that). A kernel that fails to build or launch (a
GPU or toolchain Triton does not support) gives up its family of kernels for the rest of the
process, logged once; out of memory is not such a failure and is raised.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch

__all__ = ["triton", "tl", "INTERPRET", "KernelFallback"]

log = logging.getLogger("doodl")

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the platform
    triton = tl = None

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


class KernelFallback:
    """One family of fused kernels: whether it may run, and why it was given up (``failure``)."""

    def __init__(self, kernels: str, instead: str):
        self.kernels = kernels      # "GroupNorm": what the log line calls them
        self.instead = instead      # "PyTorch's GroupNorm runs": what runs after a failure
        self.failure: Optional[str] = None

    def available(self) -> bool:
        """Triton is importable and these kernels have not failed in this process."""
        return triton is not None and self.failure is None

    def runs_on(self, t: torch.Tensor) -> bool:
        """The kernels may run on ``t``: available, not empty, on CUDA (or on the CPU when interpreted)."""
        return self.available() and t.numel() > 0 and (t.is_cuda or (INTERPRET and t.device.type == "cpu"))

    def give_up(self, exc: BaseException) -> None:
        """After a failed build or launch: PyTorch's ops from now on (out of memory is re-raised)."""
        if isinstance(exc, torch.OutOfMemoryError):
            raise exc
        self.failure = f"{type(exc).__name__}: {exc}"[:400]
        log.warning("DOODL: the fused %s kernels failed (%s); %s from here on", self.kernels, self.failure,
                    self.instead)
