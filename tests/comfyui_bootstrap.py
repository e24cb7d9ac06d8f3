"""Give the test suite a ComfyUI without a human step: ``python tests/comfyui_bootstrap.py``.

Where the ComfyUI comes from, first match wins:

1. ``COMFYUI_PATH``, if set (it must be a ComfyUI checkout: the folder holding ``main.py``);
2. the ComfyUI this pack is installed in (``<ComfyUI>/custom_nodes/<pack>``);
3. ``.cache/ComfyUI`` in this repository, if an earlier run unpacked the pinned version there;
4. the unmodified source archive in ``../shared/comfyui/`` (beside the repository; CI and the
   development machines have it), unpacked into ``.cache/ComfyUI`` (ignored by git);
5. a shallow ``git clone`` of the pinned tag into ``.cache/ComfyUI`` (a machine with internet).

Then ComfyUI's own ``requirements.txt`` is installed with pip, as a user would, except
``torchaudio``: the wheel pip picks is built for another CUDA than the registry's torch and breaks
``import transformers``; nothing the pack or its tests use needs it (ComfyUI only warns that its
audio models are broken), so it is left out and uninstalled if present. ``--no-install`` skips pip.

Standard library only; prints the ComfyUI root it settled on. ``tests/comfyui_env.py`` finds the
same root with :func:`find_root` (without unpacking or cloning anything).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
#: the version ``requires-comfyui`` in pyproject.toml names, and the archive's commit
COMFYUI_VERSION = "0.3.64"
COMFYUI_COMMIT = "a125cd8"
COMFYUI_GIT = "https://github.com/comfyanonymous/ComfyUI.git"
ARCHIVE = PACK_ROOT.parent / "shared" / "comfyui" / f"ComfyUI-{COMFYUI_VERSION}-{COMFYUI_COMMIT}.tar.gz"
CACHE = PACK_ROOT / ".cache" / "ComfyUI"
STAMP = ".doodl-test-comfyui"       # written into CACHE once it is complete
SKIP_REQUIREMENTS = {"torchaudio"}


class BootstrapError(RuntimeError):
    """No ComfyUI could be found or made; the message says what to do."""


def is_comfyui(root: Path) -> bool:
    return (root / "main.py").is_file() and (root / "comfy" / "model_management.py").is_file()


def cache_ready() -> bool:
    stamp = CACHE / STAMP
    return is_comfyui(CACHE) and stamp.is_file() and stamp.read_text().startswith(COMFYUI_VERSION + " ")


def find_root() -> tuple[Path | None, str]:
    """``(root, how)`` of the ComfyUI to test against without creating one, or ``(None, why)``.
    A ``COMFYUI_PATH`` that is set but is no ComfyUI is reported, never silently passed over."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        root = Path(env).expanduser()
        if is_comfyui(root):
            return root.resolve(), "COMFYUI_PATH"
        return None, (f"COMFYUI_PATH={env} is not a ComfyUI checkout (no main.py and "
                      "comfy/model_management.py there): point it at the folder holding main.py, or unset it")
    host = PACK_ROOT.parent.parent           # <ComfyUI>/custom_nodes/<pack>
    if PACK_ROOT.parent.name == "custom_nodes" and is_comfyui(host):
        return host.resolve(), "the ComfyUI this pack is installed in"
    if cache_ready():
        return CACHE.resolve(), f"the test cache {CACHE}"
    return None, ("ComfyUI not found: run `python tests/comfyui_bootstrap.py` (it unpacks "
                  f"{ARCHIVE.name} from ../shared/comfyui or clones ComfyUI v{COMFYUI_VERSION}) or set "
                  "COMFYUI_PATH to a ComfyUI checkout")


def _install(tree: Path, origin: str) -> None:
    """Stamp a verified ComfyUI tree with its version and origin and move it to the cache."""
    (tree / STAMP).write_text(f"{COMFYUI_VERSION} {COMFYUI_COMMIT} from {origin}\n")
    if CACHE.exists():
        shutil.rmtree(CACHE)
    tree.rename(CACHE)


