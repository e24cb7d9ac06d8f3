"""Each node's help page, opened in the real ComfyUI frontend the way a user opens it.

For every pack node: put it on an empty canvas, select it, click the selection toolbox's info
button (``data-testid="info-button"``, what a user clicks; it opens the node library side panel on
the node's help), and wait for the frontend to render the page fetched from
``/extensions/<pack>/docs/<NodeClass>.md``: the title is the node's display name, the first table
lists exactly the node's inputs (from ``/object_info``), and every picture the page links has
loaded. One page (DOODL Optimize) is saved as a screenshot: to ``docs/screenshots/help_page.png``
with ``DOODL_UPDATE_SCREENSHOTS=1``, else to ``$DOODL_SCREENSHOT_DIR`` or a pytest temp folder.

Needs what test_browser_workflows.py needs (ComfyUI, the frontend wheel, chromium + chromedriver)
and skips with the reason otherwise.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from tests.browser import comfy_page
from tests.help import help_pages as hp

pytestmark = pytest.mark.comfyui
REPO = Path(__file__).resolve().parents[2]
SHOT_NODE = "DOODLOptimize"

OPEN_HELP = r"""
const [id] = arguments;
app.graph.clear();
const node = LiteGraph.createNode(id);
app.graph.add(node);
node.pos = [80, 80];
await app.extensionManager.command.execute('Comfy.Canvas.FitView');
app.canvas.selectNode(node);  // as a click on the node does: the selection toolbox appears
app.canvas.setDirty(true, true);
await new Promise((r) => setTimeout(r, 300));
return !!node;
"""

RENDERED = r"""
const el = document.querySelector('.node-help-content');
if (!el) return null;
const h1 = el.querySelector('h1');
const table = el.querySelector('table');
if (!h1 || !table) return null;
const rows = Array.from(table.querySelectorAll('tbody tr')).map((tr) => tr.cells[0].innerText.trim());
const imgs = Array.from(el.querySelectorAll('img')).map((i) => ({src: i.getAttribute('src'),
    ok: i.complete && i.naturalWidth > 0}));
return {title: h1.innerText.trim(), header: Array.from(table.querySelectorAll('thead th')).map((t) => t.innerText.trim()),
        inputs: rows, images: imgs, text: el.innerText.length};
"""


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    if os.environ.get("DOODL_UPDATE_SCREENSHOTS") == "1":
        out = REPO / "docs" / "screenshots"
        out.mkdir(parents=True, exist_ok=True)
        return out
    return Path(os.environ.get("DOODL_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screenshots"))


def _inputs(info: dict) -> list[str]:
    order = info.get("input_order") or {}
    return list(order.get("required", [])) + list(order.get("optional", []))


def _small_png(png: bytes, path: Path, max_bytes: int = 200_000) -> None:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    width = img.width
    while True:
        scaled = img if width == img.width else img.resize((width, round(img.height * width / img.width)),
                                                           Image.LANCZOS)
        buf = io.BytesIO()
        scaled.quantize(colors=128, method=Image.Quantize.FASTOCTREE).save(buf, "PNG", optimize=True)
        if buf.tell() < max_bytes or width < 500:
            break
        width = int(width * 0.85)
    path.write_bytes(buf.getvalue())


@pytest.mark.parametrize("node_id", hp.node_ids())
def test_help_page_renders_in_the_frontend(node_id, server, browser, shots):
    info = server.object_info(node_id)[node_id]
    browser.run_async(OPEN_HELP, node_id)
    browser.wait_for("const b = document.querySelector('[data-testid=\"info-button\"]');"
                     " return !!(b && b.getBoundingClientRect().width > 0)", timeout=20, what="the selection toolbox's info button")
    browser.execute("document.querySelector('[data-testid=\"info-button\"]').click()")
    page = browser.wait_for(
        "const r = (() => {" + RENDERED + "})(); return r && r.title === arguments[0] ? r : null",
        info["display_name"], timeout=30, what=f"the rendered help page of {node_id}")
    assert page["header"] == list(hp.INPUT_HEADER)
    assert page["inputs"] == _inputs(info), (page["inputs"], _inputs(info))
    # pictures: served from /extensions/<pack>/docs/ and loaded
    browser.wait_for("const el = document.querySelector('.node-help-content');"
                     " return Array.from(el.querySelectorAll('img')).every((i) => i.complete)", timeout=20,
                     what="the help pictures")
    page = browser.execute("return (() => {" + RENDERED + "})()")
    want = hp.parse_page(hp.page_path(node_id)).images
    assert [i["src"] for i in page["images"]] == [f"/extensions/{server.pack_name}/docs/{rel}" for rel in want]
    assert all(i["ok"] for i in page["images"]), page["images"]
    assert comfy_page.dialogs(browser) == []
    new = [e for e in comfy_page.errors(browser) if e not in set(browser.startup_errors)]
    assert new == [], new
    if node_id == SHOT_NODE:
        _screenshot_panel(browser, shots / "help_page.png")


def _screenshot_panel(browser, path: Path) -> None:
    """The side panel with the help page, widened as a user would drag the splitter (at its default 20 %
    width the tables scroll sideways), in a tall window."""
    from PIL import Image

    browser.set_window_size(1600, 1700)
    try:
        rect = browser.run_async(
            "const panel = document.querySelector('.node-help-content').closest('.p-splitterpanel');"
            "for (const p of panel.parentElement.children) if (p.classList.contains('p-splitterpanel'))"
            " p.style.flexBasis = p === panel ? 'calc(62% - 4px)' : 'calc(38% - 4px)';"
            "await new Promise((r) => setTimeout(r, 600));"
            "const r = panel.getBoundingClientRect();"
            "return {x1: r.right, y1: r.bottom, dpr: window.devicePixelRatio || 1};")
        img = Image.open(io.BytesIO(browser.screenshot())).convert("RGB")
        s = rect["dpr"]
        img = img.crop((0, 0, int(rect["x1"] * s), int(rect["y1"] * s)))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        _small_png(buf.getvalue(), path)
    finally:
        browser.set_window_size(1600, 1000)
