"""pyproject.toml against the Comfy Registry's published rules, the icon, requirements.txt.

The rules (docs.comfy.org/registry/specifications, "pyproject.toml"):

* ``[project].name`` (required): under 100 characters; only letters, digits, ``-``, ``_``, ``.``; no two
  special characters in a row; starts with a letter (not a digit or special character); compared
  case-insensitively; best practice: no "ComfyUI" in it.
* ``version`` (required): semantic version ``X.Y.Z``.
* ``license``: ``{ file = "..." }`` or ``{ text = "..." }`` (a bare string is the wrong format).
* ``description`` (recommended), ``[project.urls] Repository`` (required by the Registry).
* ``requires-python`` (recommended), ``classifiers``: "Operating System :: ..." must start with
  Microsoft, POSIX, MacOS or OS Independent; "Environment :: ..." must be one of the accelerators
  the Registry knows (the same lists in ComfyUI's ``comfy_config/config_parser.py`` and comfy-cli's).
* ``[tool.comfy]``: ``PublisherId`` (required), ``DisplayName``, ``Icon`` (a URL; SVG, PNG, JPG or
  GIF; at most 800 x 400 px), ``requires-comfyui`` (each comma-separated part ``[op]X.Y.Z``, the
  pattern comfy-cli's ``validate_version`` enforces), ``includes``.

Also: the icon the URL points to is ``docs/icon.png`` in this repository (drawn by
``docs/make_icon.py``), and ``requirements.txt`` and ``[project].dependencies`` list the same
requirements. With ComfyUI present, its own parser (``comfy_config.config_parser``, which ComfyUI
runs on every custom node folder at start) reads every field; with comfy-cli installed, the
publishing parser ``comfy node validate`` uses reads it without a warning.
"""
from __future__ import annotations

import importlib.util
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (requires-python >= 3.10): the same API from PyPI
    import tomli as tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from PIL import Image

from tests.comfyui_env import comfyui_root, require_comfyui

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
COMFY = PYPROJECT["tool"]["comfy"]
OS_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")
ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                "GPU :: Apple Metal"}
VERSION_PART = re.compile(r"^(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?(\d+\.\d+\.\d+(?:-[a-zA-Z0-9]+)?)?$")
ICON_TYPES = {".svg", ".png", ".jpg", ".jpeg", ".gif"}
#: what ComfyUI installs itself: a custom node must never pin these (docs/maintainers/comfyui-internals.md §6)
COMFY_PROVIDED = {"torch", "torchvision", "torchaudio", "numpy", "safetensors", "transformers", "pillow"}


def registry_name_problems(name: str) -> list[str]:
    p = []
    if not name or len(name) >= 100:
        p.append("must be 1 to 99 characters")
    if not re.fullmatch(r"[A-Za-z0-9._-]*", name):
        p.append("only letters, digits, '-', '_' and '.' are allowed")
    if re.search(r"[._-]{2}", name):
        p.append("no consecutive special characters")
    if not re.match(r"[A-Za-z]", name):
        p.append("must start with a letter")
    if "comfyui" in name.lower():
        p.append("should not contain 'ComfyUI'")
    return p


@pytest.mark.parametrize("name, ok", [("doodl", True), ("image-processor", True), ("super.res_2", True),
                                      ("ComfyUI-enhancer", False), ("123-tool", False), ("-x", False),
                                      ("a--b", False), ("a b", False), ("x" * 100, False)])
def test_name_rule_itself(name, ok):
    assert (registry_name_problems(name) == []) == ok


def test_project_name():
    assert registry_name_problems(PROJECT["name"]) == []


def test_version_is_semver():
    assert re.fullmatch(r"\d+\.\d+\.\d+", PROJECT["version"]), PROJECT["version"]


def test_license():
    lic = PROJECT["license"]
    assert isinstance(lic, dict) and set(lic) <= {"file", "text"} and lic, lic
    if "file" in lic:
        assert (REPO / lic["file"]).is_file()
    else:
        assert lic["text"].strip()


def test_description_urls_python():
    assert len(PROJECT["description"]) >= 20
    repo_url = urlparse(PROJECT["urls"]["Repository"])
    assert repo_url.scheme == "https" and repo_url.netloc == "github.com"
    assert len([p for p in repo_url.path.split("/") if p]) == 2  # /owner/name
    SpecifierSet(PROJECT["requires-python"])  # a valid specifier
    assert "3.10" in SpecifierSet(PROJECT["requires-python"])


