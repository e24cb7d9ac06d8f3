"""Locate and import a real ComfyUI checkout for integration tests, or skip with the reason.

Set ``COMFYUI_PATH`` to the root of a ComfyUI checkout (the folder holding ``main.py``), or run the
tests with this pack inside ``ComfyUI/custom_nodes/``. Imports force CPU mode (``--cpu``) before
``comfy.model_management`` is loaded, exactly as ``python main.py --cpu`` would.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parents[1]


def comfyui_root() -> Path | None:
    env = os.environ.get("COMFYUI_PATH")
    candidates = [Path(env)] if env else []
    candidates.append(PACK_ROOT.parent.parent)  # <ComfyUI>/custom_nodes/<pack>
    for root in candidates:
        if (root / "main.py").is_file() and (root / "comfy" / "model_management.py").is_file():
            return root.resolve()
    return None


def require_comfyui():
    """Import ComfyUI's core modules (CPU mode) or skip the calling test with an explicit reason."""
    root = comfyui_root()
    if root is None:
        pytest.skip("ComfyUI not found: set COMFYUI_PATH to a ComfyUI checkout to run this test")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        import comfy.options
        comfy.options.enable_args_parsing(False)
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        import comfy.model_management  # noqa: F401  (reads args.cpu at import)
        import comfy.sd  # noqa: F401
        import comfy.samplers  # noqa: F401
        import folder_paths  # noqa: F401
    except ImportError as exc:  # a broken environment is a failure, not a skip
        raise RuntimeError(f"ComfyUI at {root} is present but failed to import: {exc}") from exc
    return root
