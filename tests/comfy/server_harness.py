"""A headless ComfyUI server in a subprocess, with this pack whitelisted, for end-to-end tests.

Usage (one server per test session; see ``session_server``)::

    srv = session_server()                      # starts once per pytest process, stopped at exit
    files = srv.add_tiny_models(("v",))         # tiny UNet + TAESD VAE files, visible at once
    res = srv.run_prompt(txt2img_core_prompt(files.unets["v"], files.vaes["v"]), timeout=60)
    assert res.ok, res.describe()

How the pack gets loaded (comfyui-notes section 7): the harness makes ``<workdir>/custom_nodes/
<PACK_NAME>`` a symlink to the repository root, lists that folder under the ``custom_nodes:`` key
of a temporary ``--extra-model-paths-config`` YAML (how ComfyUI's own execution tests load
``testing_nodes``), and starts ``main.py --disable-all-custom-nodes --whitelist-custom-nodes
<PACK_NAME>``. The whitelist matches the *folder name*, and ComfyUI imports the pack under a
module name derived from its path, so the pack must use relative imports only.

Gotchas found with ComfyUI 0.3.64 on this machine:

* The server log always contains ``IMPORT FAILED: nodes_audio.py`` / ``nodes_audio_encoder.py``
  (comfy_extras needs ``torchaudio``, which is not installed): grep for the *pack's* path, not for
  "IMPORT FAILED" alone (``pack_import_errors``).
* If the pack has no root ``__init__.py`` yet, ComfyUI logs ``Cannot import ... No such file``
  plus ``(IMPORT FAILED)`` for it and carries on: the server still starts.
* Without ``--database-url`` the server tries to create ``<ComfyUI>/user/comfyui.db`` (and fails
  on a read-only checkout); we pass ``sqlite:///:memory:``. ``--input-directory`` is set too, so
  nothing is written into the ComfyUI checkout.
* Model folders are rescanned on every request (mtime-checked), so model files written after
  start are visible to loader nodes at once (``add_tiny_models``).
* Completion is read from ``GET /history/<id>`` (filled when a prompt finishes, success or
  error); the websocket is not needed. ``POST /prompt`` answers 400 with ``node_errors`` when
  validation fails: ``PromptRejected`` carries that JSON.
* **CPU threads:** on a 2-core machine shared with other busy processes, torch with 2 OpenMP
  threads ran the tiny SD20 forward 25x slower (3.1 s instead of 0.12 s: threads spin at
  barriers while one is descheduled). The server therefore gets ``OMP_NUM_THREADS=1`` by default
  (``threads=None`` inherits the environment).
* ``frontend="none"`` passes an empty ``--front-end-root`` (``GET /`` is then a 404, and the
  ``comfyui_frontend_package`` wheel is not needed); ``"real"`` serves the installed web UI
  (``GET /`` is its ``index.html``) for browser tests.
* Only loopback: the server listens on 127.0.0.1 at a free port, and every wait is bounded.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "comfyui-doodl"  # the folder name ComfyUI sees (the checkout itself may be called anything)
HARNESS_NODES_NAME = "doodl_test_harness_nodes"

# An optional helper pack (opt-in, ``harness_nodes=True``): CONDITIONING of any width without a
# CLIP model, so server tests can drive the eps (768) and flow (4096/2048) tiny models too.
# (With core nodes only, ``LotusConditioning`` is the one input-free source: 1 x 77 x 1024.)
_HARNESS_NODES_SRC = '''
import torch


class DOODLTestRandomConditioning:
    """Test-only: seeded random CONDITIONING (cross-attention tokens + pooled_output)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "width": ("INT", {"default": 768, "min": 1, "max": 8192, "tooltip": "cross-attention width"}),
            "tokens": ("INT", {"default": 77, "min": 1, "max": 1024, "tooltip": "number of tokens"}),
            "pooled_width": ("INT", {"default": 768, "min": 1, "max": 8192, "tooltip": "pooled_output width"}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "random seed"}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, width, tokens, pooled_width, seed):
        g = torch.Generator().manual_seed(seed)
        cross = torch.randn((1, tokens, width), generator=g)
        pooled = torch.randn((1, pooled_width), generator=g)
        return ([[cross, {"pooled_output": pooled}]],)