def test_classifiers():
    classifiers = PROJECT.get("classifiers", [])
    oses = [c[len("Operating System :: "):] for c in classifiers if c.startswith("Operating System :: ")]
    envs = [c[len("Environment :: "):] for c in classifiers if c.startswith("Environment ::")]
    assert oses and all(o.startswith(OS_PREFIXES) for o in oses), oses
    assert all(e in ACCELERATORS for e in envs), envs


def test_tool_comfy_fields():
    assert set(COMFY) <= {"PublisherId", "DisplayName", "Icon", "Banner", "includes", "web", "Models",
                          "requires-comfyui"}, sorted(COMFY)
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,38}", COMFY["PublisherId"]), COMFY["PublisherId"]
    assert COMFY["DisplayName"].strip()
    assert all((REPO / inc).exists() for inc in COMFY.get("includes", []))
    parts = [p.strip() for p in COMFY["requires-comfyui"].split(",")]
    assert all(VERSION_PART.match(p) for p in parts), COMFY["requires-comfyui"]
    assert "0.3.64" in SpecifierSet(COMFY["requires-comfyui"])  # the version the tests run against


def test_icon_url_points_at_the_committed_icon():
    url = urlparse(COMFY["Icon"])
    assert url.scheme == "https" and Path(url.path).suffix.lower() in ICON_TYPES
    owner_repo = urlparse(PROJECT["urls"]["Repository"]).path.strip("/")
    # raw.githubusercontent.com/<owner>/<repo>/<branch>/<path in the repository>
    assert url.netloc == "raw.githubusercontent.com", COMFY["Icon"]
    parts = url.path.strip("/").split("/")
    assert "/".join(parts[:2]) == owner_repo, "Icon must come from the Repository in [project.urls]"
    local = REPO.joinpath(*parts[3:])
    assert local == REPO / "docs" / "icon.png" and local.is_file()
    with Image.open(local) as im:
        assert im.format == "PNG" and im.width <= 800 and im.height <= 400 and im.width == im.height
    assert local.stat().st_size < 200_000


def test_icon_is_drawn_by_the_script(tmp_path):
    spec = importlib.util.spec_from_file_location("make_icon", REPO / "docs" / "make_icon.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "icon.png"
    assert mod.main(["--out", str(out)]) == 0
    with Image.open(out) as new, Image.open(REPO / "docs" / "icon.png") as old:
        assert new.size == old.size == (400, 400)


def _requirements_file() -> list[Requirement]:
    reqs = []
    for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert "#" not in line, f"inline comment in requirements.txt: {line!r} (Manager pip-installs each line)"
            reqs.append(Requirement(line))
    return reqs


def _key(r: Requirement):
    return canonicalize_name(r.name), str(r.specifier), str(r.marker or "")


def test_requirements_txt_and_dependencies_agree():
    from_file = sorted(_key(r) for r in _requirements_file())
    from_toml = sorted(_key(Requirement(d)) for d in PROJECT["dependencies"])
    assert from_file == from_toml
    assert not {k[0] for k in from_file} & COMFY_PROVIDED, "never pin what ComfyUI installs"


def test_open_clip_floor():
    """The floor is the first open_clip with the ``local-dir:`` schema and ``load_weights=``
    (3.0.0; 2.32.0 has neither): tests/packaging/test_install.py installs exactly it."""
    (oc,) = [r for r in _requirements_file() if canonicalize_name(r.name) == "open-clip-torch"]
    assert str(oc.specifier) == ">=3.0.0"


def test_comfyui_reads_the_pyproject():
    """ComfyUI's own parser (run on every custom node at start) reads every field we set."""
    root = require_comfyui()
    assert root is not None
    from comfy_config import config_parser

    cfg = config_parser.extract_node_configuration(str(REPO))
    assert cfg.project.name == PROJECT["name"] and cfg.project.version == PROJECT["version"]
    assert cfg.tool_comfy.publisher_id == COMFY["PublisherId"]
    assert cfg.tool_comfy.display_name == COMFY["DisplayName"]
    assert cfg.tool_comfy.icon == COMFY["Icon"]
    assert cfg.project.supported_comfyui_version == COMFY["requires-comfyui"]
    assert cfg.project.supported_os == ["OS Independent"]
    assert cfg.project.supported_accelerators  # the classifiers are valid (else it returns [])
    assert cfg.project.urls.repository == PROJECT["urls"]["Repository"]
    assert cfg.tool_comfy.web is None  # the web folder comes from WEB_DIRECTORY in __init__.py
    version_file = comfyui_root() / "comfyui_version.py"
    if version_file.is_file():
        m = re.search(r'__version__\s*=\s*"([^"]+)"', version_file.read_text())
        assert m and m.group(1) in SpecifierSet(COMFY["requires-comfyui"])