def _unpack(archive: Path) -> None:
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="ComfyUI-unpack-", dir=CACHE.parent))
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # Python < 3.11.4 / 3.10.12: refuse anything outside the folder by hand
                for m in tar.getmembers():
                    if m.name.startswith(("/", "..")) or "/../" in m.name or m.issym() or m.islnk():
                        raise BootstrapError(f"unsafe member {m.name!r} in {archive}")
                tar.extractall(tmp)
        src = tmp / "ComfyUI"
        if not is_comfyui(src):
            raise BootstrapError(f"{archive} does not hold ComfyUI/main.py: is it the ComfyUI source archive?")
        _install(src, archive.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _clone() -> None:
    if shutil.which("git") is None:
        raise BootstrapError(f"no ComfyUI: {ARCHIVE} is missing and git is not installed. Set "
                             "COMFYUI_PATH to a ComfyUI checkout, or install git")
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="ComfyUI-clone-", dir=CACHE.parent))
    try:
        dest = tmp / "ComfyUI"
        cmd = ["git", "clone", "--quiet", "--depth", "1", "--branch", f"v{COMFYUI_VERSION}", COMFYUI_GIT, str(dest)]
        print("+", " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise BootstrapError(f"git clone of ComfyUI v{COMFYUI_VERSION} failed (no internet?). Set "
                                 f"COMFYUI_PATH to a ComfyUI checkout, or put {ARCHIVE.name} in {ARCHIVE.parent}")
        head = subprocess.run(["git", "-C", str(dest), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        if not head.startswith(COMFYUI_COMMIT):
            raise BootstrapError(f"tag v{COMFYUI_VERSION} is at {head.strip()}, not {COMFYUI_COMMIT}")
        shutil.rmtree(dest / ".git", ignore_errors=True)
        _install(dest, "git")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_root() -> tuple[Path, str]:
    root, how = find_root()
    if root is not None:
        return root, how
    if os.environ.get("COMFYUI_PATH"):
        raise BootstrapError(how)
    if ARCHIVE.is_file():
        _unpack(ARCHIVE)
        return CACHE.resolve(), f"{ARCHIVE} unpacked into {CACHE}"
    _clone()
    return CACHE.resolve(), f"a shallow clone of v{COMFYUI_VERSION} in {CACHE}"


def requirement_name(line: str) -> str | None:
    """The distribution a requirements.txt line names (None for blanks, comments and options)."""
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        return None
    m = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
    return m.group(0).lower().replace("_", "-") if m else None


def install_requirements(root: Path) -> None:
    lines = (root / "requirements.txt").read_text().splitlines()
    kept = [ln for ln in lines if requirement_name(ln) not in SKIP_REQUIREMENTS]
    with tempfile.NamedTemporaryFile("w", suffix="-comfyui-requirements.txt", delete=False) as f:
        f.write("\n".join(kept) + "\n")
    try:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "-r", f.name]
        print(f"+ pip install -q -r {root / 'requirements.txt'} (without {', '.join(sorted(SKIP_REQUIREMENTS))})",
              flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise BootstrapError(f"pip could not install ComfyUI's requirements ({root / 'requirements.txt'})")
    finally:
        os.unlink(f.name)
    import importlib.util

    if importlib.util.find_spec("torchaudio") is not None:
        print("+ pip uninstall -y torchaudio (it breaks `import transformers` here)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "torchaudio"], check=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-install", action="store_true", help="only find or unpack ComfyUI; skip pip")
    args = ap.parse_args(argv)
    try:
        root, how = ensure_root()
        print(f"ComfyUI for the tests: {root} ({how})", flush=True)
        if not args.no_install:
            install_requirements(root)
    except BootstrapError as exc:
        print(f"comfyui_bootstrap: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
