"""benchmarks/bench_arch.py in its --tiny CPU mode: every section and configuration runs, and what
it records is complete (the GPU numbers come from the same code at full size)."""
import json
import math
import os
import subprocess
import sys

import pytest

from tests.comfyui_env import PACK_ROOT, require_comfyui

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]


def test_bench_arch_tiny_runs_every_configuration(tmp_path):
    root = require_comfyui()
    cmd = [sys.executable, str(PACK_ROOT / "benchmarks" / "bench_arch.py"), "--tiny", "--comfyui", str(root),
           "--out", str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=str(PACK_ROOT), env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "bench_arch_tiny.json").read_text())
    assert data["skipped"] == []
    doodl = data["doodl"]
    assert {(r["config"], r["scorer"].split(" ")[0]) for r in doodl} == {
        (c, s) for c in ("sdxl_turbo_1", "sdxl_turbo_4", "flux_schnell_4", "sd3_medium_28")
        for s in ("CLIP", "aesthetic")}
    for r in doodl:
        assert "error" not in r, r.get("error")
        assert r["median_iteration_s"] > 0 and all(math.isfinite(v) for v in r["losses"])
        assert r["chain"] == ("edict" if r["config"] == "sd3_medium_28" else "euler")
    for p in data["profile"]:
        assert "error" not in p, p.get("error")
        assert p["model_call_grad_s"] > 0 and p["objective_s"] > 0 and p["predicted_iteration_s"] > 0
    graphs = {g["config"]: g for g in data["graphs"]}
    assert set(graphs) == {"sdxl_turbo_4", "flux_schnell_4", "sd3_medium_28"}
    for g in graphs.values():   # on the CPU both paths are the eager call: identical
        assert g["nograd_max_abs_diff"] == 0 and g["grad_rel_diff"] == 0 and g["graph_stats"] is None
    trips = {r["config"]: r for r in data["roundtrip"]}
    assert set(trips) == {"sdxl_turbo_4", "flux_schnell_4", "sd3_medium_28"}
    for r in trips.values():
        assert r["float64_latent"] < 1e-10 and r["float32_valued_latent"] < 1e-5
    assert "| configuration | scorer | s/iteration |" in proc.stdout
