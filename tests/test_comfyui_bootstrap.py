"""``tests/comfyui_bootstrap.py``: where the suite's ComfyUI comes from, on fake archives (no
ComfyUI, no network, no pip)."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from tests import comfyui_bootstrap as boot


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


FAKE = {"ComfyUI/main.py": b"# main\n", "ComfyUI/comfy/model_management.py": b"# mm\n",
        "ComfyUI/requirements.txt": b"torch\ntorchaudio\nav>=14.2.0\n"}


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """The bootstrap's cache and archive moved into tmp_path; COMFYUI_PATH unset."""
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setattr(boot, "CACHE", tmp_path / "repo" / ".cache" / "ComfyUI")
    monkeypatch.setattr(boot, "PACK_ROOT", tmp_path / "repo")
    monkeypatch.setattr(boot, "ARCHIVE", tmp_path / "shared" / "comfyui" / "ComfyUI-x.tar.gz")
    boot.ARCHIVE.parent.mkdir(parents=True)
    return tmp_path


def test_archive_is_unpacked_into_the_cache_once(sandbox, monkeypatch):
    assert boot.find_root()[0] is None
    _archive(boot.ARCHIVE, FAKE)
    root, how = boot.ensure_root()
    assert root == boot.CACHE.resolve() and "unpacked" in how
    assert (root / "main.py").read_bytes() == b"# main\n"
    assert (root / boot.STAMP).read_text().startswith(boot.COMFYUI_VERSION + " ")
    assert boot.find_root() == (root, f"the test cache {boot.CACHE}")
    boot.ARCHIVE.unlink()          # the second run uses the cache, touching nothing
    assert boot.ensure_root()[0] == root
    assert [p.name for p in boot.CACHE.parent.iterdir()] == ["ComfyUI"]  # no temp folders left


def test_half_unpacked_cache_is_not_used(sandbox):
    (boot.CACHE / "comfy").mkdir(parents=True)
    (boot.CACHE / "main.py").write_text("")
    (boot.CACHE / "comfy" / "model_management.py").write_text("")
    assert boot.find_root()[0] is None     # no stamp: an interrupted unpack
    _archive(boot.ARCHIVE, FAKE)
    assert boot.ensure_root()[0] == boot.CACHE.resolve()


def test_comfyui_path_wins_and_a_wrong_one_is_an_error(sandbox, monkeypatch):
    _archive(boot.ARCHIVE, FAKE)
    mine = sandbox / "MyComfyUI"
    (mine / "comfy").mkdir(parents=True)
    (mine / "main.py").write_text("")
    (mine / "comfy" / "model_management.py").write_text("")
    monkeypatch.setenv("COMFYUI_PATH", str(mine))
    assert boot.ensure_root() == (mine.resolve(), "COMFYUI_PATH")
    monkeypatch.setenv("COMFYUI_PATH", str(sandbox / "nowhere"))
    with pytest.raises(boot.BootstrapError, match="not a ComfyUI checkout"):
        boot.ensure_root()
    assert not boot.CACHE.exists()      # never falls back silently


def test_unsafe_or_wrong_archives_are_refused(sandbox):
    _archive(boot.ARCHIVE, {"ComfyUI/../../evil.py": b"x", **FAKE})
    with pytest.raises((tarfile.TarError, boot.BootstrapError)):
        boot.ensure_root()
    assert not (sandbox / "evil.py").exists() and not boot.CACHE.exists()
    _archive(boot.ARCHIVE, {"Other/readme.txt": b"x"})
    with pytest.raises(boot.BootstrapError, match="does not hold ComfyUI/main.py"):
        boot.ensure_root()


def test_requirements_are_installed_without_torchaudio(sandbox, monkeypatch):
    _archive(boot.ARCHIVE, FAKE)
    root, _ = boot.ensure_root()
    seen = []

    def fake_run(cmd, **kw):
        if "install" in cmd:
            seen.append(Path(cmd[cmd.index("-r") + 1]).read_text().split())

        class Done:
            returncode = 0
        return Done()

    monkeypatch.setattr(boot.subprocess, "run", fake_run)
    boot.install_requirements(root)
    assert seen == [["torch", "av>=14.2.0"]]


@pytest.mark.parametrize("line,name", [("torchaudio", "torchaudio"), ("torchaudio>=2.0  # audio", "torchaudio"),
                                       ("Pillow", "pillow"), ("pydantic-settings~=2.0", "pydantic-settings"),
                                       ("comfyui_frontend_package==1.27.10", "comfyui-frontend-package"),
                                       ("#non essential dependencies:", None), ("", None), ("-r other.txt", None)])
def test_requirement_names(line, name):
    assert boot.requirement_name(line) == name


def test_the_pinned_version_is_the_one_pyproject_requires():
    import re

    text = (Path(boot.__file__).parents[1] / "pyproject.toml").read_text()
    assert re.search(r'^requires-comfyui = "(.*)"$', text, re.M).group(1) == f">={boot.COMFYUI_VERSION}"
