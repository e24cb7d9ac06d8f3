"""``benchmarks/bench_doodl.py`` on the CPU at a tiny size (``--tiny``): every default section runs
through the pack's public entry points, none raises, and a section that raises makes the run exit
1 (it used to record the error and report success)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.comfyui_env import require_comfyui

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "bench_doodl.py"
SECTIONS = ["env", "micro", "doodl", "sampling", "roundtrip", "flops", "official", "plain"]


def test_tiny_benchmark_runs_every_default_section(tmp_path):
    root = require_comfyui()
    proc = subprocess.run([sys.executable, str(BENCH), "--tiny", "--iters", "2", "--out", str(tmp_path),
                           "--comfyui", str(root)], capture_output=True, text=True, timeout=900,
                          cwd=str(REPO))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads((tmp_path / "results_sd15_tiny.json").read_text())
    assert data["errors"] == {} and data["skipped"] == []
    secs = data["sections"]
    assert set(SECTIONS) <= set(secs)
    runs = list(secs["doodl"].values()) + list(secs["official"].values())
    assert len(secs["doodl"]) == 9
    for r in runs:
        assert "error" not in r, r
        assert len(r["iteration_s"]) >= 1 and math.isfinite(r["median_iteration_s"])
    official = secs["official"]["T2"]
    assert official["unet_weights_with_grad"] > 0           # the released code's dW really computed
    assert set(secs["micro"]) == {"fp16_weights", "bf16_weights"}
    for row in secs["roundtrip"].values():                   # EDICT stays exact in float64
        assert row["float64_state_roundtrip_maxabs_model_space_x"] < 1e-10
    assert [r["ok"] and r["grad_finite"] for r in secs["plain"].values()] == [True, True]
    assert secs["flops"]["tiny"]["cfg_call_fwd_bwd"] > secs["flops"]["tiny"]["cfg_call_fwd"] > 0


def test_a_section_that_raises_makes_the_run_exit_1(tmp_path, capsys):
    root = require_comfyui()
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench_doodl
    finally:
        sys.path.remove(str(BENCH.parent))
    rc = bench_doodl.main(["--tiny", "--out", str(tmp_path), "--comfyui", str(root),
                           "--sections", "env,no-such-section"])
    assert rc == 1
    data = json.loads((tmp_path / "results_sd15_tiny.json").read_text())
    assert list(data["errors"]) == ["no-such-section"] and "info" in data["sections"]["env"]
    assert "FAILED" in capsys.readouterr().out
