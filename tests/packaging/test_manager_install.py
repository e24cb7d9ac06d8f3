"""Install the pack the way ComfyUI-Manager does and start ComfyUI, as a new user would.

1. a copy of the ComfyUI checkout the tests use (``COMFYUI_PATH``) in a temporary folder;
2. ``git clone`` of this repository (its committed HEAD: what a user gets) into its
   ``custom_nodes/comfyui-doodl``;
3. a fresh venv that sees the system's packages (ComfyUI's requirements are installed there, as in a
   user's ComfyUI environment), then ``pip install -r custom_nodes/comfyui-doodl/requirements.txt``;
4. ``python main.py --cpu`` from that venv, with no custom-node whitelist, with a network tripwire
   (``netguard.py``, loaded by a ``.pth`` file in the venv) that refuses and records any name lookup
   or non-loopback connection.

Then: no import error of the pack, not one network attempt during start and the requests below, no
file written under ``models/`` or into the clone, every node in ``/object_info`` (from the pack's
module), the template browser's ``/api/workflow_templates`` lists exactly the pack's workflows and
serves them, and the help pages and their pictures are served where the frontend fetches them.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.comfy.server_harness import ComfyServer
from tests.comfyui_env import comfyui_root, require_comfyui
from tests.help import help_pages as hp
from tests.packaging import venvs
from tests.workflows import workflow_tools as wt

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
FOLDER = "comfyui-doodl"  # the folder name the README's install line gives the clone


class ManagerStyleServer(ComfyServer):
    """``python main.py`` of a ComfyUI copy with the pack cloned into its own custom_nodes/."""

    def __init__(self, workdir: Path, root: Path, python: Path, netlog: Path):
        super().__init__(workdir, frontend="real", pack_root=root / "custom_nodes" / FOLDER, pack_name=FOLDER,
                         root=root, python=str(python))
        self.netlog = netlog

    def _prepare(self) -> list[str]:
        return [self.python, str(self.root / "main.py"), "--cpu", "--listen", self.host, "--port", str(self.port)]


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _tracebacks(log: str) -> list[str]:
    """Each traceback in the log, from "Traceback" to its exception line (the first unindented one)."""
    blocks, current = [], None
    for line in log.splitlines():
        if line.startswith("Traceback (most recent call last)"):
            current = [line]
        elif current is not None:
            current.append(line)
            if line and not line[0].isspace():
                blocks.append("\n".join(current))
                current = None
    return blocks


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def install(tmp_path_factory):
    require_comfyui()
    t0 = time.monotonic()
    tmp = tmp_path_factory.mktemp("manager_install")
    root = tmp / "ComfyUI"
    shutil.copytree(comfyui_root(), root, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git", "user", "output", "temp"))
    clone = root / "custom_nodes" / FOLDER
    head = _git("rev-parse", "HEAD", cwd=REPO)
    _git("clone", "--quiet", "--no-hardlinks", str(REPO), str(clone))
    _git("checkout", "--quiet", head, cwd=clone)

    python = venvs.make_venv(tmp / "venv")
    site = venvs.run_python(python, "-c", "import site; print(site.getsitepackages()[0])").stdout.strip()
    shutil.copy(Path(__file__).with_name("netguard.py"), Path(site) / "doodl_netguard.py")
    Path(site, "doodl_netguard.pth").write_text("import doodl_netguard\n")
    pip = venvs.pip(python, "install", "--no-input", "-r", str(clone / "requirements.txt"))
    assert pip.returncode == 0, f"pip install -r requirements.txt failed:\n{pip.stdout[-3000:]}\n{pip.stderr[-3000:]}"

    models_before = _tree(root / "models")
    netlog = tmp / "network_attempts.jsonl"
    netlog.touch()
    server = ManagerStyleServer(tmp / "run", root, python, netlog)
    (tmp / "run").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOODL_NETGUARD_LOG", str(netlog))
        mp.delenv("PYTHONPATH", raising=False)
        mp.delenv("COMFYUI_PATH", raising=False)
        server.start(timeout=180)
    try:
        yield {"server": server, "root": root, "clone": clone, "head": head, "pip": pip, "netlog": netlog,
               "models_before": models_before, "setup_s": time.monotonic() - t0, "python": python}
    finally:
        server.stop()


def test_pip_install_of_requirements(install):
    out = install["pip"].stdout
    lines = [ln.strip()[:160] for ln in out.splitlines()
             if ln.startswith(("Requirement already satisfied: open_clip", "Collecting open_clip",
                               "Successfully installed"))]
    fetched = [ln.split()[1] for ln in out.splitlines() if ln.startswith("Collecting ")]
    print(f"commit {install['head'][:10]}; pip: " + " | ".join(lines) + f"; fetched from the index: {fetched}")
    # the venv's python sees the packages the pack needs
    r = venvs.run_python(install["python"], "-c", "import open_clip, torch; print(open_clip.__version__)")
    assert r.returncode == 0, r.stderr


def test_server_starts_without_import_errors(install):
    server = install["server"]
    log = server.log_text()
    assert server.pack_import_errors() == [], server.log_tail()
    assert server.pack_loaded(), server.log_tail()
    pack_tracebacks = [b for b in _tracebacks(log) if FOLDER in b]
    assert pack_tracebacks == [], pack_tracebacks[0][:3000]
    print(f"server up in {server.start_s:.1f}s (setup incl. copy, clone, venv, pip: {install['setup_s']:.1f}s)")


def test_every_node_is_listed_from_the_pack(install):
    info = install["server"].object_info()
    ids = hp.node_ids()
    missing = [i for i in ids if i not in info]
    assert missing == [], missing
    assert {info[i]["python_module"] for i in ids} == {f"custom_nodes.{FOLDER}"}
    assert all(len(info[i].get("description", "")) > 40 for i in ids)


def test_template_browser_lists_the_workflows(install):
    server = install["server"]
    listed = server.get_json("/api/workflow_templates")
    assert sorted(listed.get(FOLDER, [])) == wt.workflow_names(), listed
    first = wt.workflow_names()[0]
    served = json.loads(server.get_text(f"/api/workflow_templates/{FOLDER}/{first}.json"))
    assert served == wt.load_ui(first)


def test_help_pages_are_served_where_the_frontend_looks(install):
    server = install["server"]
    for node_id in hp.node_ids():
        text = server.get_text(f"/extensions/{FOLDER}/docs/{node_id}.md")
        assert text.startswith("# ") and "## Inputs" in text
        for rel in hp.parse_page(hp.page_path(node_id)).images:
            png = server._request("GET", f"/extensions/{FOLDER}/docs/{rel}")
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
    extensions = server.get_json("/extensions")
    assert f"/extensions/{FOLDER}/doodl_live_view.js" in extensions
    assert not [e for e in extensions if "/docs/" in e]  # no scripts among the help pages


def test_no_network_and_no_files_at_start(install):
    """Checked after the other requests: nothing in the whole session touched the network."""
    server = install["server"]
    server.object_info("DOODLAestheticScorer")  # builds the dropdowns (lists files, offers downloads)
    attempts = [json.loads(ln) for ln in install["netlog"].read_text().splitlines() if ln.strip()]
    assert attempts == [], json.dumps(attempts, indent=1)[:4000]
    assert _tree(install["root"] / "models") == install["models_before"]
    status = _git("status", "--porcelain", "--ignored", cwd=install["clone"])
    assert [ln for ln in status.splitlines() if "__pycache__" not in ln] == [], status


def test_the_tripwire_works(install, tmp_path):
    """The guard in the venv refuses and records a download attempt (so an empty log means something)."""
    log = tmp_path / "net.jsonl"
    code = ("import urllib.request\n"
            "try:\n urllib.request.urlopen('https://example.com/x.bin', timeout=5)\n"
            "except OSError as e:\n print('refused', e)\n")
    r = venvs.run_python(install["python"], "-c", code, env={"DOODL_NETGUARD_LOG": str(log)})
    assert "refused" in r.stdout, (r.stdout, r.stderr)
    (entry,) = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert entry["kind"] == "getaddrinfo" and "example.com" in entry["target"]
