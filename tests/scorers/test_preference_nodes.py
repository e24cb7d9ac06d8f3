"""The preference reward nodes in-process against the real ComfyUI, under inference mode as
ComfyUI's executor runs them, with random-weight files in the published layouts in a temporary
``models/doodl``."""
from __future__ import annotations

import shutil

import pytest
import torch

from doodl_nodes.core.crops import CropConfig
from tests.scorers import preference_files as pf
from tests.scorers.test_scorer_nodes import _grad_check  # as DOODL Optimize runs a scorer

pytestmark = pytest.mark.comfyui

PROMPT = "a photo of a red fox in the snow"
NO_CROPS = CropConfig(num_crops=0)


@pytest.fixture
def pn():
    from tests.comfyui_env import require_comfyui

    require_comfyui()
    from doodl_nodes.nodes import preference_nodes
    return preference_nodes


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    src = tmp_path_factory.mktemp("preference")
    arch = pf.register_tiny_hps(src)
    return {"pick": pf.write_hf_clip(src / "PickScore_v1", seed=7),
            "hps": pf.write_hps(src / "HPS_v2.1_compressed.pt", arch, seed=8),
            "ir": pf.write_imagereward(src / "imagereward", seed=9).parent, "arch": arch}


@pytest.fixture
def models(pn, files, tmp_path, monkeypatch):
    import folder_paths

    from doodl_nodes.bridge import folders

    root = tmp_path / "doodl"
    for name, sub in [("doodl", ""), ("doodl_clip", "clip"), ("doodl_hps", "hps"),
                      ("doodl_imagereward", "imagereward")]:
        (root / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name,
                            ([str(root / sub)], set(folders.EXTENSIONS)))
    shutil.copytree(files["pick"], root / "clip" / "PickScore_v1")
    shutil.copy(files["hps"], root / "hps" / "HPS_v2.1_compressed.pt")
    shutil.copytree(files["ir"], root / "imagereward", dirs_exist_ok=True)
    return root


def _build(pn, files, goal="maximize", target=0.0):
    with torch.inference_mode():
        pick = pn.DOODLPickScoreScorer().build(prompt=PROMPT, model="PickScore_v1/", goal=goal,
                                               target=target, precision="fp32")[0]
        hps = pn.DOODLHPSScorer().build(prompt=PROMPT, checkpoint="HPS_v2.1_compressed.pt",
                                        architecture=files["arch"], goal=goal, target=target,
                                        precision="fp32")[0]
        ir = pn.DOODLImageRewardScorer().build(prompt=PROMPT, checkpoint="ImageReward.pt", goal=goal,
                                               target=target, precision="fp32")[0]
    return pick, hps, ir


def test_nodes_are_documented_and_registered(pn):
    from doodl_nodes.nodes import NODE_CLASS_MAPPINGS

    assert set(pn.NODE_CLASS_MAPPINGS) == {"DOODLPickScoreScorer", "DOODLHPSScorer",
                                           "DOODLImageRewardScorer"}
    assert set(pn.NODE_DISPLAY_NAME_MAPPINGS) == set(pn.NODE_CLASS_MAPPINGS)
    for name, cls in pn.NODE_CLASS_MAPPINGS.items():
        assert NODE_CLASS_MAPPINGS[name] is cls
        assert cls.CATEGORY == "DOODL/scorers" and cls.RETURN_TYPES == ("DOODL_SCORER",)
        assert len(cls.DESCRIPTION) > 80 and len(cls.OUTPUT_TOOLTIPS) == 1
        for section in cls.INPUT_TYPES().values():
            for input_name, (kind, *opts) in section.items():
                assert opts and opts[0].get("tooltip"), f"{name}.{input_name} has no tooltip"


def test_nodes_load_the_published_layouts_and_score(pn, files, models):
    from doodl_nodes.scorers.hps import HPSScorer, load_hps
    from doodl_nodes.scorers.imagereward import ImageRewardScorer, load_imagereward
    from doodl_nodes.scorers.pickscore import PickScoreScorer, load_pickscore

    hps_choices = pn.DOODLHPSScorer.INPUT_TYPES()["required"]["checkpoint"]
    assert hps_choices[0] == ["HPS_v2.1_compressed.pt", "download: HPS_v2_compressed.pt"]
    assert hps_choices[1]["default"] == "HPS_v2.1_compressed.pt"
    assert pn.DOODLImageRewardScorer.INPUT_TYPES()["required"]["checkpoint"][0] == ["ImageReward.pt"]
    assert pn.DOODLPickScoreScorer.INPUT_TYPES()["required"]["model"][0][0] == "PickScore_v1/"
    pick, hps, ir = _build(pn, files)
    again = _build(pn, files)  # cached: the same models, nothing reloaded
    for a, b in zip((pick, hps, ir), again):
        assert [id(m) for m in a.modules()] == [id(m) for m in b.modules()]
    assert not any(p.is_inference() for s in (pick, hps, ir) for m in s.modules()
                   for p in m.parameters())
    x = torch.rand(2, 3, 48, 40)
    direct = [PickScoreScorer.from_bundle(load_pickscore(files["pick"]), PROMPT),
              HPSScorer.from_bundle(load_hps(files["hps"], files["arch"]), PROMPT),
              ImageRewardScorer(load_imagereward(files["ir"] / "ImageReward.pt"), PROMPT)]
    for node_scorer, ref, key in zip((pick, hps, ir), direct, ("pickscore", "hps", "imagereward")):
        got, want = node_scorer.scores(x), ref.scores(x)
        assert list(got) == [key]
        torch.testing.assert_close(got[key], want[key])
        torch.testing.assert_close(node_scorer.loss(x, NO_CROPS), -want[key])
        _grad_check(node_scorer)
    with torch.inference_mode():  # a target, and the Combine node with ReNO's weights
        (hps_t,) = pn.DOODLHPSScorer().build(prompt=PROMPT, checkpoint="HPS_v2.1_compressed.pt",
                                             architecture=files["arch"], goal="target", target=0.3,
                                             precision="fp32")
        from doodl_nodes.nodes.scorer_nodes import DOODLCombineScorers

        (combo,) = DOODLCombineScorers().build(hps, 5.0, scorer_2=ir, weight_2=1.0,
                                               scorer_3=pick, weight_3=0.05)
    s = hps.scores(x)["hps"]
    torch.testing.assert_close(hps_t.loss(x, NO_CROPS), (s - 0.3).abs())
    with torch.no_grad():
        torch.testing.assert_close(combo.loss(x, NO_CROPS), 5.0 * hps.loss(x, NO_CROPS)
                                   + ir.loss(x, NO_CROPS) + 0.05 * pick.loss(x, NO_CROPS))
    assert set(combo.scores(x)) == {"1.hps", "2.imagereward", "3.pickscore"}


