"""One headless CPU ComfyUI server for the workflow and browser tests, with the workflows' models.

It is ``tests/comfy/server_harness.ComfyServer`` plus three things the example workflows need:

* the ``--extra-model-paths-config`` YAML also maps the pack's ``doodl`` base folder into the
  temporary models root, so ``models/doodl/{clip,aesthetic,wsdan}`` resolve there (the YAML is read
  before custom nodes import, and the pack merges its folders with it);
* the tiny model files and the input image are written (``model_files.write_workflow_models``)
  under the exact names the workflows use, before the server starts;
* the test-only loader patch of ``tests/comfy/tiny_widths.py`` is installed in the server process
  (as a whitelisted helper custom node), so the tiny Flux DiTs, T5 and SDXL CLIP-G files load.

It serves the real web frontend when the ``comfyui_frontend_package`` wheel is installed (the
browser tests need it) and runs with one torch thread (see the harness docstring). Call
``tests.comfyui_env.require_comfyui()`` first so that a missing ComfyUI skips instead of failing.
"""
from __future__ import annotations

import importlib.util
import time

import yaml

from tests.comfy.server_harness import ComfyServer, shared_server
from tests.workflows.model_files import WorkflowModels, write_workflow_models


class WorkflowServer(ComfyServer):
    """A ComfyServer whose models root holds every file the example workflows load."""

    models: WorkflowModels | None = None
    models_s: float = 0.0

    def _prepare(self) -> list[str]:
        from tests.comfy.tiny_widths import SERVER_NODE_NAME, server_node_source

        # the SDXL/Flux workflows' tiny files need the test-only width patch in the server process
        self.extra_node_packs[SERVER_NODE_NAME] = server_node_source()
        cmd = super()._prepare()
        conf = yaml.safe_load(self.yaml_path.read_text(encoding="utf-8"))
        for entry in conf.values():
            entry["doodl"] = "doodl"
        self.yaml_path.write_text(yaml.safe_dump(conf, sort_keys=False), encoding="utf-8")
        t0 = time.monotonic()
        self.models = write_workflow_models(self.models_root, self.workdir / "input", self.root)
        self.models_s = time.monotonic() - t0
        return cmd

    def set_user_setting(self, key: str, value) -> None:
        """A frontend setting of the (single, default) user, as the settings dialog stores it."""
        self.post_json("/settings/" + key, value)


def workflow_server(frontend: str = "auto", timeout: float = 120.0) -> WorkflowServer:
    """The process-wide workflow server (started on first use, stopped at exit)."""
    if frontend == "auto":
        frontend = "real" if importlib.util.find_spec("comfyui_frontend_package") else "none"
    return shared_server(("workflows", frontend),
                         lambda: WorkflowServer(frontend=frontend, harness_nodes=False), timeout)
