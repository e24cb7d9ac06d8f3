"""Safe weight-file loading: safetensors, or ``torch.load(..., weights_only=True)``; nothing else.

A ``.pth``/``.pt``/``.bin``/``.ckpt``/``.pth.tar`` file is a pickle. ``weights_only=True`` uses
torch's restricted unpickler, which only rebuilds tensors and plain containers and refuses any other
global *before* calling it, so a file that carries code is rejected without running that code. Any
other format (``.onnx``, ``.npz``, ``.pkl`` of arbitrary objects, ...) is refused with a message.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = ["WeightsFileError", "UnsafeWeightsError", "load_weights_file", "extract_state_dict",
           "strip_prefix", "PICKLE_SUFFIXES", "SAFETENSORS_SUFFIXES"]

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pth.tar", ".tar", ".pkl")


class WeightsFileError(RuntimeError):
    """A weight file is missing, unreadable, or has an unexpected layout."""


class UnsafeWeightsError(WeightsFileError):
    """A pickle-based weight file holds objects other than tensors and plain containers."""


def _describe(path: Path, hint: str | None) -> str:
    return f"{path}" + (f" ({hint})" if hint else "")


def load_weights_file(path: str | os.PathLike, *, hint: str | None = None) -> Any:
    """Load a weight file onto the CPU, refusing anything that could execute code.

    ``hint`` (where the file comes from) is added to every error message.
    Returns what the file holds: a ``dict[str, Tensor]`` for safetensors, any weights-only object
    (usually a state dict or a checkpoint dict) for pickle-based files.
    """
    path = Path(path)
    where = _describe(path, hint)
    if not path.is_file():
        raise WeightsFileError(f"weight file not found: {where}")
    name = path.name.lower()
    if name.endswith(SAFETENSORS_SUFFIXES):
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # corrupt or truncated file
            raise WeightsFileError(f"could not read safetensors file {where}: {exc}") from exc
    if not name.endswith(PICKLE_SUFFIXES):
        raise WeightsFileError(
            f"unsupported weight file type: {where}. Use a .safetensors file, or a PyTorch "
            f"state dict ({', '.join(PICKLE_SUFFIXES)}) loadable with "
            f"torch.load(weights_only=True).")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeWeightsError(
            f"refusing to load {where}: it contains pickled Python objects that are not plain "
            f"tensors, so loading it could run code. Only safetensors files and weights-only "
            f"PyTorch files are accepted. If you trust the file, convert it once in a separate "
            f"Python session (torch.load(..., weights_only=False), then "
            f"safetensors.torch.save_file(state_dict, 'file.safetensors')). Detail: "
            f"{_unpickler_detail(exc)}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise WeightsFileError(f"could not read weight file {where}: {exc}") from exc


def _unpickler_detail(exc: BaseException) -> str:
    text = str(exc)
    match = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if match:
        return f"it references {match.group(1)}"
    lines = [ln.strip() for ln in text.splitlines() if "WeightsUnpickler error" in ln]
    return lines[0] if lines else type(exc).__name__


def extract_state_dict(obj: Any, *, where: str = "weight file",
                       keys: tuple[str, ...] = ("state_dict", "model", "module")) -> dict:
    """The tensor mapping inside a checkpoint (``obj['state_dict']`` etc.), or ``obj`` itself."""
    if isinstance(obj, Mapping):
        for key in keys:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(
                    isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
    raise WeightsFileError(f"{where} holds no state dict (a mapping of names to tensors); "
                           f"found {type(obj).__name__}"
                           + (f" with keys {sorted(map(str, obj.keys()))[:8]}"
                              if isinstance(obj, Mapping) else ""))


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict:
    """Remove ``prefix`` from every key that has it (e.g. DataParallel's ``module.``)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}
