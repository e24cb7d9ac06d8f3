"""Build the example workflows in the real ComfyUI frontend and write them to the repository.

    COMFYUI_PATH=/path/to/ComfyUI python -m tests.workflows.build_workflows [name ...]

For every spec in ``specs.WORKFLOWS`` (or the named ones) this

1. starts the workflow test server (CPU, tiny model files under the workflows' real file names,
   the real frontend from the ``comfyui_frontend_package`` wheel) and a headless chromium;
2. creates the nodes with ``LiteGraph.createNode``, sets the widget values by name, connects the
   sockets by input name and lays the graph out in columns;
3. writes ``workflows/<name>.json`` from ``app.graphToPrompt().workflow`` (what the frontend's
   *Export* saves) and ``tests/api_prompts/<name>.json`` from ``.output`` (*Export (API)*);
4. reloads the written file with ``app.loadGraphData`` (as a drag-and-drop does) and saves a
   screenshot of it as the template thumbnail ``workflows/<name>.jpg``.

Needs ComfyUI, the frontend wheel and chromium + chromedriver (``tests/browser/webdriver.py``).
The tests never run this; they check the committed files (``tests/workflows/test_*.py``).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS_DIR = REPO / "workflows"
API_DIR = REPO / "tests" / "api_prompts"
THUMB_WIDTH = 768
THUMB_MAX_BYTES = 100_000

# Minimum node sizes (the frontend's computeSize is the bare minimum; text boxes and image previews
# need room). Notes get their size from the spec.
MIN_SIZES = {"CLIPTextEncode": [400, 130], "PrimitiveStringMultiline": [400, 110], "PreviewImage": [300, 300],
             "SaveImage": [300, 320], "LoadImage": [300, 360], "DOODLOptimize": [420, 0],
             "DOODLCLIPTextScorer": [360, 0], "DOODLCLIPImageScorer": [360, 0], "DOODLAestheticScorer": [340, 0],
             "DOODLWSDANScorer": [320, 0], "*": [300, 0]}

BUILD_JS = r"""
const spec = arguments[0];
const MIN = arguments[1];
app.graph.clear();
const made = {};
for (const n of spec.nodes) {
  const node = LiteGraph.createNode(n.type);
  if (!node) throw new Error("unknown node type " + n.type);
  app.graph.add(node);
  if (n.title) node.title = n.title;
  for (const w of node.widgets || []) if (w.name === "control_after_generate") w.value = "fixed";
  for (const [name, value] of Object.entries(n.widgets)) {
    const w = (node.widgets || []).find((x) => x.name === name);
    if (!w) throw new Error(`${n.type} has no widget ${name}`);
    if (w.options && Array.isArray(w.options.values) && !w.options.values.includes(value))
      throw new Error(`${n.type}.${name}: ${JSON.stringify(value)} is not one of ${JSON.stringify(w.options.values)}`);
    w.value = value;
  }
  if (n.color) {
    const c = LGraphCanvas.node_colors[n.color];
    if (!c) throw new Error("unknown colour " + n.color);
    node.color = c.color; node.bgcolor = c.bgcolor;
  }
  if (n.size) node.setSize(n.size);
  else {
    const c = node.computeSize(), m = MIN[n.type] || MIN["*"];
    node.setSize([Math.max(c[0], m[0]), Math.max(c[1], m[1])]);
  }
  made[n.key] = node;
}
for (const n of spec.nodes) {
  for (const [input, [src, slot]] of Object.entries(n.links)) {
    const dst = made[n.key];
    const idx = dst.findInputSlot(input);
    if (idx < 0) throw new Error(`${n.type} has no input ${input}`);
    const link = made[src].connect(slot, dst, idx);
    if (!link) throw new Error(`cannot connect ${src}[${slot}] -> ${n.key}.${input}`);
  }
}
// layout: columns (spec.col), stacked top to bottom in spec order
const GAP_X = 70, GAP_Y = 40, TITLE = LiteGraph.NODE_TITLE_HEIGHT;
const cols = {};
for (const n of spec.nodes) (cols[n.col ?? 0] ??= []).push(made[n.key]);
let x = 0;
for (const c of Object.keys(cols).map(Number).sort((a, b) => a - b)) {
  let y = 0, width = 0;
  for (const node of cols[c]) {
    node.pos = [x, y];
    y += node.size[1] + TITLE + GAP_Y;
    width = Math.max(width, node.size[0]);
  }
  x += width + GAP_X;
}
app.canvas.setDirty(true, true);
const p = await app.graphToPrompt();
return JSON.stringify({workflow: p.workflow, output: p.output});
"""


def _dump(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def build(names: list[str] | None = None) -> list[str]:
    from tests.browser import comfy_page
    from tests.browser.webdriver import Chromium, available
    from tests.comfyui_env import comfyui_root, require_comfyui
    from tests.workflows import specs
    from tests.workflows.workflow_server import WorkflowServer

    if comfyui_root() is None:
        raise SystemExit("set COMFYUI_PATH to a ComfyUI checkout")
    require_comfyui()  # the model files are written with ComfyUI's own classes
    reason = available()
    if reason:
        raise SystemExit(reason)
    todo = [w for w in specs.WORKFLOWS if not names or w.name in names]
    written = []
    with WorkflowServer(frontend="real") as server, Chromium(width=1920, height=1300) as browser:
        comfy_page.open_comfy(browser, server)
        startup_errors = set(comfy_page.errors(browser))  # the frontend's own, before any workflow
        for wf in todo:
            t0 = time.monotonic()
            spec = {"name": wf.name, "nodes": [dataclasses.asdict(n) for n in wf.nodes]}
            out = json.loads(browser.run_async(BUILD_JS, spec, MIN_SIZES))
            workflow, prompt = out["workflow"], out["output"]
            workflow["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, "doodl-comfyui/workflows/" + wf.name))
            (WORKFLOWS_DIR / f"{wf.name}.json").write_text(_dump(workflow), encoding="utf-8")
            (API_DIR / f"{wf.name}.json").write_text(_dump(prompt), encoding="utf-8")
            # thumbnail: the written file, loaded like a drag-and-drop, fitted to the view
            comfy_page.load_workflow(browser, json.loads((WORKFLOWS_DIR / f"{wf.name}.json").read_text()), wf.name)
            comfy_page.fit_view(browser)
            time.sleep(0.3)
            quality = 85
            while True:
                jpg = comfy_page.canvas_screenshot(browser, max_width=THUMB_WIDTH, fmt="JPEG", quality=quality,
                                                   crop=comfy_page.graph_box(browser))
                if len(jpg) < THUMB_MAX_BYTES or quality <= 40:
                    break
                quality -= 10
            (WORKFLOWS_DIR / f"{wf.name}.jpg").write_bytes(jpg)
            problems = comfy_page.dialogs(browser) + [e for e in comfy_page.errors(browser) if e not in startup_errors]
            print(f"{wf.name}: {len(workflow['nodes'])} nodes, {len(prompt)} API nodes, thumbnail "
                  f"{len(jpg) // 1024} KB, {time.monotonic() - t0:.1f}s"
                  + (f"  PROBLEMS: {problems}" if problems else ""))
            written.append(wf.name)
    return written


if __name__ == "__main__":
    build(sys.argv[1:] or None)
