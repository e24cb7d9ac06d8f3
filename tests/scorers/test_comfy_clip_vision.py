"""ComfyUI CLIP_VISION / CLIP objects as scorer inputs (needs a real ComfyUI checkout)."""
from __future__ import annotations

import pytest
import torch

from doodl_nodes.core.crops import CropConfig
from doodl_nodes.scorers.clip import CLIPImageScorer, CLIPTextScorer
from doodl_nodes.scorers.encoders import OpenCLIPImageEncoder
from doodl_nodes.scorers.preprocess import normalize, resize_center_crop

pytestmark = pytest.mark.comfyui


def test_wrapper_matches_a_direct_call_open_clip_and_encode_image(comfy_clip_vision,
                                                                  tiny_open_clip):
    from doodl_nodes.bridge.clip_vision import ComfyCLIPVisionEncoder

    cv = comfy_clip_vision(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
    enc = ComfyCLIPVisionEncoder(cv)
    assert (enc.image_size, enc.embed_dim) == (32, 16)
    images = torch.rand(2, 3, 48, 40)
    with torch.no_grad():
        got = enc(images)
        px = normalize(resize_center_crop(images, 32), [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
        direct = cv.model(pixel_values=px, intermediate_output=-2)[2]
    torch.testing.assert_close(got, direct, rtol=0, atol=0)

    # same weights through open_clip (OpenAI mean/std): the same embedding
    cv_openai = comfy_clip_vision()
    with torch.no_grad():
        torch.testing.assert_close(ComfyCLIPVisionEncoder(cv_openai)(images),
                                   OpenCLIPImageEncoder(tiny_open_clip[2])(images),
                                   rtol=1e-4, atol=1e-5)
        # and through ComfyUI's own encode_image, for images where its 8-bit rounding and
        # resize are no-ops (already 32 px, values k/255)
        quantized = torch.randint(0, 256, (2, 3, 32, 32)).float() / 255
        ref = cv_openai.encode_image(quantized.movedim(1, -1))["image_embeds"]
        torch.testing.assert_close(ComfyCLIPVisionEncoder(cv_openai)(quantized), ref,
                                   rtol=1e-4, atol=1e-5)


def test_direct_call_cannot_backprop_but_the_wrapper_does(comfy_clip_vision):
    """ComfyUI's CLIPLayer adds residuals in place, so even with autograd-safe weights the direct
    model call fails in backward; the wrapper's out-of-place walk gives the same values and
    gradients (checked against finite differences)."""
    from doodl_nodes.bridge.autograd import make_autograd_safe
    from doodl_nodes.bridge.clip_vision import ComfyCLIPVisionEncoder, clip_vision_embeds

    cv = comfy_clip_vision(fp32=True)  # fp32 weights meet fp32 input: no per-forward cast copy
    assert any(p.is_inference() for p in cv.model.parameters())
    px = torch.rand(1, 3, 32, 32)
    with torch.inference_mode(False), torch.enable_grad():
        x = px.clone().requires_grad_(True)
        with pytest.raises(RuntimeError):  # inference-tensor weights
            cv.model(pixel_values=x, intermediate_output=-2)[2].sum().backward()
        enc = ComfyCLIPVisionEncoder(cv)
        x = px.clone().requires_grad_(True)
        out = enc(x)
        out.sum().backward()  # the wrapper made the weights autograd-safe first
        assert not any(p.is_inference() or p.requires_grad for p in cv.model.parameters())
        make_autograd_safe(cv.model)
        y = px.clone().requires_grad_(True)
        with pytest.raises(RuntimeError, match="inplace operation"):
            cv.model(pixel_values=y, intermediate_output=-2)[2].sum().backward()
        with torch.no_grad():
            torch.testing.assert_close(clip_vision_embeds(cv.model, px),
                                       cv.model(pixel_values=px, intermediate_output=-2)[2],
                                       rtol=0, atol=0)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    direction = torch.randn_like(px)
    eps = 1e-3
    with torch.no_grad():
        numeric = (enc(px + eps * direction).sum() - enc(px - eps * direction).sum()) / (2 * eps)
    torch.testing.assert_close((x.grad * direction).sum(), numeric, rtol=2e-2, atol=1e-4)


def test_image_scorer_over_a_clip_vision_model_under_comfy_modes(comfy_clip_vision):
    """Scorer built under inference mode (as a node runs), loss run outside it (as DOODL does)."""
    from doodl_nodes.bridge.autograd import make_autograd_safe
    from doodl_nodes.bridge.clip_vision import ComfyCLIPVisionEncoder

    cv = comfy_clip_vision(fp32=False)  # ComfyUI's default fp16 storage
    refs = torch.rand(2, 3, 40, 40)
    with torch.inference_mode():
        enc = ComfyCLIPVisionEncoder(cv).load()
        scorer = CLIPImageScorer([enc], [1.0], reference_images=refs)
    assert not scorer.targets[0].is_inference()
    assert scorer.comfy_models() == [cv.patcher] and scorer.owned_modules() == []
    with torch.inference_mode(False), torch.enable_grad():
        make_autograd_safe(scorer.modules())
        x = torch.rand(2, 3, 48, 48, requires_grad=True)
        loss = scorer.loss(x, CropConfig(num_crops=3), torch.Generator().manual_seed(0))
        loss.sum().backward()
    assert loss.shape == (2,) and x.grad.abs().sum() > 0
    assert scorer.to("cpu") is scorer  # never moves ComfyUI's weights; must not fail


def test_clip_vision_without_projection_is_refused(comfy_clip_vision):
    from doodl_nodes.bridge.clip_vision import ComfyCLIPVisionEncoder

    cv = comfy_clip_vision()
    del cv.model.visual_projection
    cv.model.visual_projection = lambda a: a  # what ComfyUI builds without projection_dim
    with pytest.raises(ValueError, match="no CLIP projection head"):
        ComfyCLIPVisionEncoder(cv)
    with pytest.raises(TypeError, match="CLIP_VISION"):
        ComfyCLIPVisionEncoder(object())


def test_sdxl_clip_g_pooled_text_path(comfy_text_clip, comfy_clip_vision):
    from doodl_nodes.bridge.clip_vision import ComfyCLIPVisionEncoder, comfy_clip_pooled_embedding

    clip = comfy_text_clip("sdxl")
    with torch.inference_mode():
        a = comfy_clip_pooled_embedding(clip, "a red fox")
        b = comfy_clip_pooled_embedding(clip, "a blue car")
        _, pooled = clip.encode_from_tokens(clip.tokenize("a red fox"), return_pooled=True)
    assert a.shape == (16,) and not a.is_inference() and a.dtype == torch.float32
    torch.testing.assert_close(a, pooled.float().reshape(-1))
    assert not torch.allclose(a, b)
    enc = ComfyCLIPVisionEncoder(comfy_clip_vision())
    scorer = CLIPTextScorer(enc, a, prompt="a red fox")
    x = torch.rand(1, 3, 40, 40, requires_grad=True)
    scorer.loss(x, CropConfig(num_crops=2)).sum().backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no clip_g"):
        comfy_clip_pooled_embedding(comfy_text_clip("sd1"), "a red fox")
