"""Static checks of the example workflows and their API twins.

Without ComfyUI: file layout (one template folder, a same-name JPEG thumbnail under 100 KB and an
API twin for every workflow), the UI format's own consistency (links and sockets agree, link types
equal socket types), and that every node type of this pack exists. With ComfyUI (``/object_info``
of the workflow test server): every node type exists in the pack or in ComfyUI's core list, link
types match the sockets' types, widget values match the inputs' count, types and ranges, and each
UI file converts to exactly its committed API twin. Plus node help: a description and a tooltip on
every input of every pack node.
"""
from __future__ import annotations

import pytest

from tests.workflows import specs
from tests.workflows import workflow_tools as wt

NAMES = wt.workflow_names()
#: node types each workflow must use (what its use case is about), by workflow
WANTS = {
    "doodl1_text_to_image": {"DOODLOptimize", "DOODLCLIPTextScorer", "EmptyLatentImage"},
    "doodl2_aesthetic_edit": {"LoadImage", "VAEEncode", "EDICTInversion", "DOODLOptimize", "DOODLAestheticScorer"},
    "doodl3_personalization": {"DOODLOptimize", "DOODLCLIPImageScorer", "LoadImage"},
    "doodl4_fine_grained": {"DOODLOptimize", "DOODLWSDANScorer"},
    "doodl5_edict_inversion": {"EDICTInversion", "EDICTGenerate", "VAEDecode", "LoadImage"},
    "doodl6_vs_baselines": {"DOODLOptimize", "DOODLOneStepGuidance", "SamplerCustom"},
    "doodl7_preference": {"DOODLOptimize", "DOODLHPSScorer", "DOODLImageRewardScorer", "DOODLPickScoreScorer",
                          "DOODLCombineScorers", "DOODLAestheticScorer"},
    "doodl8_sdxl_turbo_few_step": {"DOODLOptimize", "SDTurboScheduler", "CheckpointLoaderSimple"},
    "doodl9_flux_schnell_4_step": {"DOODLOptimize", "UNETLoader", "DualCLIPLoader", "EmptySD3LatentImage"},
    "doodl10_edict_edit_sdxl_flux": {"EDICTInversion", "EDICTGenerate", "UNETLoader", "CheckpointLoaderSimple"},
    "doodl11_reno_transfer_sdxl": {"DOODLOptimize", "SDTurboScheduler", "SamplerCustomAdvanced", "CFGGuider"},
}
#: BasicScheduler steps of the committed (real GPU) settings: 50 EDICT steps unless the model says
#: otherwise (Flux schnell: 4; Flux dev editing: 28; SDXL base sampling after the transfer: 30)
REAL_STEPS = {"doodl9_flux_schnell_4_step": {4}, "doodl10_edict_edit_sdxl_flux": {50, 28},
              "doodl11_reno_transfer_sdxl": {30}}
#: image size of the committed settings (SD1.5 and SDXL-Turbo 512; SDXL base and Flux 1024)
REAL_SIZE = {"doodl9_flux_schnell_4_step": 1024, "doodl11_reno_transfer_sdxl": 1024}


def test_workflows_with_thumbnails_and_api_twins():
    assert NAMES == sorted(WANTS), NAMES
    from PIL import Image

    for name in NAMES:
        thumb = wt.WORKFLOWS_DIR / f"{name}.jpg"
        assert thumb.is_file(), f"{name}: no thumbnail {thumb.name} (the template browser asks for .jpg)"
        assert thumb.stat().st_size < 100_000, f"{thumb.name} is {thumb.stat().st_size} bytes"
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and im.width >= 320 and im.height >= 160, (im.format, im.size)
        assert (wt.API_DIR / f"{name}.json").is_file(), f"{name}: no API twin in tests/api_prompts/"
    assert sorted(p.stem for p in wt.API_DIR.glob("*.json")) == NAMES, "API twins without a workflow"
    assert sorted(p.stem for p in wt.WORKFLOWS_DIR.iterdir() if p.suffix not in (".json", ".jpg")) == []
    # ComfyUI serves only one template folder per pack (comfyui-notes section 6)
    present = [f for f in wt.TEMPLATE_FOLDERS if (wt.REPO / f).is_dir()]
    assert present == ["workflows"], present


@pytest.mark.parametrize("name", NAMES)
def test_ui_file_is_consistent(name):
    ui = wt.load_ui(name)
    assert wt.structure_problems(ui) == []
    types = {n["type"] for n in ui["nodes"]}
    pack = wt.pack_node_ids()
    ours = {t for t in types if t.startswith(("DOODL", "EDICT"))}
    assert ours and ours <= pack, ours - pack
    assert "DOODLOptimize" in types or "EDICTInversion" in types


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_matches_the_ui_links_without_object_info(name):
    """Node ids, classes and every link agree (widget values need /object_info, below)."""
    ui, api = wt.load_ui(name), wt.load_api(name)
    nodes = {str(n["id"]): n for n in ui["nodes"] if n["type"] not in wt.FRONTEND_ONLY}
    assert set(nodes) == set(api)
    links = {link[0]: link for link in ui["links"]}
    for nid, n in nodes.items():
        assert api[nid]["class_type"] == n["type"]
        ui_links = {i["name"]: [str(links[i["link"]][1]), links[i["link"]][2]]
                    for i in n.get("inputs") or [] if i.get("link") is not None}
        api_links = {k: v for k, v in api[nid]["inputs"].items() if isinstance(v, list)}
        assert ui_links == api_links, nid


