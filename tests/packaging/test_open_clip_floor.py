"""The open_clip floor in requirements.txt is real: the floor release, installed alone into a fresh
venv, runs every open_clip code path of the pack; the release before it does not.

Each test creates a venv that sees this environment's packages (torch, safetensors...), installs
exactly one open_clip_torch version from the package index with ``--no-deps`` (one install per
test), and runs ``open_clip_probe.py`` there (a tiny random model as a checkpoint file and as a
Hugging Face style folder through ``local-dir:``, then a CLIP text loss and gradient). Needs the
package index (PyPI); slow (a pip install each).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.packaging import venvs

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).resolve().parent / "open_clip_probe.py"
PREVIOUS = "2.32.0"  # the last release before the floor (PyPI's list: ..., 2.31.0, 2.32.0, 3.0.0, ...)


def floor() -> str:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            if req.name.replace("_", "-").lower() == "open-clip-torch":
                (spec,) = req.specifier
                assert spec.operator == ">=", req
                return spec.version
    raise AssertionError("open_clip_torch is not in requirements.txt")


def _probe_with(version: str, tmp_path: Path) -> dict:
    python = venvs.make_venv(tmp_path / f"oc-{version}")
    r = venvs.pip(python, "install", "--no-deps", "--no-input", f"open_clip_torch=={version}")
    assert r.returncode == 0, f"pip could not install open_clip_torch=={version}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    installed = re.findall(r"Successfully installed (.+)", r.stdout)
    assert installed == [f"open_clip_torch-{version}"] or installed == [f"open-clip-torch-{version}"], r.stdout
    out = venvs.run_python(python, str(PROBE), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["version"] == version and str(tmp_path) in result["file"], result  # the venv's copy
    return result


def test_floor_release_runs_the_pack(tmp_path):
    version = floor()
    result = _probe_with(version, tmp_path)
    failed = {k: v for k, v in result["steps"].items() if not v["ok"]}
    assert failed == {}, json.dumps(failed, indent=1)
    print(f"open_clip {version}: {json.dumps(result['steps'])}")


def test_release_before_the_floor_lacks_the_api(tmp_path):
    assert PREVIOUS != floor()
    result = _probe_with(PREVIOUS, tmp_path)
    folder = result["steps"]["hf_style_folder_local_dir"]
    assert not folder["ok"], f"open_clip {PREVIOUS} ran the local-dir: path: the floor could be lower"
    print(f"open_clip {PREVIOUS}: {folder['error']}")
