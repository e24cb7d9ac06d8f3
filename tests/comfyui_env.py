"""Locate and import a real ComfyUI for integration tests, and the one place tests give up on a
missing prerequisite.

ComfyUI is found as ``tests/comfyui_bootstrap.py`` finds it: ``COMFYUI_PATH``, else the ComfyUI
this pack is installed in (``<ComfyUI>/custom_nodes/<pack>``), else ``.cache/ComfyUI`` (where the
bootstrap unpacks the pinned version). Imports force CPU mode (``--cpu``) before
``comfy.model_management`` is loaded, exactly as ``python main.py --cpu`` would.

:func:`unavailable` is how every test reacts to something missing from the machine (ComfyUI,
chromium, the frontend wheel, ``../shared`` data): on a user's machine it skips with the reason; in
CI (``CI=true``) it fails, so a CI run can never go green by skipping what it was meant to prove.
``tests/test_suite_rules.py`` checks that no test skips any other way.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.comfyui_bootstrap import find_root

PACK_ROOT = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    """``CI`` set to true/1/yes (GitHub Actions, GitLab and most CI services set ``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str):
    """Give up on the calling test because the machine lacks something: skip with ``reason``, or
    under ``CI=true`` fail with it (CI must run everything)."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing prerequisite fails the run instead of skipping)",
                    pytrace=False)
    pytest.skip(reason)


def comfyui_root() -> Path | None:
    return find_root()[0]


def require_comfyui():
    """Import ComfyUI's core modules (CPU mode), or give up through :func:`unavailable` with why."""
    root, why = find_root()
    if root is None:
        unavailable(why)
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
        raise RuntimeError(f"ComfyUI at {root} is present but failed to import: {exc}. Install its "
                           "requirements: python tests/comfyui_bootstrap.py") from exc
    return root
