"""The real ComfyUI frontend in headless chromium, served by the CPU workflow test server.

Needs ComfyUI (``COMFYUI_PATH``), the ``comfyui_frontend_package`` wheel ComfyUI serves, and
Debian's ``chromium`` + ``chromium-driver`` (``.ci/run`` installs them); skips with the reason
otherwise, or fails under ``CI=true`` (``tests.comfyui_env.unavailable``).

Checked: the extension registers and its script is served; the frontend's node definitions carry
each pack node's description and a tooltip for every input; the pack's six workflows are listed in
the frontend's template browser with their thumbnails; each workflow loads (from the template URL,
as the browser does) with no error dialog, no missing node, no new JavaScript error, and exports
exactly its committed API twin; the live view appears on DOODL Optimize and updates during a short
DOODL run started with the Run button (every iteration: loss curve, preview, final summary).

Screenshots of each step go to ``$DOODL_SCREENSHOT_DIR`` (default: a pytest temp folder); with
``DOODL_UPDATE_SCREENSHOTS=1`` they are written to ``docs/screenshots/`` for the README.
"""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest

from tests.browser import comfy_page
from tests.workflows import workflow_tools as wt

pytestmark = pytest.mark.comfyui
NAMES = wt.workflow_names()
REPO = Path(__file__).resolve().parents[2]
README_SHOTS = REPO / "docs" / "screenshots"
MAX_SHOT_BYTES = 200_000
LIVE_ITERATIONS = 4  # the live-view run: TEST_OVERRIDES plus 4 iterations (several updates to watch)
KNOWN_FRONTEND_STARTUP_ERROR = "Cannot read properties of undefined (reading 'id')"


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    if os.environ.get("DOODL_UPDATE_SCREENSHOTS") == "1":
        README_SHOTS.mkdir(parents=True, exist_ok=True)
        return README_SHOTS
    return Path(os.environ.get("DOODL_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))


def _save_png(png: bytes, path: Path, max_width: int = 1400) -> Path:
    """A small PNG (palette, at most ``max_width`` wide) under MAX_SHOT_BYTES."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    while True:
        if img.width > max_width:
            img = img.resize((max_width, round(img.height * max_width / img.width)), Image.LANCZOS)
        buf = io.BytesIO()
        img.quantize(colors=128, method=Image.Quantize.FASTOCTREE).save(buf, "PNG", optimize=True)
        if buf.tell() < MAX_SHOT_BYTES or max_width < 500:
            break
        max_width = int(max_width * 0.85)
    path.write_bytes(buf.getvalue())
    return path


def _new_errors(browser) -> list[str]:
    seen = set(browser.startup_errors)
    return [e for e in comfy_page.errors(browser) if e not in seen]


def test_extension_registers(browser, server):
    assert "/extensions/comfyui-doodl/doodl_live_view.js" in server.get_json("/extensions")
    names = browser.execute("return app.extensions.map((e) => e.name)")
    assert "doodl.LiveView" in names
    # the frontend's own startup (settings migration) logs one known error on a fresh user; none is ours
    assert not [e for e in browser.startup_errors if "doodl" in e.lower()], browser.startup_errors
    assert all(KNOWN_FRONTEND_STARTUP_ERROR in e for e in browser.startup_errors), browser.startup_errors
    assert comfy_page.dialogs(browser) == []
    print(f"frontend ready in {browser.ready_s:.1f}s")


def test_node_help_reaches_the_frontend(browser):
    """The frontend's node definitions carry each pack node's description and input tooltips."""
    help_ = json.loads(browser.execute(
        "const out = {}; for (const id of arguments[0]) { const d = LiteGraph.registered_node_types[id]?.nodeData;"
        " out[id] = d ? {description: d.description, untipped: Object.values(d.inputs || {})"
        ".filter((i) => !i.tooltip).map((i) => i.name)} : null; } return JSON.stringify(out);",
        sorted(wt.pack_node_ids())))
    for node_id, info in help_.items():
        assert info is not None, f"{node_id} is not registered in the frontend"
        assert len(info["description"] or "") > 40 and info["untipped"] == [], (node_id, info)


def test_template_browser_lists_the_workflows(browser, server, shots):
    listed = server.get_json("/workflow_templates").get(server.pack_name)
    assert sorted(listed or []) == NAMES
    browser.set_window_size(1600, 2400)  # tall enough to show every card (thumbnails load when visible)
    browser.run_async("await app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    pick = ("Array.from(document.querySelectorAll('.p-listbox-option'))"
            ".find((e) => e.textContent.trim() === arguments[0])")
    browser.wait_for(f"return !!{pick}", server.pack_name, what="the pack's template category")
    browser.execute(f"{pick}.click()", server.pack_name)
    # the frontend loads a card's thumbnail only while the card is in view (and drops it again when
    # it scrolls away): collect the cards seen with a loaded thumbnail, scrolling to the next one
    browser.execute("window.__doodlThumbs = {};")
    cards = browser.wait_for(
        "const cards = Array.from(document.querySelectorAll('[data-testid^=\"template-workflow-\"]'));"
        "for (const c of cards) { const img = c.querySelector('img');"
        " if (img && img.complete && img.naturalWidth > 0) window.__doodlThumbs[c.dataset.testid.slice(18)] = true; }"
        "const waiting = cards.find((c) => !window.__doodlThumbs[c.dataset.testid.slice(18)]);"
        "if (waiting) waiting.scrollIntoView({block: 'center'});"
        "return cards.length && !waiting ? cards.map((c) => [c.dataset.testid.slice(18), true]) : null",
        timeout=60, what="template cards with thumbnails")
    assert sorted(c[0] for c in cards) == NAMES
    browser.execute("document.querySelector('[data-testid^=\"template-workflow-\"]').scrollIntoView({block: 'start'})")
    _save_png(browser.screenshot(), shots / "template_browser.png")
    browser.set_window_size(1600, 1000)
    # clicking a card loads that workflow
    first = "doodl1_text_to_image"
    browser.execute("document.querySelector(`[data-testid=\"template-workflow-${arguments[0]}\"]`).click()", first)
    want = len(wt.load_ui(first)["nodes"])
    browser.wait_for("return app.graph.nodes.length === arguments[0] && !document.querySelector("
                     "'[data-testid=\"template-workflows-content\"]')", want, timeout=30,
                     what="the clicked template to load")
    assert comfy_page.dialogs(browser) == [] and _new_errors(browser) == []


@pytest.mark.parametrize("name", NAMES)
def test_workflow_loads_without_errors(browser, server, shots, name):
    url = f"/api/workflow_templates/{server.pack_name}/{name}.json"
    served = server.get_json(url)
    assert served == wt.load_ui(name)
    comfy_page.load_workflow(browser, served, name)
    state = json.loads(browser.execute(
        "return JSON.stringify({nodes: app.graph.nodes.map((n) => ({id: n.id, type: n.type,"
        " known: !!LiteGraph.registered_node_types[n.type], errors: !!n.has_errors,"
        " live: !!(n.doodlLiveView && n.doodlLiveView.root.isConnected)}))})"))
    assert len(state["nodes"]) == len(served["nodes"])
    assert all(n["known"] and not n["errors"] for n in state["nodes"]), state
    doodl = [n for n in state["nodes"] if n["type"] == "DOODLOptimize"]
    assert all(n["live"] for n in doodl), doodl
    assert comfy_page.dialogs(browser) == [], "a dialog opened while loading"
    assert _new_errors(browser) == []
    workflow, prompt = comfy_page.export(browser)
    assert wt.api_differences(prompt, wt.load_api(name)) == []
    saved = {n["id"]: n.get("widgets_values") or [] for n in workflow["nodes"]}
    assert saved == {n["id"]: n.get("widgets_values") or [] for n in served["nodes"]}
    comfy_page.fit_view(browser)
    _save_png(comfy_page.canvas_screenshot(browser, crop=comfy_page.graph_box(browser)), shots / f"{name}.png")


OVERRIDE_JS = r"""
const overrides = arguments[0];
const changed = [];
for (const n of app.graph.nodes) {
  for (const [key, value] of Object.entries(overrides)) {
    const [cls, name] = key.split(".");
    if (n.type !== cls) continue;
    const w = (n.widgets || []).find((x) => x.name === name);
    if (w && w.value !== value) { changed.push(`${n.id} ${key}: ${w.value} -> ${value}`); w.value = value; }
  }
}
return changed;
"""

WATCH_JS = r"""
const root = app.graph.nodes.find((n) => n.type === "DOODLOptimize").doodlLiveView.root;
window.__doodlLog = [];
const record = () => window.__doodlLog.push({t: performance.now(), state: root.dataset.state,
  points: +root.dataset.points, previews: +root.dataset.previews,
  status: root.querySelector('.doodl-status').textContent});
new MutationObserver(record).observe(root,
  {attributes: true, attributeFilter: ["data-state", "data-points", "data-previews"]});
record();
"""


def test_live_view_updates_during_a_short_doodl_run(browser, server, shots):
    name = "doodl1_text_to_image"
    comfy_page.load_workflow(browser, wt.load_ui(name), name)
    overrides = {f"{cls}.{inp}": v for (cls, inp), v in wt.TEST_OVERRIDES.items()}
    overrides["DOODLOptimize.iterations"] = LIVE_ITERATIONS
    changed = browser.execute(OVERRIDE_JS, overrides)
    assert any("iterations" in c for c in changed), changed
    browser.execute(WATCH_JS)
    t0 = time.monotonic()
    browser.execute("Array.from(document.querySelectorAll('button')).find((b) =>"
                    " b.getAttribute('aria-label') === 'Run' || b.textContent.trim() === 'Run').click()")
    final = browser.wait_for(
        "const v = app.graph.nodes.find((n) => n.type === 'DOODLOptimize').doodlLiveView;"
        "return v.root.dataset.state === 'done' ? {points: +v.root.dataset.points, previews: +v.root.dataset.previews,"
        " best: v.root.dataset.bestIteration, summary: v.summary.textContent, status: v.status.textContent} : null",
        timeout=180, poll=0.2, what="the DOODL run to finish in the live view")
    wall = time.monotonic() - t0
    log = browser.execute("return window.__doodlLog")
    assert final["points"] == LIVE_ITERATIONS, (final, log)
    assert final["previews"] >= LIVE_ITERATIONS, final  # one decoded preview per iteration
    assert "best iterate" in final["summary"] and "loss" in final["summary"], final
    # it updated DURING the run: every intermediate point count was on screen before "done"
    running = [e for e in log if e["state"] == "running"]
    assert {e["points"] for e in running} >= set(range(1, LIVE_ITERATIONS)), log
    assert any(e["previews"] > 0 and e["points"] < LIVE_ITERATIONS for e in running), log
    assert any(e["status"].startswith("iteration ") for e in running), log
    # the curve was drawn: the canvas has non-background pixels
    drawn = browser.execute(
        "const c = app.graph.nodes.find((n) => n.type === 'DOODLOptimize').doodlLiveView.canvas;"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let k = 0;"
        "for (let i = 3; i < d.length; i += 4) if (d[i] > 0) k++; return k;")
    assert drawn > 500, drawn
    # the server ran what the browser queued; the view shows the server's result
    deadline = time.monotonic() + 120  # "done" comes from DOODL's own event; the prompt ends later
    while not (history := server.get_json("/history?max_items=1")) and time.monotonic() < deadline:
        time.sleep(0.25)
    (entry,) = history.values()
    assert entry["status"]["status_str"] == "success"
    (summary,) = [o["doodl_summary"][0] for o in entry["outputs"].values() if "doodl_summary" in o]
    assert int(final["best"]) == summary["best_iteration"], (final, summary)
    assert comfy_page.dialogs(browser) == [] and _new_errors(browser) == []
    # screenshot: the lower part of the node (last widgets + live view) and the outputs beside it
    box = browser.execute(
        "const n = app.graph.nodes.find((x) => x.type === 'DOODLOptimize'); app.canvas.ds.scale = 1;"
        "const c = document.querySelector('#graph-canvas').getBoundingClientRect();"
        "const bottom = Math.min(c.height - 20, 620);"
        "app.canvas.ds.offset = [-n.pos[0] + 30, bottom - (n.pos[1] + n.size[1])];"
        "app.canvas.setDirty(true, true);"
        "return [c.x, c.y + Math.max(0, bottom - 600),"
        " c.x + Math.min(c.width, n.size[0] + 60 + 420), c.y + bottom + 16];")
    time.sleep(0.5)
    _save_png(comfy_page.canvas_screenshot(browser, crop=tuple(box)), shots / "live_view.png")
    print(f"live view: {LIVE_ITERATIONS} iterations in {wall:.1f}s, {len(log)} DOM updates; {final['status']}")
