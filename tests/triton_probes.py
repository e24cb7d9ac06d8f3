"""Run a probe script of the fused-kernel tests under Triton's interpreter (``TRITON_INTERPRET=1``
must be set before Triton is imported, hence a subprocess) and read the JSON lines it prints."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from doodl_nodes.core.fused_norm import triton_available
from tests.comfyui_env import unavailable

ROOT = Path(__file__).resolve().parents[1]


def interpreter_probe_rows(probe: Path, *args: str, cwd: Path | None = None) -> list[dict]:
    """``python probe ROOT *args`` with the interpreter on; its JSON lines (it must exit 0)."""
    if not triton_available():
        unavailable("Triton is not installed (it comes with PyTorch's CUDA wheels on Linux)")
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, str(probe), str(ROOT), *args], env=env, capture_output=True,
                         text=True, timeout=600, cwd=None if cwd is None else str(cwd))
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
