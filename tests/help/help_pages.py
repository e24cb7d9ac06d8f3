"""Reading and checking the node help pages in ``js/docs/<NodeClass>.md`` (no ComfyUI import here).

ComfyUI's frontend shows ``/extensions/<pack folder>/docs/<NodeClass>.md`` (or ``<NodeClass>/<locale>.md``)
in its node help panel; the server serves ``WEB_DIRECTORY`` (``js/``) under ``/extensions/<pack folder>/``.
Relative image links in a page resolve against ``/extensions/<pack folder>/docs/`` (the frontend's
``getNodeHelpBaseUrl``), so ``images/x.png`` in any page is the file ``js/docs/images/x.png``.

The format every page follows (new nodes too)::

    # <Display Name>                      <- NODE_DISPLAY_NAME_MAPPINGS value
    what it does and when to use it
    ## Inputs                             <- | Input | Type | Default / range | What it does |
    ## Outputs                            <- | Output | Type | What it is |
    ## Cost
    ## Typical settings
    ## Model files

``page_problems(page, node_cls, display_name)`` compares a page with a node class (anything with
``INPUT_TYPES()`` and ``RETURN_TYPES``/``RETURN_NAMES``): the Inputs table lists exactly the node's
required and optional inputs in order, each with its type (the ComfyUI type, or ``COMBO`` for a
list of choices) and, where the node sets one, its default; the Outputs table lists exactly its
outputs with their types.
"""
from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS_DIR = REPO / "js" / "docs"
NODES_DIR = REPO / "doodl_nodes" / "nodes"
SECTIONS = ("Inputs", "Outputs", "Cost", "Typical settings", "Model files")
INPUT_HEADER = ("Input", "Type", "Default / range", "What it does")
OUTPUT_HEADER = ("Output", "Type", "What it is")
MAX_IMAGE_BYTES = 150_000
#: combos with more choices than this are file/model lists whose default depends on the install
MAX_CHECKED_COMBO = 12


@dataclass
class Page:
    path: Path
    title: str
    intro: str
    sections: dict = field(default_factory=dict)   # "## name" -> body text
    order: list = field(default_factory=list)      # section names in file order
    inputs: list = field(default_factory=list)     # rows (tuples of cells) of the Inputs table
    outputs: list = field(default_factory=list)
    input_header: tuple = ()
    output_header: tuple = ()
    images: list = field(default_factory=list)     # relative image links