NODE_CLASS_MAPPINGS = {"DOODLTestRandomConditioning": DOODLTestRandomConditioning}
'''


class ServerError(RuntimeError):
    """The server failed to start, died, or did not answer in time (message has the log tail)."""


class PromptRejected(RuntimeError):
    """``POST /prompt`` refused the prompt (validation); ``.response`` is the server's JSON."""

    def __init__(self, response: dict):
        self.response = response
        super().__init__(json.dumps(response, indent=1)[:4000])


@dataclass
class PromptResult:
    prompt_id: str
    status: str  # "success" | "error" | "interrupted"
    outputs: dict  # node id -> the node's "ui" output (e.g. {"images": [{filename, subfolder, type}]})
    messages: list  # [[event, data], ...] from the history entry
    error: dict | None = None  # the execution_error / execution_interrupted data, if any
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def describe(self) -> str:
        if self.ok:
            return f"prompt {self.prompt_id}: success in {self.wall_s:.1f}s"
        e = self.error or {}
        return (f"prompt {self.prompt_id}: {self.status} at node {e.get('node_id')} ({e.get('node_type')}): "
                f"{e.get('exception_type', '')} {e.get('exception_message', '')}\n"
                + "".join(e.get("traceback", []) or [])[-3000:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def comfyui_root() -> Path:
    from tests.comfyui_env import comfyui_root as find

    root = find()
    if root is None:
        raise ServerError("ComfyUI not found: set COMFYUI_PATH (call require_comfyui() first to skip cleanly)")
    return root


class ComfyServer:
    """One ``python main.py --cpu`` subprocess with its own temp dirs. Use as a context manager."""

    def __init__(self, workdir: Path | None = None, *, frontend: str = "none", pack_root: Path = PACK_ROOT,
                 pack_name: str = PACK_NAME, harness_nodes: bool = False, extra_args=(), root: Path | None = None,
                 python: str = sys.executable, port: int | None = None, threads: int | None = 1):
        if frontend not in ("none", "real", "auto"):
            raise ValueError("frontend must be 'none' (empty --front-end-root), 'real' (the installed "
                             "comfyui_frontend_package, for browser tests) or 'auto' (real if installed)")
        if frontend == "auto":
            import importlib.util

            frontend = "real" if importlib.util.find_spec("comfyui_frontend_package") else "none"
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="doodl_comfy_server_")).resolve()
        self.frontend = frontend
        self.pack_root = Path(pack_root).resolve()
        self.pack_name = pack_name
        self.harness_nodes = harness_nodes
        self.extra_args = list(extra_args)
        self.root = Path(root) if root else comfyui_root()
        self.python = python
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.proc: subprocess.Popen | None = None
        self.models_root = self.workdir / "models"
        self.custom_nodes_dir = self.workdir / "custom_nodes"
        self.output_dir = self.workdir / "output"
        self.log_path = self.workdir / "server.log"
        self.yaml_path = self.workdir / "extra_model_paths.yaml"
        self.threads = threads
        self.start_s: float | None = None
        #: test-only custom-node packs to add: folder name -> source of its __init__.py
        self.extra_node_packs: dict[str, str] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _prepare(self) -> list[str]:
        from tests.comfy.tiny_models import write_extra_model_paths_yaml

        for d in ("models", "custom_nodes", "output", "temp", "input", "user", "frontend_empty"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        link = self.custom_nodes_dir / self.pack_name
        if link.is_symlink() or link.exists():
            if not (link.is_symlink() and link.resolve() == self.pack_root):
                raise ServerError(f"{link} exists and is not a symlink to {self.pack_root}")
        else:
            link.symlink_to(self.pack_root, target_is_directory=True)
        whitelist = [self.pack_name]
        packs = dict(self.extra_node_packs)
        if self.harness_nodes:
            packs[HARNESS_NODES_NAME] = _HARNESS_NODES_SRC
        for name, source in packs.items():  # test-only helper packs, each one __init__.py
            hn = self.custom_nodes_dir / name
            hn.mkdir(exist_ok=True)
            (hn / "__init__.py").write_text(source, encoding="utf-8")
            whitelist.append(name)
        # Also creates models/{diffusion_models,vae,checkpoints} entries (folders made on demand).
        for folder in ("diffusion_models", "vae", "checkpoints"):
            (self.models_root / folder).mkdir(parents=True, exist_ok=True)
        write_extra_model_paths_yaml(self.yaml_path, self.models_root, self.custom_nodes_dir)
        w = self.workdir
        cmd = [self.python, str(self.root / "main.py"), "--cpu", "--listen", self.host, "--port", str(self.port),
               "--disable-all-custom-nodes", "--whitelist-custom-nodes", *whitelist,
               "--disable-api-nodes", "--extra-model-paths-config", str(self.yaml_path),
               "--output-directory", str(w / "output"), "--temp-directory", str(w / "temp"),
               "--input-directory", str(w / "input"), "--user-directory", str(w / "user"),
               "--database-url", "sqlite:///:memory:", "--preview-method", "none"]
        if self.frontend == "none":
            cmd += ["--front-end-root", str(w / "frontend_empty")]
        return cmd + self.extra_args

    def start(self, timeout: float = 120.0) -> "ComfyServer":
        if self.proc is not None and self.proc.poll() is None:
            return self
        cmd = self._prepare()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.threads:  # see the module docstring: 2 OpenMP threads on a busy 2-core box stall badly
            env.update(OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        t0 = time.monotonic()
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(cmd, cwd=str(self.root), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)
        finally:
            log.close()  # the child holds its own descriptor
        atexit.register(self.stop)
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.proc.returncode} during start\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2.0)
                break
            except (urllib.error.URLError, ConnectionError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"ComfyUI did not answer within {timeout:.0f}s\n{self.log_tail()}")
            time.sleep(0.1)
        self.start_s = time.monotonic() - t0
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the server process (only ours, by its pid); kill it if it does not exit."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def cleanup(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- log ---------------------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 6000) -> str:
        return "--- server log tail ---\n" + self.log_text()[-chars:]

    def pack_import_errors(self, name: str | None = None) -> list[str]:
        """Log lines saying the pack (or the named custom-node folder) failed to import."""
        name = name or self.pack_name
        pat = re.compile(r"(IMPORT FAILED|Cannot import)")
        return [ln for ln in self.log_text().splitlines() if pat.search(ln) and name in ln]

    def pack_loaded(self, name: str | None = None) -> bool:
        """True if ComfyUI listed the folder in its custom-node import times without a failure."""
        name = name or self.pack_name
        lines = [ln for ln in self.log_text().splitlines() if re.search(r"seconds.*: ", ln) and
                 ln.rstrip().endswith(os.sep + name)]
        return bool(lines) and not any("IMPORT FAILED" in ln for ln in lines)

    # -- HTTP --------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, payload=None, timeout: float = 30.0) -> bytes:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    def get_text(self, path: str, timeout: float = 30.0) -> str:
        return self._request("GET", path, timeout=timeout).decode("utf-8", "replace")

    def get_json(self, path: str, timeout: float = 30.0):
        return json.loads(self._request("GET", path, timeout=timeout) or b"null")

    def post_json(self, path: str, payload, timeout: float = 30.0):
        body = self._request("POST", path, payload, timeout=timeout)
        return json.loads(body) if body.strip() else None

    def object_info(self, node_class: str | None = None) -> dict:
        """``GET /object_info`` (all nodes) or ``/object_info/<class>`` ({} if unknown)."""
        if node_class is None:
            return self.get_json("/object_info", timeout=60.0)
        return self.get_json("/object_info/" + urllib.parse.quote(node_class))

    def queue_prompt(self, prompt: dict, client_id: str | None = None, extra_data: dict | None = None) -> str:
        payload = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
        if extra_data:
            payload["extra_data"] = extra_data
        try:
            resp = self.post_json("/prompt", payload)
        except urllib.error.HTTPError as e:
            body = e.read().decode("utf-8", "replace")
            try:
                raise PromptRejected(json.loads(body)) from None
            except json.JSONDecodeError:
                raise PromptRejected({"http_status": e.code, "body": body}) from None
        return resp["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json("/history/" + prompt_id).get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 60.0, poll: float = 0.05) -> PromptResult:
        """Poll ``/history`` until the prompt finished; on timeout cancel it and raise TimeoutError."""
        t0 = time.monotonic()
        while True:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                return _result(prompt_id, entry, time.monotonic() - t0)
            if not self.running:
                raise ServerError(f"ComfyUI died while running prompt {prompt_id}\n{self.log_tail()}")
            if time.monotonic() - t0 > timeout:
                self.cancel(prompt_id)
                raise TimeoutError(f"prompt {prompt_id} not finished after {timeout:.0f}s (cancelled)\n"
                                   f"{self.log_tail()}")
            time.sleep(poll)

    def run_prompt(self, prompt: dict, timeout: float = 60.0) -> PromptResult:
        return self.wait(self.queue_prompt(prompt), timeout=timeout)

    def interrupt(self, prompt_id: str | None = None) -> None:
        """``POST /interrupt``: stop the running prompt (only if it is ``prompt_id``, when given) at
        its next interrupt check (before each node, and at each sampler progress update)."""
        self._request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def cancel(self, prompt_id: str) -> None:
        """Drop a prompt from the pending queue (if still queued) and interrupt it (if running)."""
        self._request("POST", "/queue", {"delete": [prompt_id]})
        self.interrupt(prompt_id)

    def queue(self) -> dict:
        return self.get_json("/queue")

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        return self._request("GET", "/view?" + q)

    def images(self, result: PromptResult) -> list[bytes]:
        """The bytes of every image a finished prompt's nodes reported (SaveImage/PreviewImage)."""
        out = []
        for node_out in result.outputs.values():
            for im in node_out.get("images", []):
                out.append(self.view(im["filename"], im.get("subfolder", ""), im.get("type", "output")))
        return out

    # -- models ------------------------------------------------------------------------------------
    def add_tiny_models(self, kinds=("v",), **kwargs):
        """Write tiny model files into this server's model folders (see ``write_tiny_model_files``)."""
        from tests.comfy.tiny_models import write_tiny_model_files

        files = write_tiny_model_files(self.models_root, kinds, custom_nodes_dir=self.custom_nodes_dir, **kwargs)
        return files


def _result(prompt_id: str, entry: dict, wall: float) -> PromptResult:
    status = entry.get("status", {})
    messages = status.get("messages", [])
    error = None
    state = "success" if status.get("status_str") == "success" else "error"
    for event, data in messages:
        if event == "execution_interrupted":
            state, error = "interrupted", data
        elif event == "execution_error":
            state, error = "error", data
    return PromptResult(prompt_id, state, entry.get("outputs", {}), messages, error, wall)


# -- prompts ---------------------------------------------------------------------------------------

def txt2img_core_prompt(unet_name: str, vae_name: str, *, seed: int = 0, steps: int = 2, cfg: float = 2.0,
                        width: int = 64, height: int = 64, sampler: str = "euler", scheduler: str = "normal",
                        save: bool = True, conditioning: dict | None = None) -> dict:
    """API-format prompt of core nodes only: UNETLoader + LotusConditioning (1x77x1024, so the
    ``v`` SD20 tiny model) + ConditioningZeroOut negative + EmptyLatentImage -> KSampler ->
    VAELoader/VAEDecode -> SaveImage (or PreviewImage).

    ``conditioning`` replaces the positive source node (e.g. the harness-nodes
    ``DOODLTestRandomConditioning`` for other widths): ``{"class_type": ..., "inputs": {...}}``.
    """
    cond = conditioning or {"class_type": "LotusConditioning", "inputs": {}}
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet_name, "weight_dtype": "default"}},
        "2": cond,
        "3": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": seed, "steps": steps, "cfg": cfg,
                                                     "sampler_name": sampler, "scheduler": scheduler,
                                                     "positive": ["2", 0], "negative": ["3", 0],
                                                     "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAELoader", "inputs": {"vae_name": vae_name}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["6", 0]}},
        "8": ({"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "doodl_test"}}
              if save else {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}}),
    }


# -- one server per test process -------------------------------------------------------------------

_SESSION: dict[tuple, ComfyServer] = {}


def session_server(*, frontend: str = "auto", harness_nodes: bool = True, timeout: float = 120.0) -> ComfyServer:
    """The process-wide server for this configuration: started on first use, stopped at exit.

    Every test file can call it from its own session-scoped fixture and they all share one
    server (one start, ~5 s here). ``harness_nodes`` defaults to True (the test-only
    ``DOODLTestRandomConditioning`` node) and ``frontend`` to "auto" (the real web UI when
    ``comfyui_frontend_package`` is installed: starting it costs no measurable time here), so
    callers with default arguments, browser tests included, share one server. Tests must not stop it; use ``ComfyServer`` directly for a
    private one. Call ``tests.comfyui_env.require_comfyui()`` first so a missing ComfyUI skips.
    """
    return shared_server((frontend, harness_nodes),
                         lambda: ComfyServer(frontend=frontend, harness_nodes=harness_nodes), timeout)


def shared_server(key, make, timeout: float = 120.0):
    """The process-wide server under ``key``: ``make()``d and started on first use (or after it
    died), stopped at exit."""
    srv = _SESSION.get(key)
    if srv is None or not srv.running:
        if srv is not None:
            srv.cleanup()
        srv = make()
        _SESSION[key] = srv
        atexit.register(srv.cleanup)
        srv.start(timeout=timeout)
    return srv
