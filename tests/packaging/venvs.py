"""Throwaway virtual environments for the install tests (standard library only).

``make_venv(path)`` creates a venv that sees the system's site-packages (the packages of the
ComfyUI environment the tests run in: torch, ComfyUI's requirements), as a user's ComfyUI venv
does; ``pip(venv, *args)`` runs that venv's pip. Only packages named by a test are installed
into it, so what the test proves is about exactly those.
"""
from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from pathlib import Path


def make_venv(path: Path, system_site_packages: bool = True) -> Path:
    """Create the venv (with pip) and return its python executable."""
    venv.EnvBuilder(system_site_packages=system_site_packages, with_pip=True, clear=True).create(str(path))
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    assert python.exists(), f"no python in the new venv {path}"
    if system_site_packages:
        # ensurepip puts its own (old) setuptools into the venv, which would hide the environment's
        # and make pip fetch a newer one for torch's metadata; drop it so the venv sees the
        # environment's packages only
        pip(python, "uninstall", "-y", "-q", "setuptools")
    if system_site_packages and sys.prefix != sys.base_prefix:
        # the tests run in a venv themselves: "system site-packages" would be the base interpreter's,
        # so point the new venv at this environment's site-packages (after its own) with a .pth file
        inner = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                               capture_output=True, text=True, check=True).stdout.strip()
        Path(inner, "zz_parent_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def pip(python: Path, *args: str, timeout: float = 540.0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1")
    return subprocess.run([str(python), "-m", "pip", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_python(python: Path, *args: str, cwd: Path | None = None, timeout: float = 300.0,
               env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONNOUSERSITE="1", **(env or {}))
    full_env.pop("PYTHONPATH", None)
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=str(cwd) if cwd else None, env=full_env)


def this_python() -> str:
    return sys.executable
