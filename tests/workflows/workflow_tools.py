"""Reading, checking and converting the committed example workflows (no ComfyUI import here).

* ``workflow_names()``, ``load_ui(name)``, ``load_api(name)``: the files in ``workflows/`` and their
  API-format twins in ``tests/api_prompts/``.
* ``pack_node_ids()``: the pack's node ids, read from the ``NODE_CLASS_MAPPINGS`` literals of
  ``doodl_nodes/nodes/*.py`` with ``ast`` (works without ComfyUI, which the node modules import).
* ``widget_names(info)``: the widgets the frontend creates for a node, from its ``/object_info``
  entry, in order, including the frontend-only ones (``control_after_generate`` after an INT with
  that option or named seed/noise_seed, the ``upload`` button after an ``image_upload`` combo).
* ``check_workflow(ui, object_info)``: the static checks (node types exist, link types match the
  sockets, widget values match the inputs' count, types and ranges, required inputs are set).
* ``ui_to_api(ui, object_info)``: the API prompt the frontend's ``graphToPrompt`` makes from a
  UI-format workflow (for the node features these workflows use: no subgraphs, no bypassed nodes,
  no frontend-only PrimitiveNode/Reroute), so a test can keep each pair in agreement.
* ``apply_test_overrides(prompt)``: the ONLY changes the CPU tests make to an API twin (documented
  in ``TEST_OVERRIDES``): fewer steps/iterations/crops, 64 px images and a small open_clip
  architecture for the HPS file, nothing else.
"""
from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS_DIR = REPO / "workflows"
API_DIR = REPO / "tests" / "api_prompts"
NODES_DIR = REPO / "doodl_nodes" / "nodes"

#: Node types the frontend itself provides (never sent to the server, absent from /object_info).
FRONTEND_ONLY = {"Note", "MarkdownNote"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")

#: (class_type, input) -> value used by the CPU tests instead of the committed one. Everything else
#: in the API twin runs exactly as committed.
TEST_OVERRIDES = {
    ("BasicScheduler", "steps"): 3,          # 50 EDICT steps -> 3
    ("DOODLOptimize", "iterations"): 2,      # 20-50 iterations -> 2
    ("DOODLOptimize", "num_crops"): 1,       # 16 crops -> 1
    ("DOODLOneStepGuidance", "num_crops"): 1,
    ("EmptyLatentImage", "width"): 64,       # 512 px -> 64 px (an 8x8 latent)
    ("EmptyLatentImage", "height"): 64,
    ("EmptySD3LatentImage", "width"): 64,    # Flux: 1024 px -> 64 px
    ("EmptySD3LatentImage", "height"): 64,
    ("ImageScale", "width"): 64,
    ("ImageScale", "height"): 64,
    # the tiny HPS file is a small open_clip architecture (the published files are ViT-H-14)
    ("DOODLHPSScorer", "architecture"): "ViT-S-32-alt",
}
#: WS-DAN runs a full-size Inception-v3 at 512 px (about 3.8 s per iteration on one CPU thread).
WSDAN_ITERATIONS = 1


def workflow_names() -> list[str]:
    return sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json"))


def load_ui(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text(encoding="utf-8"))


def load_api(name: str) -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text(encoding="utf-8"))


def pack_node_ids() -> set[str]:
    """Keys of every ``NODE_CLASS_MAPPINGS = {...}`` literal in the pack's node modules."""
    ids = set()
    for path in sorted(NODES_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "NODE_CLASS_MAPPINGS"
                                                    for t in node.targets) and isinstance(node.value, ast.Dict):
                ids.update(k.value for k in node.value.keys if isinstance(k, ast.Constant))
    return ids


# ---------------------------------------------------------------------------------------- object_info

def ordered_inputs(info: dict) -> list[tuple[str, list, bool]]:
    """``(name, spec, required)`` in the frontend's order (``input_order``: required, then optional)."""
    out = []
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    for section in ("required", "optional"):
        specs = info["input"].get(section, {})
        for name in order.get(section, []):
            out.append((name, specs[name], section == "required"))
    return out


def input_type(spec: list) -> str:
    t = spec[0]
    return "COMBO" if isinstance(t, list) else t


def combo_options(spec: list) -> list | None:
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        return (spec[1] if len(spec) > 1 else {}).get("options", [])
    return None


def is_widget(spec: list) -> bool:
    opts = spec[1] if len(spec) > 1 else {}
    return input_type(spec) in WIDGET_TYPES and not opts.get("forceInput")