def test_workflows_cover_the_issue_list():
    for name in NAMES:
        used = {n["type"] for n in wt.load_ui(name)["nodes"]}
        assert WANTS[name] <= used, (name, WANTS[name] - used)


def test_aesthetic_editing_follows_the_paper():
    """Empty prompt, no tying, no renormalization, editing the inverted pair (paper 5.3)."""
    name = next(n for n in NAMES if "aesthetic" in n)
    api = wt.load_api(name)
    (doodl,) = [n for n in api.values() if n["class_type"] == "DOODLOptimize"]
    i = doodl["inputs"]
    assert i["tie_latents"] is False and i["renormalize"] is False
    assert api[i["edict_latent"][0]]["class_type"] == "EDICTInversion" and "latent" not in i
    for key in ("positive", "negative"):
        src = api[i[key][0]]
        assert src["class_type"] == "CLIPTextEncode" and src["inputs"]["text"] == ""


def test_real_gpu_settings_are_committed():
    """The committed twins keep real settings; the CPU tests lower them only via TEST_OVERRIDES."""
    for name in NAMES:
        for node in wt.load_api(name).values():
            i = node["inputs"]
            if node["class_type"] == "BasicScheduler":
                assert i["steps"] in REAL_STEPS.get(name, {50}), (name, i["steps"])
            if node["class_type"] == "SDTurboScheduler":
                assert 1 <= i["steps"] <= 4 and i["denoise"] == 1.0
            if node["class_type"] == "DOODLOptimize":
                assert 20 <= i["iterations"] <= 50 and i["num_crops"] == 16
            if node["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage"):
                side = REAL_SIZE.get(name, 512)
                assert (i["width"], i["height"]) == (side, side), name


# ----------------------------------------------------------------------- with ComfyUI (object_info)

@pytest.fixture(scope="module")
def object_info():
    from tests.comfyui_env import require_comfyui

    require_comfyui()
    from tests.workflows.workflow_server import workflow_server

    return workflow_server().object_info()


@pytest.mark.comfyui
@pytest.mark.parametrize("name", NAMES)
def test_workflow_against_object_info(name, object_info):
    assert wt.check_workflow(wt.load_ui(name), object_info) == []


@pytest.mark.comfyui
@pytest.mark.parametrize("name", NAMES)
def test_ui_and_api_twin_agree(name, object_info):
    converted = wt.ui_to_api(wt.load_ui(name), object_info)
    assert wt.api_differences(converted, wt.load_api(name)) == []


@pytest.mark.comfyui
def test_checker_catches_broken_workflows(object_info):
    """The checks above can fail: a wrong link type, a value out of range, a missing node."""
    ui = wt.load_ui("doodl1_text_to_image")
    doodl = next(n for n in ui["nodes"] if n["type"] == "DOODLOptimize")
    names = wt.widget_names(object_info["DOODLOptimize"])
    i = names.index("iterations")
    values = list(doodl["widgets_values"])
    values[i] = 100000
    bad = {**ui, "nodes": [dict(n, widgets_values=values) if n is doodl else n for n in ui["nodes"]]}
    assert any("iterations=100000 is outside" in p for p in wt.check_workflow(bad, object_info))
    short = {**ui, "nodes": [dict(n, widgets_values=values[:-1]) if n is doodl else n for n in ui["nodes"]]}
    assert any("widget values for" in p for p in wt.check_workflow(short, object_info))
    renamed = {**ui, "nodes": [dict(n, type="DOODLNoSuchNode") if n is doodl else n for n in ui["nodes"]]}
    assert any("unknown node type" in p for p in wt.check_workflow(renamed, object_info))
    wrong = {**ui, "links": [l[:5] + ["IMAGE"] if l[5] == "DOODL_SCORER" else l for l in ui["links"]]}
    assert any("DOODL_SCORER" in p for p in wt.check_workflow(wrong, object_info))


@pytest.mark.comfyui
def test_every_pack_node_has_help(object_info):
    """Node help in the frontend: a description and a tooltip on every input and output."""
    ids = wt.pack_node_ids()
    assert ids <= set(object_info), ids - set(object_info)
    for nid in sorted(ids):
        info = object_info[nid]
        assert len(info.get("description", "")) > 40, nid
        for name, spec, _ in wt.ordered_inputs(info):
            assert (spec[1] if len(spec) > 1 else {}).get("tooltip"), f"{nid}.{name} has no tooltip"
        assert all(info.get("output_tooltips") or [None]), f"{nid} outputs need tooltips"
        assert info["category"].startswith("DOODL"), nid
