"""benchmarks/bench_cards.py runs its code paths on the CPU (``--tiny``): DOODL with the default
settings, with memory settings forced (the calibration rows), on an "emulated card" (a no-op off
CUDA) and at batch 2; rows completed with finite times and losses; exit code 0."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.comfyui_env import require_comfyui

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_bench_cards_tiny_runs(tmp_path):
    root = require_comfyui()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_cards.py"), "--tiny", "--out", str(tmp_path),
                           "--comfyui", str(root), "--sections", "sd15,knobs,cards_sd15,norms", "--iters", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "results_cards_tiny.json").read_text())
    assert data["errors"] == {}
    secs = data["sections"]
    assert set(secs["sd15"]) == {"T2", "T3"} and set(secs["cards_sd15"]) == {"8GiB", "12GiB"}
    knobs = secs["knobs"]
    assert list(knobs) == [name for name, _ in _knobs()]
    for row in [*secs["sd15"].values(), *knobs.values(), *secs["cards_sd15"].values()]:
        assert row["completed"], row.get("error")
        assert math.isfinite(row["median_iteration_s"]) and all(math.isfinite(v) for v in row["final_losses"])
    norms = secs["norms"]
    assert list(norms) == ["pytorch norms", "fused norms"]
    for row in norms.values():
        assert row["doodl"]["completed"], row["doodl"].get("error")
        assert row["calls"]["grad_finite_nonzero"] and row["calls"]["graph_grad_ms"] > 0
    # forced rows ran with exactly the forced settings, the default rows with the automatic plan
    assert all(r["memory_plan"]["choices"] == ["forced"] for r in knobs.values())
    assert all(r["memory_plan"]["choices"] != ["forced"] for r in secs["sd15"].values())


def _knobs():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_cards_for_test", REPO / "benchmarks" / "bench_cards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)   # defines the tables; ComfyUI is set up only by main()
    return module.KNOBS


def test_bench_calls_tiny_runs(tmp_path):
    """benchmarks/bench_calls.py (where a model call's time goes) runs every variant on the CPU: each
    no-grad variant computes the call it replaces (float32 rounding apart), each gradient variant a
    finite gradient."""
    root = require_comfyui()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_calls.py"), "--tiny", "--out", str(tmp_path),
                           "--comfyui", str(root)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    calls = json.loads((tmp_path / "results_calls_tiny.json").read_text())["sections"]["calls"]["sd15"]
    assert len(calls["nograd"]) == 4 and len(calls["grad"]) == 3
    assert all(row["rel_vs_before"] < 1e-4 for row in calls["nograd"].values()), calls["nograd"]
    assert all(math.isfinite(row["grad_rel_vs_before"]) for row in calls["grad"].values()), calls["grad"]