def split_row(line: str) -> tuple:
    """The cells of a markdown table row (``\\|`` is a literal pipe inside a cell)."""
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    return tuple(c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", body))


def _table(body: str) -> tuple[tuple, list]:
    lines = [ln for ln in body.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2 or not re.fullmatch(r"\|?[\s:|-]+\|?", lines[1].strip()):
        return (), []
    return split_row(lines[0]), [split_row(ln) for ln in lines[2:]]


def parse_page(path: Path) -> Page:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    title = lines[0][2:].strip() if lines and lines[0].startswith("# ") else ""
    page = Page(path, title, "")
    current, buf, intro = None, [], []
    for line in lines[1:]:
        m = re.match(r"^## (.+?)\s*$", line)
        if m:
            if current is not None:
                page.sections[current] = "\n".join(buf)
            current, buf = m.group(1), []
            page.order.append(current)
        elif current is None:
            intro.append(line)
        else:
            buf.append(line)
    if current is not None:
        page.sections[current] = "\n".join(buf)
    page.intro = "\n".join(intro).strip()
    page.input_header, page.inputs = _table(page.sections.get("Inputs", ""))
    page.output_header, page.outputs = _table(page.sections.get("Outputs", ""))
    page.images = [m.group(1) for m in re.finditer(r"!\[[^\]]*\]\(([^)\s]+)", text)
                   if not re.match(r"^(?:/|https?://)", m.group(1))]
    page.images += re.findall(r"<(?:img|source|video)[^>]*\ssrc=['\"](?!/|https?://)([^'\"]+)", text)
    return page


def _literal_dicts(name: str) -> dict:
    out = {}
    for path in sorted(NODES_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                    and any(getattr(t, "id", None) == name for t in node.targets)):
                for k, v in zip(node.value.keys, node.value.values):
                    if isinstance(k, ast.Constant):
                        out[k.value] = v.value if isinstance(v, ast.Constant) else None
    return out


def node_ids() -> list[str]:
    """Every key of a ``NODE_CLASS_MAPPINGS = {...}`` literal in ``doodl_nodes/nodes/*.py``."""
    return sorted(_literal_dicts("NODE_CLASS_MAPPINGS"))


def display_names() -> dict:
    """``NODE_DISPLAY_NAME_MAPPINGS`` literals of the node modules (node id -> display name)."""
    return _literal_dicts("NODE_DISPLAY_NAME_MAPPINGS")


def page_path(node_id: str) -> Path:
    return DOCS_DIR / f"{node_id}.md"


# ------------------------------------------------------------------------------------ checks


def structure_problems(page: Page, display_name: str | None) -> list[str]:
    """Format problems that need no node class: title, sections, table headers, images."""
    p = []
    if not page.title:
        p.append("the first line must be '# <Display Name>'")
    elif display_name and page.title != display_name:
        p.append(f"title {page.title!r} is not the display name {display_name!r}")
    if len(page.intro) < 80:
        p.append("needs a what/when paragraph (at least 80 characters) under the title")
    missing = [s for s in SECTIONS if s not in page.sections]
    if missing:
        p.append(f"missing sections: {missing}")
    elif [s for s in page.order if s in SECTIONS] != list(SECTIONS):
        p.append(f"sections must come in the order {list(SECTIONS)}, found {page.order}")
    for name in SECTIONS:
        if name in page.sections and len(page.sections[name].strip()) < 4:
            p.append(f"section {name!r} is empty")
    if page.input_header != INPUT_HEADER:
        p.append(f"Inputs table header must be {INPUT_HEADER}, found {page.input_header}")
    if page.output_header != OUTPUT_HEADER:
        p.append(f"Outputs table header must be {OUTPUT_HEADER}, found {page.output_header}")
    for rows, header, what in ((page.inputs, INPUT_HEADER, "Inputs"), (page.outputs, OUTPUT_HEADER, "Outputs")):
        for row in rows:
            if len(row) != len(header):
                p.append(f"{what} row {row[:1]} has {len(row)} cells, expected {len(header)}")
            elif not re.fullmatch(r"`[^`]+`", row[0]):
                p.append(f"{what} row name {row[0]!r} must be the exact name in backticks")
            elif len(row[-1]) < 10:
                p.append(f"{what} row {row[0]} needs a description")
    for rel in page.images:
        img = DOCS_DIR / rel
        if not img.is_file():
            p.append(f"image {rel} not found at {img}")
        elif img.stat().st_size > MAX_IMAGE_BYTES:
            p.append(f"image {rel} is {img.stat().st_size} bytes (keep help images under {MAX_IMAGE_BYTES})")
    return p


def _names(rows) -> list[str]:
    return [r[0].strip("`") for r in rows if r]


def _declared_inputs(node_cls) -> list[tuple[str, tuple]]:
    spec = node_cls.INPUT_TYPES()
    return [(name, s) for section in ("required", "optional") for name, s in spec.get(section, {}).items()]


def _numbers(text: str) -> list[float]:
    out = []
    for tok in re.findall(r"[−-]?\d[\d_]*(?:\.\d+)?(?:e[−-]?\d+)?", text.replace("⁶⁴", "")):
        try:
            out.append(float(tok.replace("−", "-").replace("_", "")))
        except ValueError:
            pass
    return out


def default_problem(name: str, kind, options: dict, cell: str) -> str | None:
    """Whether the Default / range cell states the node's default (None when it does or none is set)."""
    if "default" not in options:
        return None
    default = options["default"]
    if isinstance(kind, list):
        if len(kind) > MAX_CHECKED_COMBO or f"`{default}`" in cell:
            return None
        return f"`{name}`: the default `{default}` is not in the Default / range cell {cell!r}"
    if kind == "BOOLEAN":
        ok = f"`{str(default).lower()}`" in cell.lower()
    elif kind in ("INT", "FLOAT"):
        ok = any(math.isclose(v, float(default), rel_tol=1e-9, abs_tol=0.0) for v in _numbers(cell))
    elif kind == "STRING":
        ok = (default == "" and "empty" in cell.lower()) or f"`{default}`" in cell
    else:
        ok = True
    return None if ok else f"`{name}`: the default {default!r} is not in the Default / range cell {cell!r}"


def page_problems(page: Page, node_cls, display_name: str | None = None) -> list[str]:
    """Everything wrong with ``page`` as the help page of ``node_cls`` (empty list: it is right)."""
    p = structure_problems(page, display_name)
    declared = _declared_inputs(node_cls)
    want, have = [n for n, _ in declared], _names(page.inputs)
    if have != want:
        missing = [n for n in want if n not in have]
        extra = [n for n in have if n not in want]
        if missing or extra:
            p.append(f"Inputs table: missing {missing}, not inputs of the node {extra}")
        else:
            p.append(f"Inputs table order {have} differs from the node's {want}")
    rows = {r[0].strip("`"): r for r in page.inputs if len(r) == len(INPUT_HEADER)}
    for name, spec in declared:
        row = rows.get(name)
        if row is None:
            continue
        kind = spec[0]
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        type_name = "COMBO" if isinstance(kind, list) else str(kind)
        if row[1] != type_name:
            p.append(f"`{name}`: Type {row[1]!r} should be {type_name!r}")
        problem = default_problem(name, kind, options, row[2])
        if problem:
            p.append(problem)
    out_names = list(getattr(node_cls, "RETURN_NAMES", None) or node_cls.RETURN_TYPES)
    if _names(page.outputs) != out_names:
        p.append(f"Outputs table lists {_names(page.outputs)}, the node returns {out_names}")
    else:
        for row, kind in zip(page.outputs, node_cls.RETURN_TYPES):
            type_name = "COMBO" if isinstance(kind, list) else str(kind)
            if len(row) == len(OUTPUT_HEADER) and row[1] != type_name:
                p.append(f"output {row[0]}: Type {row[1]!r} should be {type_name!r}")
    return p
