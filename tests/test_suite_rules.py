"""Rules of the test suite itself, checked statically (no ComfyUI needed)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.comfyui_env import in_ci, unavailable

TESTS = Path(__file__).resolve().parent
#: the only file allowed to skip: ``unavailable`` skips on a user's machine and fails under CI=true
HELPER = TESTS / "comfyui_env.py"
SKIPS = re.compile(r"pytest\.skip\b|importorskip|mark\.skip|skipif|xfail|\bSkipTest\b|unittest\.skip")


def test_every_skip_goes_through_unavailable():
    """A test that gives up for lack of ComfyUI, a browser or data must call
    ``tests.comfyui_env.unavailable`` (so CI fails instead of skipping); nothing else may skip."""
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path in (HELPER, Path(__file__).resolve()):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if SKIPS.search(line):
                offenders.append(f"{path.relative_to(TESTS.parent)}:{n}: {line.strip()}")
    assert not offenders, "skip through tests.comfyui_env.unavailable instead:\n" + "\n".join(offenders)


def test_unavailable_skips_on_a_user_machine_and_fails_in_ci(monkeypatch):
    for value in ("", "false", "0"):
        monkeypatch.setenv("CI", value)
        assert not in_ci()
        with pytest.raises(pytest.skip.Exception, match="no widget"):
            unavailable("no widget")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        unavailable("no widget")
    for value in ("true", "TRUE", "1", "yes"):
        monkeypatch.setenv("CI", value)
        assert in_ci()
        with pytest.raises(pytest.fail.Exception, match="no widget.*CI=true"):
            unavailable("no widget")


def test_missing_comfyui_is_reported_with_what_to_do(monkeypatch, tmp_path):
    from tests import comfyui_bootstrap as boot
    from tests.comfyui_env import require_comfyui

    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    root, why = boot.find_root()
    assert root is None and "not a ComfyUI checkout" in why and str(tmp_path) in why
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="COMFYUI_PATH"):
        require_comfyui()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="COMFYUI_PATH"):
        require_comfyui()


def test_pack_node_calls_name_their_arguments():
    """Node methods take many same-typed inputs (cfg, lr, clip, perturbation, p...): a test that
    passes them by position would silently swap values when a signature is reordered. Calls of a
    pack node (``DOODL...()``/``EDICT...()``) pass at most three arguments by position."""
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Call)):
                continue
            cls = node.func.value.func
            name = cls.id if isinstance(cls, ast.Name) else getattr(cls, "attr", "")
            if name.startswith(("DOODL", "EDICT")) and len(node.args) > 3:
                offenders.append(f"{path.relative_to(TESTS.parent)}:{node.lineno}: {name}().{node.func.attr} "
                                 f"with {len(node.args)} positional arguments")
    assert not offenders, "pass node inputs by keyword:\n" + "\n".join(offenders)
