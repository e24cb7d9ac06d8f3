"""The held-out monitor in the live view, in the real frontend (headless chromium, CPU server).

The preference workflow (``doodl7_preference``: ReNO's reward mix optimized, the aesthetic head as
``monitor``) is run with the Run button at the CPU test settings. Checked: the monitor's curve
arrives point by point during the run (``data-monitor-points``), ends with one point per iterate
(the final one included) equal to the server's ``doodl_monitor`` output, is drawn in its own
colour on the canvas, and the summary names the monitor with its loss at the start, at the best
iterate and at the end. Needs what ``test_browser_workflows.py`` needs; skips with the reason
otherwise (fails under CI=true). Screenshot: ``live_view_monitor.png`` (``DOODL_UPDATE_SCREENSHOTS=1``: docs/screenshots).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.browser import comfy_page
from tests.workflows import workflow_tools as wt

pytestmark = pytest.mark.comfyui
NAME = "doodl7_preference"
ITERATIONS = 3
REPO = Path(__file__).resolve().parents[2]
MONITOR_RGB = (0xFF, 0xB4, 0x5E)  # MONITOR_COLOR in js/doodl_live_view.js

SET_WIDGETS = r"""
const overrides = arguments[0], changed = [];
for (const n of app.graph.nodes) for (const [key, value] of Object.entries(overrides)) {
  const [cls, name] = key.split(".");
  const w = n.type === cls && (n.widgets || []).find((x) => x.name === name);
  if (w && w.value !== value) { changed.push(`${n.id} ${key}: ${w.value} -> ${value}`); w.value = value; }
}
return changed;
"""

WATCH = r"""
const v = app.graph.nodes.find((n) => n.type === "DOODLOptimize").doodlLiveView;
window.__doodlMonitorLog = [];
const record = () => window.__doodlMonitorLog.push({state: v.root.dataset.state,
  points: +v.root.dataset.points, monitor: +v.root.dataset.monitorPoints,
  status: v.status.textContent});
new MutationObserver(record).observe(v.root, {attributes: true,
  attributeFilter: ["data-state", "data-points", "data-monitor-points"]});
record();
"""

MONITOR_PIXELS = r"""
const c = app.graph.nodes.find((n) => n.type === "DOODLOptimize").doodlLiveView.canvas;
const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data, [r, g, b] = arguments[0];
let k = 0;
for (let i = 0; i < d.length; i += 4)
  if (d[i + 3] > 200 && Math.abs(d[i] - r) < 12 && Math.abs(d[i + 1] - g) < 12 && Math.abs(d[i + 2] - b) < 12) k++;
return k;
"""


def test_monitor_curve_in_the_live_view(browser, server, tmp_path):
    comfy_page.load_workflow(browser, wt.load_ui(NAME), NAME)
    overrides = {f"{cls}.{inp}": v for (cls, inp), v in wt.TEST_OVERRIDES.items()}
    overrides["DOODLOptimize.iterations"] = ITERATIONS
    changed = browser.execute(SET_WIDGETS, overrides)
    assert any("architecture" in c for c in changed) and any("iterations" in c for c in changed), changed
    browser.execute(WATCH)
    browser.execute("Array.from(document.querySelectorAll('button')).find((b) =>"
                    " b.getAttribute('aria-label') === 'Run' || b.textContent.trim() === 'Run').click()")
    final = browser.wait_for(
        "const v = app.graph.nodes.find((n) => n.type === 'DOODLOptimize').doodlLiveView;"
        "return v.root.dataset.state === 'done' ? {points: +v.root.dataset.points,"
        " monitor: +v.root.dataset.monitorPoints, losses: v.monitorLosses, name: v.monitorName,"
        " summary: v.summary.textContent} : null",
        timeout=240, poll=0.2, what="the preference run to finish in the live view")
    log = browser.execute("return window.__doodlMonitorLog")
    deadline = time.monotonic() + 120  # "done" arrives from DOODL's event; the prompt ends later
    while not (history := server.get_json("/history?max_items=1")) and time.monotonic() < deadline:
        time.sleep(0.25)
    (entry,) = history.values()
    assert entry["status"]["status_str"] == "success", entry["status"]
    (ui,) = [o for o in entry["outputs"].values() if "doodl_summary" in o]
    # one monitor point per iterate (the final iterate included), the server's own values
    assert final["points"] == ITERATIONS and final["monitor"] == ITERATIONS + 1, final
    assert final["losses"] == pytest.approx(ui["doodl_monitor"], rel=1e-6), (final, ui["doodl_monitor"])
    assert final["name"] == ui["doodl_summary"][0]["monitor"]["name"] and "aesthetic" in final["name"]
    # live: the monitor's points arrived with the iterations, before the run was done
    running = [e for e in log if e["state"] == "running"]
    assert {e["monitor"] for e in running} >= set(range(1, ITERATIONS)), log
    assert any("monitor " in e["status"] for e in running), log
    # the summary names it with its loss at the start, at the best iterate and at the end
    assert "monitor " + final["name"] in final["summary"] and "at the best iterate" in final["summary"], final
    assert "aesthetic_score" in final["summary"], final
    drawn = browser.execute(MONITOR_PIXELS, list(MONITOR_RGB))
    assert drawn > 150, drawn
    assert comfy_page.dialogs(browser) == []
    assert [e for e in comfy_page.errors(browser) if e not in browser.startup_errors] == []
    shots = REPO / "docs" / "screenshots" if os.environ.get("DOODL_UPDATE_SCREENSHOTS") == "1" else \
        Path(os.environ.get("DOODL_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    box = browser.execute(
        "const n = app.graph.nodes.find((x) => x.type === 'DOODLOptimize'); app.canvas.ds.scale = 1;"
        "const c = document.querySelector('#graph-canvas').getBoundingClientRect();"
        "const bottom = Math.min(c.height - 20, 620);"
        "app.canvas.ds.offset = [-n.pos[0] + 30, bottom - (n.pos[1] + n.size[1])];"
        "app.canvas.setDirty(true, true);"
        "return [c.x, c.y + Math.max(0, bottom - 380), c.x + Math.min(c.width, n.size[0] + 60), c.y + bottom + 16];")
    time.sleep(0.5)
    (shots / "live_view_monitor.png").write_bytes(comfy_page.canvas_screenshot(browser, crop=tuple(box)))
    print(f"monitor curve: {final['monitor']} points, {drawn} monitor-coloured pixels; {final['summary']!r}")
