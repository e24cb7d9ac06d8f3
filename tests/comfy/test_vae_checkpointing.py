"""Decoder checkpointing really checkpoints: through a ComfyUI VAE, the differentiable decode with
``checkpoint=True`` keeps a fraction of the plain decode's saved activations, with bit-identical
images and gradients, and leaves the decoder as it was afterwards."""
import pytest
import torch

from tests.comfyui_env import require_comfyui

pytestmark = pytest.mark.comfyui


def _saved_bytes_and_grad(vae, latent_format, lat, checkpoint):
    from doodl_nodes.bridge.vae import decode_differentiable

    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    z = lat.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        img = decode_differentiable(vae, latent_format, z, checkpoint=checkpoint, clamp="none")
    w = torch.linspace(-1, 1, img.numel()).reshape(img.shape)
    (grad,) = torch.autograd.grad((img * w).sum(), z)
    return sum(saved), img.detach(), grad


@pytest.mark.parametrize("kind,arch", [("eps", "kl_full"), ("flux", "kl_full"), ("eps", "kl_small")])
def test_checkpointed_decode_saves_less_and_changes_nothing(kind, arch):
    require_comfyui()
    import comfy.latent_formats
    from tests.comfy.tiny_models import tiny_vae

    torch.manual_seed(0)
    with torch.inference_mode(False):
        vae = tiny_vae(kind, arch)
        model = vae.first_stage_model.float()
        for p in model.parameters():
            p.requires_grad_(False)
        vae.vae_dtype = torch.float32
        fmt = comfy.latent_formats.Flux() if kind == "flux" else comfy.latent_formats.SD15()
        lat = torch.randn(1, vae.latent_channels, 8, 8)
        plain_bytes, plain_img, plain_grad = _saved_bytes_and_grad(vae, fmt, lat, False)
        ckpt_bytes, ckpt_img, ckpt_grad = _saved_bytes_and_grad(vae, fmt, lat, True)
    assert torch.equal(plain_img, ckpt_img)
    assert torch.equal(plain_grad, ckpt_grad)
    assert plain_grad.abs().sum() > 0
    # only each layer's input (and the unpatched output tail) stays saved
    assert ckpt_bytes < 0.35 * plain_bytes, (ckpt_bytes, plain_bytes)
    assert "forward" not in vars(model.decoder.up[0].block[0])  # the patch is undone
