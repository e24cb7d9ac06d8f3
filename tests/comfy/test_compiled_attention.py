"""``DOODL_TORCH_COMPILE``: ComfyUI's CUDA attention wrapper (an ``sdpa_kernel`` priority context in
every call) made the compiled graphs uncacheable by AOTAutograd (measured on an H200, run 16).
``bridge/compiled_attention.py`` sets the priority outside the traced region; with ComfyUI's
wrapper emulated on the CPU, the compiled graph is cached instead of bypassed, computes the same
value and gradient, and ComfyUI's function is put back. (The warm-start time itself needs a GPU.)"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.comfyui_env import require_comfyui

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("compiled_attention_probe.py")


def test_compiled_graphs_become_cacheable():
    require_comfyui()
    out = subprocess.run([sys.executable, str(PROBE), str(ROOT)], capture_output=True, text=True,
                         timeout=900, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
    assert row["as_is"].get("autograd_cache_bypass", 0) == 1, row      # ComfyUI's wrapper: refused
    assert row["fixed"].get("autograd_cache_bypass", 0) == 0, row
    assert row["fixed"].get("autograd_cache_saved", 0) == 1, row       # inside the context: cached
    assert row["changed"] and row["plain_inside"] and row["restored"], row
    assert row["same_value"] and row["grad_rel"] < 1e-6, row


def test_nothing_changes_without_comfyuis_wrapper(monkeypatch):
    require_comfyui()
    import comfy.ops

    from doodl_nodes.bridge.compiled_attention import attention_outside_graph

    monkeypatch.delattr(comfy.ops, "SDPA_BACKEND_PRIORITY", raising=False)
    original = comfy.ops.scaled_dot_product_attention
    with attention_outside_graph() as changed:
        assert not changed and comfy.ops.scaled_dot_product_attention is original
