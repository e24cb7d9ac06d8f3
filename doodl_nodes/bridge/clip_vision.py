"""ComfyUI ``CLIP_VISION`` and ``CLIP`` objects as inputs of the (ComfyUI-free) scorers.

``ClipVisionModel.encode_image`` is not differentiable (``clip_preprocess`` rounds to 8 bits) and
moves its outputs to the CPU (docs/maintainers/comfyui-internals.md §4.1). Packs that need the embedding call the model directly::

    clip_vision.model(pixel_values=px, intermediate_output=-2)[2]     # image_embeds

but that call cannot be backpropagated either: ComfyUI's ``CLIPLayer.forward`` adds the attention
and MLP residuals in place (``x += ...``) into a tensor its LayerNorm saved for backward, so
``backward()`` fails with "modified by an inplace operation" (tested in tests/scorers). So
:class:`ComfyCLIPVisionEncoder` runs the *same submodules in the same order* with out-of-place
residual adds (:func:`clip_vision_embeds`; equal to the direct call, also tested), after its own
differentiable bicubic-antialias resize + center crop + normalize (the model config's mean/std,
see ``scorers.encoders.ImageEncoder``). The weights stay ComfyUI's: ``comfy_models()``
hands the ModelPatcher to the bridge for loading, ``to()`` never moves them, and every
differentiable call first runs ``make_autograd_safe`` (cheap once done; a later inference-mode
reload by another node brings the inference-tensor trap back, so it is checked on every call).

:func:`comfy_clip_pooled_embedding` turns an SDXL/SD3 ``CLIP`` plus text into clip_g's projected
pooled embedding (1280-d), which lives in the same space as ``clip_vision_g`` (OpenCLIP ViT-bigG).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..scorers.base import plain_tensor
from ..scorers.encoders import ImageEncoder
from .autograd import make_autograd_safe

__all__ = ["ComfyCLIPVisionEncoder", "clip_vision_embeds", "comfy_clip_pooled_embedding",
           "CLIP_G_DIM"]

CLIP_G_DIM = 1280
CLIP_L_DIM = 768


class ComfyCLIPVisionEncoder(ImageEncoder):
    """A differentiable image encoder over a ComfyUI ``ClipVisionModel`` (CLIP ViT models only)."""

    managed = True

    def __init__(self, clip_vision, label: Optional[str] = None):
        model = getattr(clip_vision, "model", None)
        if model is None or not hasattr(clip_vision, "patcher"):
            raise TypeError(f"expected a ComfyUI CLIP_VISION object (Load CLIP Vision), got "
                            f"{type(clip_vision).__name__}")
        projection = getattr(model, "visual_projection", None)
        if not isinstance(projection, torch.nn.Module) or not hasattr(projection, "weight"):
            raise ValueError(
                "this CLIP_VISION model has no CLIP projection head (SigLIP and DINOv2 image "
                "encoders do not embed images in a CLIP text-image space); load a CLIP ViT "
                "clip_vision file such as clip_vision_g.safetensors or a ViT-L/14 one")
        embed_dim = projection.weight.shape[0]
        super().__init__(getattr(clip_vision, "image_size", 224),
                         getattr(clip_vision, "image_mean", None) or (0.48145466, 0.4578275,
                                                                       0.40821073),
                         getattr(clip_vision, "image_std", None) or (0.26862954, 0.26130258,
                                                                     0.27577711),
                         embed_dim, label or f"CLIP_VISION {embed_dim}-d")
        self.clip_vision = clip_vision

    @property
    def device(self) -> torch.device:
        return torch.device(self.clip_vision.load_device)

    def load(self) -> "ComfyCLIPVisionEncoder":
        """Load the model on its device through ComfyUI and make its weights autograd-safe."""
        import comfy.model_management

        comfy.model_management.load_models_gpu([self.clip_vision.patcher])
        make_autograd_safe(self.clip_vision.model)
        return self

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        model = self.clip_vision.model
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            make_autograd_safe(model)
        # fp32 input, as encode_image passes: comfy's manual_cast ops cast the weights to it.
        px = pixels.to(device=self.device, dtype=torch.float32)
        return clip_vision_embeds(model, px)

    def modules(self) -> list[torch.nn.Module]:
        return [self.clip_vision.model]

    def comfy_models(self) -> list:
        return [self.clip_vision.patcher]


def clip_vision_embeds(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """``model(pixel_values=..., intermediate_output=-2)[2]`` with out-of-place residual adds.

    ``model`` is ComfyUI's ``CLIPVisionModelProjection`` (CLIP ViT: class token, pre-LayerNorm,
    post-LayerNorm on the class token, projection). Same submodules, same order, same attention
    function as ``comfy.clip_model.CLIPEncoder`` picks; only ``x += f(x)`` becomes ``x = x + f(x)``.
    """
    from comfy.ldm.modules.attention import optimized_attention_for_device

    vision = getattr(model, "vision_model", None)
    layers = getattr(getattr(vision, "encoder", None), "layers", None)
    if layers is None or getattr(vision, "output_layernorm", False) \
            or getattr(getattr(vision, "embeddings", None), "class_embedding", None) is None:
        raise ValueError("unsupported CLIP_VISION model: expected a CLIP ViT (class token, "
                         "projection head) as ComfyUI's clip_vision_*.safetensors loads")
    x = vision.embeddings(pixel_values)
    x = vision.pre_layrnorm(x)
    attention = optimized_attention_for_device(x.device, mask=False, small_input=True)
    for layer in layers:
        x = x + layer.self_attn(layer.layer_norm1(x), None, attention)
        x = x + layer.mlp(layer.layer_norm2(x))
    return model.visual_projection(vision.post_layernorm(x[:, 0, :]))


def comfy_clip_pooled_embedding(clip, text: str) -> torch.Tensor:
    """clip_g's projected pooled text embedding ``(D,)`` (float32, a normal tensor).

    Accepts ComfyUI CLIP objects that contain clip_g (SDXL base/refiner, SD3): for SDXL the pooled
    output *is* clip_g's; SD3 concatenates clip_l (768) and clip_g (1280), so the clip_g part is
    taken. SD1.x CLIP is refused: its pooled output is clip_l's *unprojected* pooled state, which
    is not in CLIP's joint text-image space.
    """
    if clip is None:
        raise ValueError("connect a CLIP (SDXL checkpoint's CLIP output) to use ComfyUI CLIP text")
    cond_model = getattr(clip, "cond_stage_model", None)
    if getattr(cond_model, "clip_g", None) is None:
        raise ValueError(
            "the connected CLIP has no clip_g text encoder; only SDXL/SD3 CLIP gives a projected "
            "pooled embedding in CLIP's text-image space (clip_g, paired with clip_vision_g). "
            "For other models use an open_clip or transformers CLIP model file instead")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the prompt is empty: give the text the image should match")
    with torch.inference_mode(False), torch.no_grad():
        _, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    if pooled is None:
        raise ValueError("the connected CLIP returned no pooled output")
    pooled = plain_tensor(pooled).reshape(-1)
    has_l = getattr(cond_model, "clip_l", None) is not None
    if has_l and pooled.numel() == CLIP_L_DIM + CLIP_G_DIM:
        pooled = pooled[CLIP_L_DIM:]  # SD3: cat(clip_l pooled, clip_g pooled)
    return pooled
