"""Driving the real ComfyUI frontend (the comfyui-frontend-package wheel) in chromium.

Only public frontend objects are used: ``window.app`` (``app.graph``, ``app.loadGraphData``,
``app.graphToPrompt``, ``app.queuePrompt``, ``app.extensions``, ``app.extensionManager.command``)
and ``LiteGraph``. Errors are captured from the first line of every page (``window.onerror``,
unhandled rejections, ``console.error``) into ``window.__doodlErrors``.
"""
from __future__ import annotations

import io
import json
import time

CAPTURE_ERRORS = r"""
(() => {
  window.__doodlErrors = [];
  const push = (kind, msg) => window.__doodlErrors.push(kind + ": " + String(msg).slice(0, 2000));
  window.addEventListener("error", (e) => push("error", e.message || e));
  window.addEventListener("unhandledrejection",
    (e) => push("rejection", (e.reason && (e.reason.stack || e.reason.message)) || e.reason));
  const ce = console.error.bind(console);
  console.error = (...a) => { push("console.error", a.map((x) => (x && x.stack) || String(x)).join(" ")); ce(...a); };
})();
"""

# Settings of the test user: no first-run template dialog; no minimap, canvas info or zoom menu over
# the canvas in screenshots. The missing-nodes and missing-models warnings stay ON (their default):
# the tests assert they do not appear.
SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    "Comfy.Graph.CanvasMenu": False,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,  # full-detail nodes at any zoom (readable thumbnails)
    "Comfy.Workflow.ShowMissingNodesWarning": True,
    "Comfy.Workflow.ShowMissingModelsWarning": True,
}

# Visible PrimeVue dialogs (error dialogs, the missing-nodes / missing-models warnings, prompts).
VISIBLE_DIALOGS = r"""
return Array.from(document.querySelectorAll('.p-dialog, [role="dialog"], [role="alertdialog"]'))
  .filter((el) => el.offsetParent !== null || getComputedStyle(el).position === 'fixed')
  .filter((el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; })
  .map((el) => (el.innerText || '').trim().slice(0, 500));
"""


def open_comfy(browser, server, timeout: float = 90.0) -> float:
    """Open the frontend with the test settings; returns the seconds until the app was ready."""
    for key, value in SETTINGS.items():
        server.post_json("/settings/" + key, value)
    browser.add_init_script(CAPTURE_ERRORS)
    t0 = time.monotonic()
    browser.get(server.url + "/")
    browser.wait_for("return !!(window.app && window.app.graph && window.app.canvas && window.app.extensionManager"
                     " && document.querySelector('#graph-canvas') && window.LiteGraph"
                     " && Object.keys(LiteGraph.registered_node_types).length > 100)",
                     timeout=timeout, what="the ComfyUI app")
    # extensions are loaded before the graph is configured; give the first draw a moment
    browser.wait_for("return app.extensions.length > 10", timeout=timeout, what="frontend extensions")
    return time.monotonic() - t0


def errors(browser) -> list[str]:
    return browser.execute("return window.__doodlErrors || []")


def dialogs(browser) -> list[str]:
    return browser.execute(VISIBLE_DIALOGS)


def load_workflow(browser, workflow: dict, name: str) -> None:
    """Load a UI-format workflow the way drag-and-drop does (``app.loadGraphData``)."""
    browser.run_async("await app.loadGraphData(arguments[0], true, true, arguments[1]);"
                      "app.canvas.setDirty(true, true);", workflow, name)


def export(browser) -> tuple[dict, dict]:
    """``(workflow, api_prompt)`` exactly as the frontend's Export / Export (API) menu items build them."""
    out = browser.run_async("const p = await app.graphToPrompt();"
                            "return JSON.stringify({workflow: p.workflow, output: p.output});")
    data = json.loads(out)
    return data["workflow"], data["output"]


def fit_view(browser, timeout: float = 5.0) -> None:
    """Fit the graph in the canvas (the frontend animates this: wait until the view is still)."""
    browser.run_async("await app.extensionManager.command.execute('Comfy.Canvas.FitView');"
                      "app.canvas.setDirty(true, true);")
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        view = browser.run_async("await new Promise((r) => setTimeout(r, 120));"
                                 "return JSON.stringify([app.canvas.ds.scale, app.canvas.ds.offset]);")
        if view == last:
            break
        last = view
    browser.run_async("app.canvas.setDirty(true, true);"
                      "await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));")


def graph_box(browser, pad: float = 24.0) -> tuple:
    """The page-pixel box around every node of the graph (titles included), clipped to the canvas."""
    r = browser.execute(r"""
      const c = document.querySelector('#graph-canvas').getBoundingClientRect();
      const ds = app.canvas.ds, T = LiteGraph.NODE_TITLE_HEIGHT;
      let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
      for (const n of app.graph.nodes) {
        const a = ds.convertOffsetToCanvas([n.pos[0], n.pos[1] - T]);
        const b = ds.convertOffsetToCanvas([n.pos[0] + n.size[0], n.pos[1] + n.size[1]]);
        x0 = Math.min(x0, a[0]); y0 = Math.min(y0, a[1]); x1 = Math.max(x1, b[0]); y1 = Math.max(y1, b[1]);
      }
      return {c: [c.x, c.y, c.x + c.width, c.y + c.height], g: [x0 + c.x, y0 + c.y, x1 + c.x, y1 + c.y]};
    """)
    c, g = r["c"], r["g"]
    return (max(c[0], g[0] - pad), max(c[1], g[1] - pad), min(c[2], g[2] + pad), min(c[3], g[3] + pad))


def canvas_screenshot(browser, max_width: int | None = None, fmt: str = "PNG", quality: int = 85,
                      crop: tuple | None = None) -> bytes:
    """The graph canvas area of the page (no side bar, no top menu) as PNG or JPEG bytes."""
    from PIL import Image

    rect = browser.execute("const r = document.querySelector('#graph-canvas').getBoundingClientRect();"
                           "return {x: r.x, y: r.y, w: r.width, h: r.height, dpr: window.devicePixelRatio || 1};")
    png = Image.open(io.BytesIO(browser.screenshot())).convert("RGB")
    s = rect["dpr"]
    box = crop or (rect["x"], rect["y"], rect["x"] + rect["w"], rect["y"] + rect["h"])
    img = png.crop(tuple(int(round(v * s)) for v in box))
    if max_width and img.width > max_width:
        img = img.resize((max_width, round(img.height * max_width / img.width)), Image.LANCZOS)
    buf = io.BytesIO()
    if fmt.upper() == "JPEG":
        img.save(buf, "JPEG", quality=quality, optimize=True, progressive=True)
    else:
        img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def real_frontend_server():
    """The test ComfyUI server with the real frontend (the ``comfyui-frontend-package`` wheel), or
    give up through ``unavailable`` when ComfyUI, that wheel or chromium is missing."""
    import importlib.util

    from tests.browser import webdriver
    from tests.comfyui_env import require_comfyui, unavailable

    require_comfyui()
    if importlib.util.find_spec("comfyui_frontend_package") is None:
        unavailable("comfyui_frontend_package (the web UI wheel ComfyUI serves) is not installed: "
                    "python tests/comfyui_bootstrap.py installs ComfyUI's requirements")
    reason = webdriver.available()
    if reason:
        unavailable(reason)
    from tests.workflows.workflow_server import workflow_server

    return workflow_server(frontend="real")
