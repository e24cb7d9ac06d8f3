"""Scorer nodes in-process against the real ComfyUI, run under inference mode as execution.py does.

Model files are written by the tests into a temporary folder registered through folder_paths.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from doodl_nodes.core.crops import CropConfig

pytestmark = pytest.mark.comfyui

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
LAION_L14 = SHARED / "weights" / "aesthetic" / "laion-linear" / "sa_0_4_vit_l_14_linear.pth"


@pytest.fixture
def sn():
    from tests.comfyui_env import require_comfyui

    require_comfyui()
    from doodl_nodes.nodes import scorer_nodes
    return scorer_nodes


@pytest.fixture
def pack_folders(sn, tmp_path, monkeypatch, tiny_open_clip, tiny_hf_folder):
    """models/doodl in a temp dir: a tiny open_clip file, a transformers folder, a 16-d aesthetic
    head, a WS-DAN aircraft checkpoint in the published layout."""
    import folder_paths

    from doodl_nodes.bridge import folders
    from doodl_nodes.scorers.wsdan import WSDAN

    root = tmp_path / "doodl"
    for name, sub in [("doodl", ""), ("doodl_clip", "clip"), ("doodl_aesthetic", "aesthetic"),
                      ("doodl_wsdan", "wsdan")]:
        (root / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name,
                            ([str(root / sub)], set(folders.EXTENSIONS)))
    arch, ckpt, _ = tiny_open_clip
    shutil.copy(ckpt, root / "clip" / ckpt.name)
    shutil.copytree(tiny_hf_folder, root / "clip" / "tiny-hf-clip")
    torch.manual_seed(0)
    torch.save({"weight": torch.randn(1, 16), "bias": torch.tensor([5.0])},
               root / "aesthetic" / "tiny_head.pth")
    if LAION_L14.is_file():
        shutil.copy(LAION_L14, root / "aesthetic" / LAION_L14.name)
    model = WSDAN(100)
    torch.save({"epoch": 1, "best_prec1": torch.tensor([90.0]), "center": torch.zeros(100, 4),
                "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               root / "wsdan" / "aircraft.pth.tar")
    return {"root": root, "clip_file": ckpt.name, "hf": "tiny-hf-clip/", "arch": arch}


def _grad_check(scorer, size=40):
    """As DOODLOptimize does: autograd-safe weights, then the loss outside inference mode."""
    from doodl_nodes.bridge.autograd import make_autograd_safe

    with torch.inference_mode(False), torch.enable_grad():
        make_autograd_safe(scorer.modules())
        x = torch.rand(2, 3, size, size, requires_grad=True)
        loss = scorer.loss(x, CropConfig(num_crops=2), torch.Generator().manual_seed(0))
        loss.sum().backward()
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    return loss


def test_every_node_is_documented(sn):
    assert set(sn.NODE_CLASS_MAPPINGS) == {
        "DOODLCLIPTextScorer", "DOODLCLIPImageScorer", "DOODLAestheticScorer",
        "DOODLWSDANScorer", "DOODLSymmetryScorer", "DOODLCombineScorers"}
    assert set(sn.NODE_DISPLAY_NAME_MAPPINGS) == set(sn.NODE_CLASS_MAPPINGS)
    for name, cls in sn.NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY == "DOODL/scorers" and cls.RETURN_TYPES == ("DOODL_SCORER",)
        assert cls.DESCRIPTION and len(cls.OUTPUT_TOOLTIPS) == 1
        assert callable(getattr(cls, cls.FUNCTION))
        spec = cls.INPUT_TYPES()
        for section in spec.values():
            for input_name, (kind, *opts) in section.items():
                assert opts and opts[0].get("tooltip"), f"{name}.{input_name} has no tooltip"


def test_folder_registration_merges_with_user_paths(sn, tmp_path, monkeypatch):
    import folder_paths

    from doodl_nodes.bridge import folders

    models = tmp_path / "models"
    user_base, user_aes = str(tmp_path / "user" / "doodl"), str(tmp_path / "user" / "heads")
    monkeypatch.setattr(folder_paths, "models_dir", str(models))
    fnp = folder_paths.folder_names_and_paths
    monkeypatch.setitem(fnp, "doodl", ([user_base], {".pth"}))
    monkeypatch.setitem(fnp, "doodl_aesthetic", ([user_aes], {".pt"}))
    for key in ("doodl_clip", "doodl_wsdan"):
        monkeypatch.delitem(fnp, key, raising=False)
    folders.register_folders()
    folders.register_folders()  # idempotent
    default = str(models / "doodl")
    assert fnp["doodl"][0] == [user_base, default]
    assert fnp["doodl_aesthetic"][0] == [user_aes, os.path.join(user_base, "aesthetic"),
                                         os.path.join(default, "aesthetic")]
    assert fnp["doodl_clip"][0] == [os.path.join(user_base, "clip"), os.path.join(default, "clip")]
    assert {".pt", ".safetensors", ".tar"} <= fnp["doodl_aesthetic"][1]
    assert not models.exists()  # registration creates nothing


def test_dropdowns_and_missing_file_errors(sn, pack_folders):
    from doodl_nodes.bridge import folders

    entries = folders.clip_model_list()
    assert "tiny-hf-clip/" in entries and pack_folders["clip_file"] in entries
    assert not any(e.startswith("tiny-hf-clip/") and e != "tiny-hf-clip/" for e in entries)
    text_choices = sn.DOODLCLIPTextScorer.INPUT_TYPES()["required"]["clip_model"][0]
    assert text_choices[0] == sn.COMFY_CLIP_INPUT and "tiny-hf-clip/" in text_choices
    heads = sn.DOODLAestheticScorer.INPUT_TYPES()["required"]["head"][0]
    assert "tiny_head.pth" in heads and "download: sac+logos+ava1-l14-linearMSE.pth" in heads
    assert sn.DOODLWSDANScorer.INPUT_TYPES()["required"]["checkpoint"][0] == ["aircraft.pth.tar"]
    with torch.inference_mode():
        with pytest.raises(FileNotFoundError) as info:
            sn.DOODLWSDANScorer().build("bird.pth.tar", 3, "fp32")
    message = str(info.value)
    assert "bird.pth.tar" in message and str(pack_folders["root"] / "wsdan") in message
    assert "WS_DAN_PyTorch" in message
    with torch.inference_mode(), pytest.raises(FileNotFoundError,
                                               match="gone.safetensors.*open_clip"):
        sn.DOODLCLIPTextScorer().build(prompt="a fox", clip_model="gone.safetensors", architecture="auto",
                                       precision="fp32")


def test_clip_text_node_with_files_and_cache(sn, pack_folders, tiny_open_clip):
    import open_clip

    node = sn.DOODLCLIPTextScorer()
    f = pack_folders["clip_file"]
    with torch.inference_mode():
        (a,) = node.build("a red fox", f, "auto", "fp32")
        (b,) = node.build("a blue car", f, "auto", "fp32")
        (h,) = node.build("a red fox", "tiny-hf-clip/", "auto", "fp32")
        (c,) = node.build("a red fox", f, pack_folders["arch"], "fp32")
    assert b.encoder is a.encoder  # same file: the cached model, another prompt
    assert h.encoder is not a.encoder and c.encoder is not a.encoder  # switched: reloaded
    assert not any(p.is_inference() for m in a.modules() for p in m.parameters())
    _, _, model = tiny_open_clip
    with torch.no_grad():
        text = model.encode_text(open_clip.get_tokenizer(pack_folders["arch"])(["a red fox"]))
    torch.testing.assert_close(a.target, F.normalize(text[0], dim=-1))
    assert not torch.allclose(a.target, b.target)
    for scorer in (a, h):
        _grad_check(scorer)
    with torch.inference_mode(), pytest.raises(ValueError, match="prompt"):
        node.build("  ", f, "auto", "fp32")


def test_clip_text_node_with_sdxl_clip_and_clip_vision(sn, comfy_text_clip, comfy_clip_vision):
    clip, cv = comfy_text_clip("sdxl"), comfy_clip_vision(fp32=False)
    node = sn.DOODLCLIPTextScorer()
    with torch.inference_mode():
        (scorer,) = node.build("a red fox", sn.COMFY_CLIP_INPUT, "auto", "fp32", clip=clip,
                               clip_vision=cv)
        with pytest.raises(ValueError, match="clip_vision"):
            node.build("a red fox", sn.COMFY_CLIP_INPUT, "auto", "fp32", clip=clip)
    assert scorer.comfy_models() == [cv.patcher]
    _grad_check(scorer)


def test_clip_image_node_mixes_clip_vision_and_files(sn, pack_folders, comfy_clip_vision):
    from doodl_nodes.scorers.clip_models import load_open_clip

    cv = comfy_clip_vision(fp32=False)
    refs = torch.rand(2, 40, 36, 3)  # ComfyUI IMAGE: (B, H, W, C)
    node = sn.DOODLCLIPImageScorer()
    kw = dict(model_1=sn.CLIP_VISION_INPUT, architecture_1="auto", weight_1=0.5,
              model_2=pack_folders["clip_file"], architecture_2="auto", weight_2=0.25,
              model_3=sn.NONE, architecture_3="auto", weight_3=0.25)
    with torch.inference_mode():
        (scorer,) = node.build(refs, "fp32", clip_vision_1=cv, **kw)
        with pytest.raises(ValueError, match="clip_vision_1"):
            node.build(refs, "fp32", **kw)
    assert scorer.weights == [0.5, 0.25] and len(scorer.encoders) == 2
    ckpt = pack_folders["root"] / "clip" / pack_folders["clip_file"]
    encoder = load_open_clip(pack_folders["arch"], checkpoint=ckpt).image
    with torch.no_grad():
        emb = F.normalize(encoder(refs.movedim(-1, 1)), dim=-1)
    torch.testing.assert_close(scorer.targets[1], F.normalize(emb.mean(0), dim=-1))
    _grad_check(scorer)


def test_aesthetic_node(sn, pack_folders):
    node = sn.DOODLAestheticScorer()
    f = pack_folders["clip_file"]
    with torch.inference_mode():
        (scorer,) = node.build("tiny_head.pth", f, "auto", "target", 6.5, "fp32")
        (again,) = node.build("tiny_head.pth", f, "auto", "maximize", 6.5, "fp32")
    assert scorer.target == 6.5 and again.target is None and again.head is scorer.head
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        raw = scorer.head(scorer.encoder(x))
    torch.testing.assert_close(scorer.scores(x)["aesthetic_score"], raw)
    torch.testing.assert_close(scorer.loss(x, CropConfig(num_crops=0)),
                               (raw.clamp(1, 10) - 6.5).abs())
    _grad_check(scorer)


def test_aesthetic_node_download_entry(sn, pack_folders, monkeypatch, tmp_path):
    """A "download:" entry fetches the head into the first doodl_aesthetic folder (here from a file
    URL: no network), once; the downloaded head then scores; a failed download names the folder."""
    from doodl_nodes.bridge.folders import MissingModelError
    from doodl_nodes.scorers import aesthetic

    src = tmp_path / "published" / "tiny_download_head.pth"
    src.parent.mkdir()
    torch.save({"weight": torch.randn(1, 16, generator=torch.Generator().manual_seed(3)),
                "bias": torch.tensor([4.0])}, src)
    monkeypatch.setitem(aesthetic.AESTHETIC_HEADS, src.name, (16, "tiny", src.resolve().as_uri(), "MIT"))
    node = sn.DOODLAestheticScorer()
    kw = dict(backbone=pack_folders["clip_file"], architecture="auto", goal="maximize", target=10.0,
              precision="fp32")
    dest = pack_folders["root"] / "aesthetic" / src.name
    assert not dest.exists()
    assert f"download: {src.name}" in node.INPUT_TYPES()["required"]["head"][0]
    with torch.inference_mode():
        (scorer,) = node.build(head=f"download: {src.name}", **kw)
    assert dest.read_bytes() == src.read_bytes()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scorer.scores(x)["aesthetic_score"], scorer.head(scorer.encoder(x)))
    src.unlink()  # already in the folder: not fetched again
    with torch.inference_mode():
        node.build(head=f"download: {src.name}", **kw)
    missing = tmp_path / "published" / "gone.pth"
    monkeypatch.setitem(aesthetic.AESTHETIC_HEADS, missing.name, (16, "tiny", missing.as_uri(), "MIT"))
    with torch.inference_mode(), pytest.raises(MissingModelError, match="Download it by hand"):
        node.build(head=f"download: {missing.name}", **kw)
    assert not (pack_folders["root"] / "aesthetic" / missing.name).exists()
    assert not list((pack_folders["root"] / "aesthetic").glob("*.part"))


def test_aesthetic_node_refuses_a_real_head_on_the_wrong_backbone(sn, pack_folders):
    """The real 768-d LAION head (../shared) on the 16-d test backbone: a clear error."""
    from tests.comfyui_env import unavailable

    if not LAION_L14.is_file():
        unavailable(f"the LAION head {LAION_L14} is missing (../shared beside the checkout)")
    with torch.inference_mode(), pytest.raises(ValueError, match="expects 768-d"):
        sn.DOODLAestheticScorer().build(head=LAION_L14.name, backbone=pack_folders["clip_file"],
                                        architecture="auto", goal="maximize", target=10.0, precision="fp32")


def test_wsdan_symmetry_and_combine_nodes(sn, pack_folders):
    node = sn.DOODLWSDANScorer()
    with torch.inference_mode():
        (ws,) = node.build("aircraft.pth.tar", 5, "fp32")
        (ws2,) = node.build("aircraft.pth.tar", 7, "fp32")
        with pytest.raises(ValueError, match="100 classes"):
            node.build("aircraft.pth.tar", 100, "fp32")
        (sym,) = sn.DOODLSymmetryScorer().build("left-right")
        (combo,) = sn.DOODLCombineScorers().build(ws, 0.5, scorer_2=sym, weight_2=2.0)
    assert ws2.model is ws.model and "FGVC-Aircraft" in ws.name and ws2.class_index == 7
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        probs = ws.scores(x)["class_probability"]
        assert probs.shape == (1,) and 0 < probs.item() < 1
        none = CropConfig(num_crops=0)
        torch.testing.assert_close(combo.loss(x, none),
                                   0.5 * ws.loss(x, none) + 2.0 * sym.loss(x, none))
    assert set(combo.scores(x)) >= {"1.class_probability", "2.symmetry_mse"}
