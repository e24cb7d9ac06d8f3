"""benchmarks/bench_rewards.py runs every code path on the CPU (``--tiny``): the four reward models
built in their architectures, DOODL through ``run_doodl`` with the ReNO combination, both rows
(whole images and crops), results written; exit code 0."""
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


def test_bench_rewards_tiny_runs(tmp_path):
    root = require_comfyui()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_rewards.py"), "--tiny", "--out",
                           str(tmp_path), "--comfyui", str(root), "--iters", "2", "--crops", "0,2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "results_rewards_tiny.json").read_text())
    assert data["errors"] == {}
    rewards = data["sections"]["setup"]["rewards"]
    assert set(rewards) == {"hps", "imagereward", "pickscore", "clip"}
    assert all(r["differentiated_params"] > 0 for r in rewards.values())
    rows = data["sections"]["doodl"]
    assert set(rows) == {"crops0_T2", "crops2_T2"}
    for row in rows.values():
        assert len(row["iteration_s"]) == 1 and math.isfinite(row["median_iteration_s"])
        assert len(row["losses"]) == 2 and all(math.isfinite(v) for v in row["losses"])
        assert set(row["scores"]) == {"1.hps", "2.imagereward", "3.pickscore", "4.clip_score"}