def widget_names(info: dict) -> list[str]:
    """Widget names in order, with the frontend's extra widgets (their values are in widgets_values)."""
    names = []
    for name, spec, _ in ordered_inputs(info):
        if not is_widget(spec):
            continue
        names.append(name)
        opts = spec[1] if len(spec) > 1 else {}
        # the frontend adds it for this option and, always, for INT inputs named seed/noise_seed
        if input_type(spec) == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
            names.append("control_after_generate")
        if opts.get("image_upload"):
            names.append("upload")
    return names


EXTRA_WIDGETS = {"control_after_generate", "upload"}


def _types_compatible(out_type: str, in_type: str) -> bool:
    if "*" in (out_type, in_type):
        return True
    return bool(set(out_type.split(",")) & set(in_type.split(",")))


def check_value(name: str, spec: list, value) -> str | None:
    """None if ``value`` is valid for the input ``spec``, else what is wrong."""
    t = input_type(spec)
    opts = spec[1] if len(spec) > 1 else {}
    if t == "COMBO":
        options = combo_options(spec)
        return None if value in options else f"{name}={value!r} is not one of {options[:12]}"
    if t == "BOOLEAN":
        return None if isinstance(value, bool) else f"{name}={value!r} is not a boolean"
    if t == "STRING":
        return None if isinstance(value, str) else f"{name}={value!r} is not a string"
    if t in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name}={value!r} is not a number"
        if t == "INT" and value != int(value):
            return f"{name}={value!r} is not an integer"
        lo, hi = opts.get("min"), opts.get("max")
        if lo is not None and value < lo or hi is not None and value > hi:
            return f"{name}={value!r} is outside [{lo}, {hi}]"
    return None


# --------------------------------------------------------------------------------------- the checks

def structure_problems(ui: dict) -> list[str]:
    """Checks that need no /object_info: format, ids, and that links and sockets agree."""
    problems = []
    if ui.get("version") != 0.4:
        problems.append(f"version {ui.get('version')!r} (the frontend writes 0.4)")
    nodes = {n["id"]: n for n in ui["nodes"]}
    if len(nodes) != len(ui["nodes"]):
        problems.append("duplicate node ids")
    if ui.get("last_node_id", 0) < max(nodes, default=0):
        problems.append("last_node_id is smaller than a node id")
    links = {}
    for link in ui["links"]:
        lid, src, src_slot, dst, dst_slot, ltype = link
        links[lid] = link
        if src not in nodes or dst not in nodes:
            problems.append(f"link {lid} joins missing nodes {src}->{dst}")
            continue
        outs, ins = nodes[src].get("outputs") or [], nodes[dst].get("inputs") or []
        if src_slot >= len(outs) or dst_slot >= len(ins):
            problems.append(f"link {lid}: slot out of range")
            continue
        out, inp = outs[src_slot], ins[dst_slot]
        if lid not in (out.get("links") or []):
            problems.append(f"link {lid} missing from output {src}.{out['name']}")
        if inp.get("link") != lid:
            problems.append(f"input {dst}.{inp['name']} does not point back to link {lid}")
        if not (_types_compatible(out["type"], ltype) and _types_compatible(ltype, inp["type"])):
            problems.append(f"link {lid} type {ltype}: output {out['type']} -> input {inp['type']}")
    for n in ui["nodes"]:
        for inp in n.get("inputs") or []:
            if inp.get("link") is not None and inp["link"] not in links:
                problems.append(f"{n['type']} #{n['id']}.{inp['name']} points at missing link {inp['link']}")
        for out in n.get("outputs") or []:
            for lid in out.get("links") or []:
                if lid not in links:
                    problems.append(f"{n['type']} #{n['id']}.{out['name']} lists missing link {lid}")
    return problems


