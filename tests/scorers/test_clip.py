"""CLIP text and image scorers with tiny random open_clip and transformers models."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from doodl_nodes.core.crops import CropConfig, make_crops, resize_square
from doodl_nodes.core.losses import spherical_distance
from doodl_nodes.scorers.clip import CLIPImageScorer, CLIPTextScorer
from doodl_nodes.scorers.clip_models import (guess_open_clip_arch, load_clip_folder,
                                             load_open_clip)
from doodl_nodes.scorers.encoders import ImageEncoder
from doodl_nodes.scorers.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize
from doodl_nodes.scorers.weights import WeightsFileError

PROMPT = "a watercolor painting of a fox"
NO_CROPS = CropConfig(num_crops=0)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def oc_bundle(tiny_open_clip):
    arch, path, _ = tiny_open_clip
    return load_open_clip(arch, checkpoint=path)


@pytest.fixture(scope="module")
def hf_bundle(tiny_hf_folder):
    return load_clip_folder(tiny_hf_folder)


def _pixels(x):
    return normalize(x, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def test_open_clip_file_loads_the_checkpoint_exactly(tiny_open_clip, oc_bundle):
    import open_clip

    arch, _, model = tiny_open_clip
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(oc_bundle.image(x), model.encode_image(_pixels(x)))
        tokens = open_clip.get_tokenizer(arch)([PROMPT])
        torch.testing.assert_close(oc_bundle.text(PROMPT), model.encode_text(tokens)[0])
    assert all(not p.requires_grad for m in oc_bundle.image.modules() for p in m.parameters())


def test_wrong_architecture_is_refused(tmp_path, tiny_open_clip):
    import open_clip

    _, path, _ = tiny_open_clip
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 48,
                                           "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                        "layers": 2}}
    (tmp_path / "DoodlOtherTiny-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(tmp_path / "DoodlOtherTiny-test.json"))
    with pytest.raises(WeightsFileError, match="does not match the chosen open_clip architecture"):
        load_open_clip("DoodlOtherTiny-test", checkpoint=path)
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        load_open_clip("NoSuchArch-99", checkpoint=path)


def test_crops_disabled_is_a_plain_resize(oc_bundle, images):
    scorer = CLIPTextScorer.from_text(oc_bundle.image, oc_bundle.text, PROMPT)
    a = scorer.loss(images, NO_CROPS, _gen(0))
    b = scorer.loss(images, NO_CROPS, _gen(123))
    c = scorer.loss(images, CropConfig(num_crops=0, reduction="mean"))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    with torch.no_grad():
        text = oc_bundle.text(PROMPT)
        model = oc_bundle.image.visual
        direct = spherical_distance(model(_pixels(resize_square(images, 32))), text)
    torch.testing.assert_close(a, direct)
    # an image already at the model's size is not resampled at all
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scorer.loss(x, NO_CROPS),
                                   spherical_distance(model(_pixels(x)), text))


def test_crop_losses_are_reduced_per_image(oc_bundle, images):
    scorer = CLIPTextScorer.from_text(oc_bundle.image, oc_bundle.text, PROMPT)
    crops = CropConfig(num_crops=5, cut_power=0.5)
    with torch.no_grad():
        per_crop = spherical_distance(oc_bundle.image(make_crops(images, 32, 5, 0.5, _gen(7))),
                                      oc_bundle.text(PROMPT)).reshape(5, 2)
    torch.testing.assert_close(scorer.loss(images, crops, _gen(7)), per_crop.amin(0))
    mean = CropConfig(num_crops=5, cut_power=0.5, reduction="mean")
    torch.testing.assert_close(scorer.loss(images, mean, _gen(7)), per_crop.mean(0))


@pytest.mark.parametrize("which", ["open_clip", "transformers"])
def test_gradient_reaches_pixels_and_descent_lowers_loss(which, oc_bundle, hf_bundle, images):
    bundle = oc_bundle if which == "open_clip" else hf_bundle
    scorer = CLIPTextScorer.from_text(bundle.image, bundle.text, PROMPT)
    crops = CropConfig(num_crops=4, cut_power=0.3)
    x = images.clone().requires_grad_(True)
    first = scorer.loss(x, crops, _gen(3))
    assert first.shape == (2,) and first.dtype == torch.float32
    first.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad
               for m in scorer.modules() for p in m.parameters())
    for _ in range(15):  # normalized gradient descent on the pixels, fixed crops
        x.grad = None
        scorer.loss(x, crops, _gen(3)).sum().backward()
        with torch.no_grad():
            x -= 0.02 * x.grad / x.grad.abs().max()
    last = scorer.loss(x, crops, _gen(3))
    assert (last < first - 1e-3).all(), (first, last)


def test_transformers_folder_matches_clipmodel_forward(tiny_hf_folder, hf_bundle):
    import open_clip
    import transformers

    model = transformers.CLIPModel.from_pretrained(str(tiny_hf_folder)).eval()
    x = torch.rand(2, 3, 32, 32)
    ids = open_clip.tokenize([PROMPT])
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=_pixels(x))
        torch.testing.assert_close(F.normalize(hf_bundle.image(x), dim=-1), out.image_embeds)
        torch.testing.assert_close(F.normalize(hf_bundle.text(PROMPT), dim=-1),
                                   out.text_embeds[0])


def test_open_clip_bpe_fallback_equals_hf_clip_tokenizer(tmp_path):
    """Without tokenizer files a transformers folder uses open_clip's BPE: same ids as CLIP's."""
    import transformers
    from open_clip.tokenizer import SimpleTokenizer, bytes_to_unicode, default_bpe
    import gzip

    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    hf = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    ours = SimpleTokenizer(context_length=77)([PROMPT])[0]
    theirs = hf(PROMPT)["input_ids"]
    assert ours[:len(theirs)].tolist() == theirs and ours[len(theirs):].eq(0).all()


def test_text_scorer_checks_dimensions(oc_bundle):
    with pytest.raises(ValueError, match="same CLIP model"):
        CLIPTextScorer(oc_bundle.image, torch.zeros(1280))
    with pytest.raises(ValueError, match="prompt is empty"):
        oc_bundle.text("   ")


def test_scores_report_cosine_similarity(oc_bundle, images):
    scorer = CLIPTextScorer.from_text(oc_bundle.image, oc_bundle.text, PROMPT)
    scores = scorer.scores(images)
    with torch.no_grad():
        expected = F.cosine_similarity(oc_bundle.image(images), oc_bundle.text(PROMPT)[None])
    torch.testing.assert_close(scores["clip_cosine"], expected)
    assert scores["spherical_distance"].shape == (2,)


class _HalfSize(ImageEncoder):
    """A 16 px encoder with different statistics, to mix input sizes in an ensemble."""

    def __init__(self):
        super().__init__(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 6, "half")
        self.proj = torch.nn.Linear(3 * 4 * 4, 6).requires_grad_(False)

    def encode_pixels(self, px):
        return self.proj(F.adaptive_avg_pool2d(px, 4).flatten(1))

    def modules(self):
        return [self.proj]


def test_image_scorer_targets_and_weighted_ensemble(oc_bundle, hf_bundle, images):
    refs = torch.rand(3, 3, 40, 56)
    encoders = [oc_bundle.image, hf_bundle.image, _HalfSize()]
    weights = [0.5, 0.25, 0.25]
    ens = CLIPImageScorer(encoders, weights, reference_images=refs)
    for enc, target in zip(encoders, ens.targets):
        with torch.no_grad():
            expected = F.normalize(F.normalize(enc(refs), dim=-1).mean(0), dim=-1)
        torch.testing.assert_close(target, expected)
    crops = CropConfig(num_crops=3, cut_power=0.4)
    got = ens.loss(images, crops, _gen(5))
    with torch.no_grad():
        px32 = make_crops(images, 32, 3, 0.4, _gen(5))
        parts = []
        for enc, target in zip(encoders, ens.targets):
            px = px32 if enc.image_size == 32 else resize_square(px32, enc.image_size)
            parts.append(spherical_distance(enc(px), target).reshape(3, 2).amin(0))
    expected = sum(w * p for w, p in zip(weights, parts)) / sum(weights)
    torch.testing.assert_close(got, expected)
    x = images.clone().requires_grad_(True)
    ens.loss(x, crops, _gen(5)).sum().backward()
    assert x.grad.abs().sum() > 0
    scores = ens.scores(images)
    assert set(scores) == {"clip_image_cosine_1", "clip_image_cosine_2", "clip_image_cosine_3",
                           "clip_image_cosine"}
    assert all(v.shape == (2,) for v in scores.values())


def test_image_scorer_loss_is_zero_on_its_reference(oc_bundle):
    ref = torch.rand(1, 3, 32, 32)
    scorer = CLIPImageScorer([oc_bundle.image], [1.0], reference_images=ref)
    assert scorer.loss(ref, NO_CROPS).item() < 1e-6
    assert scorer.loss(torch.rand(1, 3, 32, 32), NO_CROPS).item() > 1e-3


def test_bf16_models_keep_float32_losses_and_grads(tiny_open_clip, images):
    arch, path, _ = tiny_open_clip
    bundle = load_open_clip(arch, checkpoint=path, dtype="bf16")
    assert next(bundle.image.visual.parameters()).dtype == torch.bfloat16
    scorer = CLIPTextScorer.from_text(bundle.image, bundle.text, PROMPT).to("cpu")
    x = images.clone().requires_grad_(True)
    loss = scorer.loss(x, CropConfig(num_crops=2), _gen(1))
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert x.grad.dtype == torch.float32 and x.grad.abs().sum() > 0


def test_architecture_guess_from_file_names():
    assert guess_open_clip_arch("open_clip_ViT-B-32_laion2b.safetensors") == "ViT-B-32"
    assert guess_open_clip_arch("vit_l_14_quickgelu_openai.pt") == "ViT-L-14-quickgelu"
    assert guess_open_clip_arch("my_model.safetensors") is None



def test_open_clip_folder_with_its_config(tmp_path, tiny_open_clip):
    """A folder laid out like a Hugging Face laion/CLIP-* repository (open_clip_config.json)."""
    import open_clip

    arch, ckpt, model = tiny_open_clip
    folder = tmp_path / "tiny-open-clip"
    folder.mkdir()
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": open_clip.get_model_config(arch),
         "preprocess_cfg": {"mean": mean, "std": std}}))
    with pytest.raises(WeightsFileError, match="no weights file"):
        load_clip_folder(folder)
    (folder / "open_clip_model.safetensors").write_bytes(ckpt.read_bytes())
    bundle = load_clip_folder(folder)
    assert bundle.image.mean == tuple(mean) and bundle.image.std == tuple(std)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(bundle.image(x), model.encode_image(normalize(x, mean, std)))
        tokens = open_clip.get_tokenizer(arch)([PROMPT])
        torch.testing.assert_close(bundle.text(PROMPT), model.encode_text(tokens)[0])