def test_scorer_models_go_under_comfy_model_management(pn, files, models):
    from doodl_nodes.bridge.scorer_models import patchers_for

    pick, hps, ir = _build(pn, files)
    patchers = patchers_for([pick, hps, ir])
    assert len(patchers) == 3
    managed = [set(map(id, p.model.parts)) for p in patchers]
    assert managed[2] == {id(ir.model)}
    assert managed[1] == {id(hps.encoder.visual)}  # the text tower ran once, at build time
    assert patchers_for([pick]) == patchers[:1]  # made once per module set


def test_missing_files_and_bad_inputs_give_clear_errors(pn, files, models):
    with torch.inference_mode():
        with pytest.raises(FileNotFoundError, match="HPS_v2_compressed.pt.*xswu/HPSv2"):
            pn.DOODLHPSScorer().build(prompt=PROMPT, checkpoint="HPS_v2_compressed.pt",
                                      architecture=files["arch"], goal="maximize", target=0.3,
                                      precision="fp32")
        with pytest.raises(ValueError, match="'prompt' is empty"):
            pn.DOODLImageRewardScorer().build(prompt="  ", checkpoint="ImageReward.pt",
                                              goal="maximize", target=0.0, precision="fp32")
        (models / "imagereward" / "med_config.json").unlink()
        with pytest.raises(Exception, match="med_config.json.*THUDM/ImageReward"):
            pn.DOODLImageRewardScorer().build(prompt=PROMPT, checkpoint="ImageReward.pt",
                                              goal="maximize", target=0.0, precision="fp32")
        with pytest.raises(Exception, match="does not match the chosen open_clip architecture"):
            pn.DOODLHPSScorer().build(prompt=PROMPT, checkpoint="HPS_v2.1_compressed.pt",
                                      architecture="ViT-B-32", goal="maximize", target=0.3,
                                      precision="fp32")


def test_download_entry_fetches_into_the_models_folder(pn, files, models, monkeypatch):
    from doodl_nodes.scorers import hps as hps_module

    name = "HPS_v2_compressed.pt"
    monkeypatch.setitem(hps_module.HPS_FILES, name, files["hps"].resolve().as_uri())
    with torch.inference_mode():
        (scorer,) = pn.DOODLHPSScorer().build(prompt=PROMPT, checkpoint=f"download: {name}",
                                              architecture=files["arch"], goal="maximize",
                                              target=0.3, precision="fp32")
    assert (models / "hps" / name).read_bytes() == files["hps"].read_bytes()
    assert "hps" in scorer.scores(torch.rand(1, 3, 32, 32))


def test_hostile_pickle_in_each_node_slot_is_refused(pn, files, models, tmp_path):
    from doodl_nodes.scorers.weights import UnsafeWeightsError

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "ran"), "w"))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload()},
               models / "hps" / "HPS_v2.1_compressed.pt")
    torch.save({"mlp.layers.0.weight": torch.zeros(1), "x": Payload()},
               models / "imagereward" / "ImageReward.pt")
    (models / "clip" / "PickScore_v1" / "model.safetensors").unlink()
    torch.save({"logit_scale": torch.zeros(()), "x": Payload()},
               models / "clip" / "PickScore_v1" / "pytorch_model.bin")
    common = dict(prompt=PROMPT, goal="maximize", target=0.0, precision="bf16")
    calls = [lambda: pn.DOODLHPSScorer().build(checkpoint="HPS_v2.1_compressed.pt",
                                               architecture=files["arch"], **common),
             lambda: pn.DOODLImageRewardScorer().build(checkpoint="ImageReward.pt", **common),
             lambda: pn.DOODLPickScoreScorer().build(model="PickScore_v1/", **common)]
    for call in calls:
        with torch.inference_mode(), pytest.raises(UnsafeWeightsError, match="refusing to load"):
            call()
        assert not (tmp_path / "ran").exists()
