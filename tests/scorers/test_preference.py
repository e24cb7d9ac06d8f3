"""PickScore, HPSv2 and ImageReward scorers against independent re-computations of the published
formulas, on random-weight models written in the published file layouts (``preference_files``).

The references never use the pack's modules: PickScore through transformers' own ``CLIPModel``
(its own loader) and ``get_*_features``; HPS through open_clip's model (``encode_image``/
``encode_text`` with ``normalize=True``, as ``hpsv2`` scores) and torchvision's tensor resize +
pad (``ResizeMaxSize``); ImageReward as a functional forward written from the checkpoint's raw
tensors (F.linear / F.layer_norm / explicit softmax attention, BERT's -10000 padding mask), with
transformers' ``BertTokenizer`` for the ids. Scores and pixel gradients must agree.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from doodl_nodes.core.crops import CropConfig
from doodl_nodes.scorers.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from tests.scorers import preference_files as pf

PROMPT = "a small red fox sitting on a blue book"
NO_CROPS = CropConfig(num_crops=0)
MEAN = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)


def _tv_resize_center_crop(x, size):
    """torchvision's Resize(size, BICUBIC) + CenterCrop(size) on a float tensor (antialiased)."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    x = TF.resize(x, size, InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(x, [size, size])


def _grad_pair(fn_a, fn_b, x):
    """Values and input gradients of two scalar-per-image functions on the same input."""
    out = []
    for fn in (fn_a, fn_b):
        xi = x.clone().requires_grad_(True)
        y = fn(xi)
        y.sum().backward()
        out.append((y.detach(), xi.grad))
    return out


def _check_close(ours, ref, what):
    (ya, ga), (yb, gb) = ours, ref
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5, msg=f"{what}: score")
    assert torch.isfinite(ga).all() and ga.abs().sum() > 0, f"{what}: gradient"
    scale = gb.abs().max()
    torch.testing.assert_close(ga / scale, gb / scale, rtol=1e-4, atol=1e-5, msg=f"{what}: grad")


@pytest.fixture
def image():
    torch.manual_seed(3)
    return torch.rand(2, 3, 56, 44)  # not square: the models' own resize/crop/pad is exercised


# ----------------------------------------------------------------------------- PickScore


@pytest.fixture(scope="module")
def pickscore_folder(tmp_path_factory):
    return pf.write_hf_clip(tmp_path_factory.mktemp("pick") / "PickScore_v1", seed=1)


