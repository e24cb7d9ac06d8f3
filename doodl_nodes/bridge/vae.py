"""Differentiable VAE decoding (and plain encoding) for ComfyUI VAE objects.

``VAE.decode`` is not usable on the gradient path: it clamps, moves the result to the CPU, and on
out-of-memory falls back to tiled decoding under ``torch.inference_mode()``, silently dropping the
gradient. Here we call the network itself: ``first_stage_model.decode(latent_format.process_out(x0))``
and map ``[-1, 1]`` to ``[0, 1]``, clamped with a straight-through gradient (the forward value is
clamped like the released DOODL code's, but saturated pixels keep their gradient, so a scorer can
still pull an over-exposed region back instead of seeing zero gradient there). Optional activation checkpointing of the decoder's blocks trades one
extra decoder forward for most of its activation memory at high resolution.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from ..core.checkpointing import checkpointed_modules

__all__ = ["LatentMismatchError", "check_vae_matches", "decode_differentiable", "decoder_checkpointing"]


class LatentMismatchError(ValueError):
    """The VAE, the model and the latent disagree on the latent format."""


def check_vae_matches(vae, latent_format, what: str = "vae") -> None:
    """Refuse a VAE whose latent channels differ from the model's latent format."""
    want = getattr(latent_format, "latent_channels", None)
    have = getattr(vae, "latent_channels", None)
    if want is not None and have is not None and want != have:
        raise LatentMismatchError(
            f"The {what} input makes {have}-channel latents but the model works on {want}-channel "
            f"latents ({type(latent_format).__name__}). Load the VAE that belongs to this model "
            "(for example the checkpoint's own VAE output).")
    if getattr(vae, "latent_dim", 2) != 2:
        raise LatentMismatchError(f"The {what} input is a video/audio VAE; DOODL supports image VAEs only.")


def _checkpoint_targets(decoder: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules the decoder's ``forward`` calls one after the other: ``mid.block_1``,
    ``mid.attn_1``, ``mid.block_2``, every ``up[i].block[j]`` / ``up[i].attn[j]`` and the
    ``up[i].upsample`` layers (ComfyUI's ``Decoder.forward`` calls these, never ``mid`` or a
    ``ModuleList`` itself: patching those would checkpoint nothing)."""
    targets: list[torch.nn.Module] = []

    def add(container: torch.nn.Module) -> None:
        for child in container.children():
            if isinstance(child, torch.nn.ModuleList):
                targets.extend(m for m in child if any(True for _ in m.parameters()))
            elif any(True for _ in child.parameters()):
                targets.append(child)

    mid = getattr(decoder, "mid", None)
    if isinstance(mid, torch.nn.Module):
        add(mid)
    up = getattr(decoder, "up", None)
    if isinstance(up, torch.nn.ModuleList):
        for level in up:
            add(level)
    if not targets:  # unknown decoder layout: checkpoint its top-level children
        targets = [m for m in decoder.children() if any(True for _ in m.parameters())]
    return targets


@contextlib.contextmanager
def decoder_checkpointing(vae, enabled: bool = True) -> Iterator[None]:
    """Within the context, the decoder's layers run under ``torch.utils.checkpoint`` on passes that
    build a graph."""
    decoder = getattr(vae.first_stage_model, "decoder", None)
    targets = _checkpoint_targets(decoder) if enabled and decoder is not None else []
    with checkpointed_modules(targets):
        yield


CLAMPS = ("straight_through", "hard", "none")


def decode_differentiable(vae, latent_format, x0: torch.Tensor, *, checkpoint: bool = False,
                          clamp: str = "straight_through") -> torch.Tensor:
    """Model-space latents ``(B, C, h, w)`` -> images ``(B, 3, H, W)`` float32 in [0, 1], with grad.

    ``clamp``: "straight_through" (clamped values, identity gradient; the default), "hard" (plain
    clamp, zero gradient where saturated, as the released code) or "none" (the raw decoder output,
    whose gradient is the exact derivative). Call inside ``torch.inference_mode(False)`` with the
    VAE loaded and made autograd-safe.
    """
    if clamp not in CLAMPS:
        raise ValueError(f"clamp must be one of {CLAMPS}, got {clamp!r}")
    model = vae.first_stage_model
    device = next(model.parameters()).device
    lat = latent_format.process_out(x0.to(torch.float32)).to(device=device, dtype=vae.vae_dtype)
    with decoder_checkpointing(vae, checkpoint):
        img = model.decode(lat)
    img = img.float()
    if img.dim() == 5:  # (B, C, T, H, W) from 3-D-capable decoders with one frame
        img = img[:, :, 0]
    img = (img + 1.0) / 2.0
    if clamp == "hard":
        return img.clamp(0.0, 1.0)
    if clamp == "straight_through":
        return img + (img.clamp(0.0, 1.0) - img).detach()
    return img