def check_workflow(ui: dict, object_info: dict) -> list[str]:
    """Every static check against ``/object_info`` (an empty list means the workflow is valid)."""
    problems = structure_problems(ui)
    nodes = {n["id"]: n for n in ui["nodes"]}
    links = {link[0]: link for link in ui["links"]}
    for n in ui["nodes"]:
        where = f"{n['type']} #{n['id']}"
        if n["type"] in FRONTEND_ONLY:
            continue
        info = object_info.get(n["type"])
        if info is None:
            problems.append(f"{where}: unknown node type (neither in this pack nor in ComfyUI)")
            continue
        if n.get("mode", 0) != 0:
            problems.append(f"{where}: mode {n['mode']} (muted/bypassed nodes do not belong in an example)")
        specs = {name: (spec, req) for name, spec, req in ordered_inputs(info)}
        linked = {}
        for inp in n.get("inputs") or []:
            if inp["name"] not in specs:
                problems.append(f"{where}: input {inp['name']!r} is not in object_info")
                continue
            if inp.get("link") is not None:
                linked[inp["name"]] = links.get(inp["link"])
        # links carry the socket types of object_info
        for name, link in linked.items():
            if link is None:
                continue
            src = nodes[link[1]]
            src_info = object_info.get(src["type"])
            if src_info is None:
                continue
            out_type = src_info["output"][link[2]]
            want = input_type(specs[name][0])
            if not _types_compatible(out_type, want):
                problems.append(f"{where}.{name}: {src['type']} output {link[2]} is {out_type}, the input takes {want}")
        # outputs as object_info says
        for i, out in enumerate(n.get("outputs") or []):
            if i >= len(info["output"]) or out["type"] != info["output"][i]:
                problems.append(f"{where}: output {i} type {out['type']} != {info['output'][i:i + 1]}")
        # widgets: count, types, ranges
        names = widget_names(info)
        values = n.get("widgets_values") or []
        if isinstance(values, dict):
            problems.append(f"{where}: widgets_values is a dict")
            continue
        if len(values) != len(names):
            problems.append(f"{where}: {len(values)} widget values for {len(names)} widgets {names}")
            continue
        for name, value in zip(names, values):
            if name == "control_after_generate":
                if value not in ("fixed", "increment", "decrement", "randomize"):
                    problems.append(f"{where}: control_after_generate={value!r}")
                continue
            if name == "upload":
                continue
            if name in linked:
                continue
            err = check_value(name, specs[name][0], value)
            if err:
                problems.append(f"{where}: {err}")
        # every required non-widget input is connected
        for name, (spec, required) in specs.items():
            if required and not is_widget(spec) and name not in linked:
                problems.append(f"{where}: required input {name!r} is not connected")
    return problems


# ----------------------------------------------------------------------------------- UI -> API prompt

def ui_to_api(ui: dict, object_info: dict) -> dict:
    """The API prompt of a UI workflow, as the frontend's graphToPrompt builds it."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for n in ui["nodes"]:
        if n["type"] in FRONTEND_ONLY or n.get("mode", 0) in (2, 4):
            continue
        info = object_info[n["type"]]
        inputs = {}
        for name, value in zip(widget_names(info), n.get("widgets_values") or []):
            if name not in EXTRA_WIDGETS:
                inputs[name] = {"__value__": value} if isinstance(value, list) else value
        for inp in n.get("inputs") or []:
            link = links.get(inp.get("link"))
            if link is not None:
                inputs[inp["name"]] = [str(link[1]), link[2]]
        prompt[str(n["id"])] = {"inputs": inputs, "class_type": n["type"],
                                "_meta": {"title": n.get("title") or info["display_name"] or n["type"]}}
    return prompt


def api_differences(a: dict, b: dict) -> list[str]:
    """Readable differences between two API prompts (node ids, classes, inputs, titles)."""
    out = []
    for nid in sorted(set(a) | set(b), key=lambda s: int(s) if s.isdigit() else s):
        if nid not in a or nid not in b:
            out.append(f"node {nid} only in {'first' if nid in a else 'second'}")
            continue
        x, y = a[nid], b[nid]
        if x["class_type"] != y["class_type"]:
            out.append(f"node {nid}: class {x['class_type']} != {y['class_type']}")
        for k in sorted(set(x["inputs"]) | set(y["inputs"])):
            if x["inputs"].get(k, "<missing>") != y["inputs"].get(k, "<missing>"):
                out.append(f"node {nid} {x['class_type']}.{k}: {x['inputs'].get(k, '<missing>')!r} != "
                           f"{y['inputs'].get(k, '<missing>')!r}")
        if x.get("_meta", {}).get("title") != y.get("_meta", {}).get("title"):
            out.append(f"node {nid}: title {x.get('_meta')} != {y.get('_meta')}")
    return out


def apply_test_overrides(prompt: dict) -> tuple[dict, list[str]]:
    """A copy of ``prompt`` with ``TEST_OVERRIDES`` applied, and the list of what changed."""
    out = copy.deepcopy(prompt)
    changed = []
    wsdan = any(n["class_type"] == "DOODLWSDANScorer" for n in out.values())
    for nid, node in out.items():
        for (cls, name), value in TEST_OVERRIDES.items():
            if node["class_type"] == cls and name in node["inputs"] and not isinstance(node["inputs"][name], list):
                if cls == "DOODLOptimize" and name == "iterations" and wsdan:
                    value = WSDAN_ITERATIONS
                if node["inputs"][name] != value:
                    changed.append(f"{nid} {cls}.{name}: {node['inputs'][name]!r} -> {value!r}")
                    node["inputs"][name] = value
    return out, changed