def test_pickscore_matches_the_published_formula(pickscore_folder, image):
    import transformers
    from open_clip.tokenizer import SimpleTokenizer

    from doodl_nodes.scorers.pickscore import PickScoreScorer, load_pickscore

    scorer = PickScoreScorer.from_bundle(load_pickscore(pickscore_folder), PROMPT)
    model = transformers.CLIPModel.from_pretrained(str(pickscore_folder)).eval()
    model.requires_grad_(False)
    size = model.config.vision_config.image_size

    def features(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    with torch.no_grad():
        ids = SimpleTokenizer(context_length=77)([PROMPT])
        text = features(model.get_text_features(input_ids=ids))
        text = text / text.norm(dim=-1, keepdim=True)

    def reference(x):
        pixels = (_tv_resize_center_crop(x, size) - MEAN) / STD
        emb = features(model.get_image_features(pixel_values=pixels))
        emb = emb / emb.norm(dim=-1, keepdim=True)
        return model.logit_scale.exp() * (emb @ text.T)[:, 0]

    assert scorer.logit_scale == pytest.approx(100.0, rel=1e-4)
    ours, ref = _grad_pair(lambda x: -scorer.loss(x, NO_CROPS), reference, image)
    _check_close(ours, ref, "PickScore")
    torch.testing.assert_close(scorer.scores(image)["pickscore"], ref[0])
    # a target turns the loss into |score - target|
    target = PickScoreScorer.from_bundle(load_pickscore(pickscore_folder), PROMPT, target=30.0)
    torch.testing.assert_close(target.loss(image, NO_CROPS), (ref[0] - 30.0).abs())


# ----------------------------------------------------------------------------- HPS


@pytest.fixture(scope="module")
def hps_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("hps")
    arch = pf.register_tiny_hps(root)
    return arch, pf.write_hps(root / "HPS_v2.1_compressed.pt", arch, seed=2)


def _resize_max_size(x, size):
    """hpsv2's ResizeMaxSize on a float tensor: longest side to ``size``, zero padding."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    h, w = x.shape[-2:]
    scale = size / float(max(h, w))
    new = [round(h * scale), round(w * scale)]
    x = TF.resize(x, new, InterpolationMode.BICUBIC, antialias=True)
    ph, pw = size - new[0], size - new[1]
    return TF.pad(x, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)


def test_hps_matches_hpsv2(hps_file, image):
    import open_clip

    from doodl_nodes.scorers.hps import HPSScorer, load_hps

    arch, path = hps_file
    scorer = HPSScorer.from_bundle(load_hps(path, arch), PROMPT)
    model = open_clip.create_model(arch, pretrained=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    model.eval().requires_grad_(False)
    size = model.visual.image_size[0]
    with torch.no_grad():
        text = model.encode_text(open_clip.get_tokenizer(arch)([PROMPT]), normalize=True)

    def reference(x):
        emb = model.encode_image((_resize_max_size(x, size) - MEAN) / STD, normalize=True)
        return torch.diagonal(emb @ text.T.expand(-1, emb.shape[0]))

    ours, ref = _grad_pair(lambda x: -scorer.loss(x, NO_CROPS), reference, image)
    _check_close(ours, ref, "HPS")
    assert (ref[0].abs() <= 1).all()  # a cosine
    torch.testing.assert_close(scorer.scores(image)["hps"], ref[0])


# ----------------------------------------------------------------------------- ImageReward


@pytest.fixture(scope="module")
def imagereward_file(tmp_path_factory):
    return pf.write_imagereward(tmp_path_factory.mktemp("ir") / "imagereward", seed=4)


def _ln(x, sd, name, eps):
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps)


def _lin(x, sd, name):
    return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])


def _attention(q, k, v, heads, mask=None):
    n, lq, c = q.shape
    q, k, v = (t.reshape(n, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, lq, c)


def reference_imagereward(sd, med, pixels, ids, mask):
    """The published forward written from the raw checkpoint tensors (``blip.*``, ``mlp.*``)."""
    v, t = "blip.visual_encoder", "blip.text_encoder"
    w = sd[f"{v}.cls_token"].shape[-1]
    patch = sd[f"{v}.patch_embed.proj.weight"]
    x = F.conv2d(pixels, patch, sd[f"{v}.patch_embed.proj.bias"], stride=patch.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[f"{v}.cls_token"].expand(x.shape[0], -1, -1), x], 1) + sd[f"{v}.pos_embed"]
    depth = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith(f"{v}.blocks."))
    for i in range(depth):
        b = f"{v}.blocks.{i}"
        q, k, vv = _lin(_ln(x, sd, f"{b}.norm1", 1e-6), sd, f"{b}.attn.qkv").chunk(3, dim=-1)
        x = x + _lin(_attention(q, k, vv, w // 64), sd, f"{b}.attn.proj")
        y = _ln(x, sd, f"{b}.norm2", 1e-6)
        x = x + _lin(F.gelu(_lin(y, sd, f"{b}.mlp.fc1")), sd, f"{b}.mlp.fc2")
    image_tokens = _ln(x, sd, f"{v}.norm", 1e-6)
    n, eps, heads = image_tokens.shape[0], med["layer_norm_eps"], med["num_attention_heads"]
    ids, mask = ids.expand(n, -1), mask.expand(n, -1)
    h = sd[f"{t}.embeddings.word_embeddings.weight"][ids] + \
        sd[f"{t}.embeddings.position_embeddings.weight"][:ids.shape[1]]
    h = _ln(h, sd, f"{t}.embeddings.LayerNorm", eps)
    ext = (1.0 - mask[:, None, None, :].float()) * -10000.0
    for i in range(med["num_hidden_layers"]):
        lay = f"{t}.encoder.layer.{i}"
        for part, ctx, m in (("attention", None, ext), ("crossattention", image_tokens, None)):
            ctx = h if ctx is None else ctx
            a = _attention(_lin(h, sd, f"{lay}.{part}.self.query"), _lin(ctx, sd, f"{lay}.{part}.self.key"),
                           _lin(ctx, sd, f"{lay}.{part}.self.value"), heads, m)
            h = _ln(_lin(a, sd, f"{lay}.{part}.output.dense") + h, sd, f"{lay}.{part}.output.LayerNorm", eps)
        inter = F.gelu(_lin(h, sd, f"{lay}.intermediate.dense"))
        h = _ln(_lin(inter, sd, f"{lay}.output.dense") + h, sd, f"{lay}.output.LayerNorm", eps)
    r = h[:, 0]
    for i in (0, 2, 4, 6, 7):  # dropout between (eval), no activations
        r = _lin(r, sd, f"mlp.layers.{i}")
    return (r[:, 0] - 0.16717362830052426) / 1.0333394966054072


def test_imagereward_matches_the_published_formula(imagereward_file, image):
    import json

    from transformers import BertTokenizer

    from doodl_nodes.scorers.imagereward import ImageRewardScorer, load_imagereward

    bundle = load_imagereward(imagereward_file)
    scorer = ImageRewardScorer(bundle, PROMPT)
    folder = imagereward_file.parent
    sd = {k: v.float() for k, v in torch.load(imagereward_file, weights_only=True).items()}
    med = json.loads((folder / "med_config.json").read_text())
    assert sd["blip.visual_encoder.cls_token"].shape[-1] != med["hidden_size"]  # BLIP widths differ
    tok = BertTokenizer.from_pretrained(str(folder))
    enc = tok(PROMPT, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    size = bundle.model.visual_encoder.image_size

    def reference(x):
        pixels = (_tv_resize_center_crop(x, size) - MEAN) / STD
        return reference_imagereward(sd, med, pixels, enc.input_ids, enc.attention_mask)

    ours, ref = _grad_pair(lambda x: -scorer.loss(x, NO_CROPS), reference, image)
    _check_close(ours, ref, "ImageReward")
    torch.testing.assert_close(scorer.scores(image)["imagereward"], ref[0])
    assert torch.equal(scorer.ids, enc.input_ids) and torch.equal(scorer.mask, enc.attention_mask)


PROMPTS = ["A small red fox, sitting on the blue book!", "Café: painting of a Bear (photo)",
           "a cats dogs birds reds unknownword xyz", "  extra   spaces\tand\nnewlines ",
           "the " * 40 + "fox", "北京 sun", "don't stop; a-b/c"]


def test_wordpiece_tokenizer_matches_bert_tokenizer(imagereward_file):
    from transformers import BertTokenizer

    from doodl_nodes.scorers.imagereward import WordPieceTokenizer

    ours = WordPieceTokenizer(imagereward_file.parent / "vocab.txt")
    ref = BertTokenizer.from_pretrained(str(imagereward_file.parent))
    for prompt in PROMPTS:
        enc = ref(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        ids, mask = ours(prompt)
        assert ids.tolist() == enc.input_ids.tolist(), prompt
        assert mask.tolist() == enc.attention_mask.tolist(), prompt


# ----------------------------------------------------------------------------- all three


@pytest.fixture
def scorers(pickscore_folder, hps_file, imagereward_file):
    from doodl_nodes.scorers.hps import HPSScorer, load_hps
    from doodl_nodes.scorers.imagereward import ImageRewardScorer, load_imagereward
    from doodl_nodes.scorers.pickscore import PickScoreScorer, load_pickscore

    return [PickScoreScorer.from_bundle(load_pickscore(pickscore_folder), PROMPT),
            HPSScorer.from_bundle(load_hps(hps_file[1], hps_file[0]), PROMPT),
            ImageRewardScorer(load_imagereward(imagereward_file), PROMPT)]


@pytest.mark.parametrize("reduction", ["auto", "min"])
def test_crops_give_finite_nonzero_gradients(scorers, image, reduction):
    from doodl_nodes.scorers.combine import CombinedScorer

    crops = CropConfig(num_crops=3, reduction=reduction)
    for scorer in scorers + [CombinedScorer(scorers, [5.0, 1.0, 0.05])]:
        x = image.clone().requires_grad_(True)
        loss = scorer.loss(x, crops, torch.Generator().manual_seed(0))
        loss.sum().backward()
        assert loss.shape == (2,) and torch.isfinite(loss).all(), scorer.name
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, scorer.name
        assert not any(p.grad is not None for m in scorer.modules() for p in m.parameters())
    with torch.no_grad():  # "auto" is the mean of the per-crop losses
        s = scorers[0]
        g = torch.Generator().manual_seed(0)
        from doodl_nodes.core.crops import make_crops
        pixels = make_crops(image, s.input_size, 3, 0.3, torch.Generator().manual_seed(0))
        want = s.crop_loss(pixels).reshape(3, 2).mean(0)
        torch.testing.assert_close(s.loss(image, CropConfig(num_crops=3), g), want)


def test_bf16_weights_score_close_to_fp32(pickscore_folder, hps_file, imagereward_file, image):
    from doodl_nodes.scorers.hps import HPSScorer, load_hps
    from doodl_nodes.scorers.imagereward import ImageRewardScorer, load_imagereward

    for make in (lambda d: HPSScorer.from_bundle(load_hps(hps_file[1], hps_file[0], dtype=d), PROMPT),
                 lambda d: ImageRewardScorer(load_imagereward(imagereward_file, dtype=d), PROMPT)):
        a, b = make("fp32"), make("bf16")
        sa, sb = (next(iter(s.scores(image).values())) for s in (a, b))
        assert sb.dtype == torch.float32 and torch.allclose(sa, sb, atol=0.05, rtol=0.05), (sa, sb)


# ----------------------------------------------------------------------------- PIL vs tensors


def _photo(size):
    """ComfyUI's input/example.png when present (a real photo), else a synthetic 8-bit image."""
    from PIL import Image

    from tests.comfyui_env import comfyui_root

    root = comfyui_root()
    src = root / "input" / "example.png" if root else None
    if src is not None and src.is_file():
        img = Image.open(src).convert("RGB")
    else:
        yy, xx = np.mgrid[0:512, 0:512] / 511.0
        arr = np.stack([np.sin(9 * xx) * 0.5 + 0.5, yy, (xx * yy > 0.25) * 1.0], -1)
        img = Image.fromarray((arr * 255).round().astype(np.uint8))
    return img.resize(size, Image.LANCZOS)


PIL_SIZES = [(512, 512), (640, 480), (300, 256)]


@pytest.mark.parametrize("size", PIL_SIZES)
def test_pil_preprocessing_agrees_within_resampling_error(size):
    """The packages preprocess 8-bit PIL images (PIL's bicubic for PickScore's CLIPImageProcessor
    and ImageReward's torchvision Resize; HPS converts to a tensor first). Ours works on the float
    tensor. Measured at 224 px, in [0, 1] pixel units, for the PIL paths (the bicubic kernels differ:
    PIL's a=-0.5 on 8-bit values, torch's a=-0.75): on ComfyUI's example.png, mean |difference|
    2.4e-4..2.8e-4, max 0.076..0.080; on the synthetic fallback image 5e-4..7e-4, max < 0.06. HPS:
    0 (the package resizes the float tensor, as we do)."""
    import torchvision.transforms as T
    from transformers import CLIPImageProcessor

    from doodl_nodes.scorers.preference import resize_longest_pad
    from doodl_nodes.scorers.preprocess import normalize, resize_center_crop

    pil = _photo(size)
    x = torch.from_numpy(np.array(pil)).permute(2, 0, 1)[None].float() / 255
    ours = normalize(resize_center_crop(x, 224), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    pick = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                              resample=3)(images=pil, return_tensors="pt").pixel_values
    ir = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                    T.ToTensor(), T.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])(pil)[None]
    hps = _resize_max_size(T.functional.to_tensor(pil), 224)[None]
    report = {}
    for name, ref, mine in (("pickscore", pick, ours), ("imagereward", ir, ours),
                            ("hps", hps, resize_longest_pad(x, 224))):
        diff = (ref - mine).abs() * (STD if name != "hps" else 1)  # in [0, 1] pixel units
        report[name] = (float(diff.mean()), float(diff.max()))
        assert diff.mean() < 1e-3 and diff.max() < 0.15, (name, report[name])
    assert report["hps"][1] < 1e-6
    print(f"{size}: " + ", ".join(f"{k} mean {m:.2e} max {x:.3f}" for k, (m, x) in report.items()))


