"""The publish workflow (.github/workflows/publish_action.yml) and its version-bump gate.

The workflow itself can only run on GitHub; here its structure is checked (trigger, the standard
``Comfy-Org/publish-node-action`` with the ``REGISTRY_ACCESS_TOKEN`` secret, publishing gated on the
gate's output), and the gate script ``.github/scripts/version_bumped.py`` is run on throwaway git
repositories: a version bump publishes, an unchanged or lower version does not, a non-semver
version fails the job.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (requires-python >= 3.10): the same API from PyPI
    import tomli as tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "publish_action.yml"
SCRIPT = REPO / ".github" / "scripts" / "version_bumped.py"


def test_workflow_structure():
    wf = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    on = wf[True] if True in wf else wf["on"]  # PyYAML reads the key `on` as True
    assert on["push"]["branches"] == ["main"] and on["push"]["paths"] == ["pyproject.toml"]
    assert "workflow_dispatch" in on
    gate, publish = wf["jobs"]["version-bump"], wf["jobs"]["publish-node"]
    run = " ".join(step.get("run", "") for step in gate["steps"])
    assert ".github/scripts/version_bumped.py" in run and "github.event.before" in run
    assert gate["steps"][0]["with"]["fetch-depth"] == 0  # the previous commit must be in the clone
    assert publish["needs"] == "version-bump"
    assert "needs.version-bump.outputs.bumped == 'true'" in publish["if"]
    (action,) = [s for s in publish["steps"] if "publish-node-action" in s.get("uses", "")]
    assert action["uses"].startswith("Comfy-Org/publish-node-action@")
    assert action["with"]["personal_access_token"] == "${{ secrets.REGISTRY_ACCESS_TOKEN }}"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
                               "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
                               "HOME": str(repo), "PATH": "/usr/bin:/bin:/usr/local/bin"}).stdout.strip()


def _commit(repo: Path, version: str, description: str = "x") -> str:
    (repo / "pyproject.toml").write_text(f'[project]\nname = "doodl"\nversion = "{version}"\n'
                                         f'description = "{description}"\n', encoding="utf-8")
    _git(repo, "add", "pyproject.toml")
    _git(repo, "commit", "-q", "-m", f"v{version} {description}")
    return _git(repo, "rev-parse", "HEAD")


def _gate(repo: Path, *args: str) -> tuple[int, dict]:
    r = subprocess.run([sys.executable, str(SCRIPT), "--repo", str(repo), *args], capture_output=True, text=True)
    return r.returncode, dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


@pytest.fixture
def repo(tmp_path):
    _git(tmp_path, "init", "-q", "-b", "main")
    return tmp_path


def test_first_version_is_new(repo):
    _commit(repo, "0.1.0")
    assert _gate(repo, "--base", "0" * 40) == (0, {"bumped": "true", "version": "0.1.0", "previous": ""})


def test_bump_publishes_other_edits_do_not(repo):
    first = _commit(repo, "0.1.0")
    second = _commit(repo, "0.1.0", "only the description changed")
    assert _gate(repo, "--base", first)[1]["bumped"] == "false"
    _commit(repo, "0.2.0")
    assert _gate(repo, "--base", second)[1] == {"bumped": "true", "version": "0.2.0", "previous": "0.1.0"}
    # several commits in one push: compared with the commit before the push, not the parent
    _commit(repo, "0.2.0", "docs")
    assert _gate(repo, "--base", second)[1]["bumped"] == "true"
    assert _gate(repo)[1]["bumped"] == "false"  # no base: the parent (0.2.0 -> 0.2.0)
    # semver order, not string order
    base = _commit(repo, "0.9.0")
    _commit(repo, "0.10.0")
    assert _gate(repo, "--base", base)[1]["bumped"] == "true"


def test_lower_or_invalid_version_does_not_publish(repo):
    base = _commit(repo, "1.0.0")
    _commit(repo, "0.9.9")
    assert _gate(repo, "--base", base)[1]["bumped"] == "false"
    _commit(repo, "1.1")
    code, out = _gate(repo, "--base", base)
    assert code == 1 and "bumped" not in out


def test_unknown_base_falls_back_to_the_parent(repo):
    _commit(repo, "0.1.0")
    _commit(repo, "0.1.1")
    assert _gate(repo, "--base", "f" * 40)[1] == {"bumped": "true", "version": "0.1.1", "previous": "0.1.0"}


def test_repository_version_passes_the_gate_format():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    spec = importlib.util.spec_from_file_location("version_bumped", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.parse(version)