# ----------------------------------------------------------------------------- safety, errors


class _CreatesMarker:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _hostile(path, marker, inner):
    torch.save({**inner, "payload": _CreatesMarker(marker)}, path)


def test_hostile_pickles_are_refused_in_every_slot(tmp_path, pickscore_folder):
    import shutil

    from doodl_nodes.scorers.hps import load_hps
    from doodl_nodes.scorers.imagereward import load_imagereward
    from doodl_nodes.scorers.pickscore import load_pickscore
    from doodl_nodes.scorers.weights import UnsafeWeightsError

    marker = tmp_path / "marker"
    hps = tmp_path / "HPS_v2.1_compressed.pt"
    _hostile(hps, marker, {"state_dict": {"w": torch.zeros(1)}})
    ir = pf.write_imagereward(tmp_path / "ir")
    _hostile(ir, marker, {"blip.visual_encoder.cls_token": torch.zeros(1, 1, 8)})
    pick = tmp_path / "PickScore_v1"
    shutil.copytree(pickscore_folder, pick)
    (pick / "model.safetensors").unlink()
    _hostile(pick / "pytorch_model.bin", marker, {"logit_scale": torch.zeros(())})
    for load in (lambda: load_hps(hps, "ViT-B-32"), lambda: load_imagereward(ir),
                 lambda: load_pickscore(pick)):
        with pytest.raises(UnsafeWeightsError, match="refusing to load"):
            load()
        assert not marker.exists()


def test_missing_companion_files_and_wrong_layouts_are_named(tmp_path, imagereward_file):
    import shutil

    from doodl_nodes.scorers.imagereward import load_imagereward
    from doodl_nodes.scorers.weights import WeightsFileError

    folder = tmp_path / "ir"
    shutil.copytree(imagereward_file.parent, folder)
    (folder / "vocab.txt").unlink()
    with pytest.raises(WeightsFileError, match="vocab.txt.*THUDM/ImageReward"):
        load_imagereward(folder / "ImageReward.pt")
    wrong = tmp_path / "wrong.pt"
    torch.save({"weight": torch.zeros(1, 4)}, wrong)
    shutil.copy(imagereward_file.parent / "med_config.json", tmp_path / "med_config.json")
    shutil.copy(imagereward_file.parent / "vocab.txt", tmp_path / "vocab.txt")
    with pytest.raises(WeightsFileError, match="not an ImageReward checkpoint"):
        load_imagereward(wrong)
