"""Crops back-propagated in chunks (CropConfig.chunk): the same per-image losses and the same
gradients as all crops at once, for every scorer whose reduction sees all crops."""
from __future__ import annotations

import pytest
import torch

from doodl_nodes.core.crops import CropConfig
from doodl_nodes.scorers.aesthetic import AestheticScorer, LinearAestheticHead
from doodl_nodes.scorers.clip import CLIPImageScorer, CLIPTextScorer
from doodl_nodes.scorers.clip_models import load_open_clip


@pytest.fixture(scope="module")
def encoder(tiny_open_clip):
    arch, path, _ = tiny_open_clip
    return load_open_clip(arch, checkpoint=path).image


def _scorers(encoder):
    g = torch.Generator().manual_seed(0)
    head = LinearAestheticHead(encoder.embed_dim)
    with torch.no_grad():
        head.linear.weight.copy_(torch.randn(head.linear.weight.shape, generator=g) * 4)
        head.linear.bias.fill_(5.0)
    target = torch.randn(encoder.embed_dim, generator=g)
    return {
        "aesthetic target (auto: mean score)": (AestheticScorer(encoder, head, target=6.0), "auto"),
        "aesthetic maximize (mean)": (AestheticScorer(encoder, head), "mean"),
        "clip text (mean)": (CLIPTextScorer(encoder, target), "mean"),
        "clip image ensemble (auto: min)": (CLIPImageScorer([encoder, encoder], [0.5, 0.25],
                                                           targets=[target, -target]), "auto"),
    }


@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_chunked_crops_give_the_same_loss_and_gradient(encoder, chunk):
    images = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    for name, (scorer, reduction) in _scorers(encoder).items():
        results = []
        for c in (0, chunk):
            x = images.clone().requires_grad_(True)
            loss = scorer.loss(x, CropConfig(7, 0.5, reduction, chunk=c), torch.Generator().manual_seed(2))
            (grad,) = torch.autograd.grad((loss * torch.tensor([1.0, -2.0])).sum(), x)
            results.append((loss.detach(), grad))
        (l0, g0), (l1, g1) = results
        assert g0.abs().sum() > 0, name
        torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-7, msg=name)


def test_chunking_recomputes_instead_of_keeping_activations(encoder):
    """With chunks the encoder runs again in the backward pass (that is where the memory goes)."""
    calls = []
    handle = encoder.visual.register_forward_hook(lambda *a: calls.append(a[1][0].shape[0]))
    try:
        scorer = AestheticScorer(encoder, LinearAestheticHead(encoder.embed_dim))
        x = torch.rand(1, 3, 40, 40, requires_grad=True)
        scorer.loss(x, CropConfig(6, 0.5, "auto", chunk=2), torch.Generator().manual_seed(0)).sum().backward()
    finally:
        handle.remove()
    assert calls == [2, 2, 2, 2, 2, 2]   # 3 chunks forward, 3 recomputed in backward
    with pytest.raises(ValueError, match="chunk"):
        CropConfig(chunk=-1)


def test_scorer_checkpointing_gives_the_same_loss_and_gradient_with_less_saved(encoder):
    """The scorer's transformer layers checkpointed (the memory plan's "scorer checkpointing"):
    identical losses and gradients for every scorer, a fraction of the saved activations, and the
    layers' forward restored afterwards."""
    from doodl_nodes.core.checkpointing import checkpointed_blocks, repeated_blocks

    images = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    blocks = repeated_blocks(AestheticScorer(encoder, LinearAestheticHead(encoder.embed_dim)).modules())
    assert len(blocks) >= 2
    for name, (scorer, reduction) in _scorers(encoder).items():
        results = []
        for enabled in (False, True):
            saved = []

            def pack(t):
                saved.append(t.numel() * t.element_size())
                return t

            x = images.clone().requires_grad_(True)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                    checkpointed_blocks(scorer.modules(), enabled) as n:
                loss = scorer.loss(x, CropConfig(7, 0.5, reduction), torch.Generator().manual_seed(2))
            assert (n > 0) == enabled
            (grad,) = torch.autograd.grad((loss * torch.tensor([1.0, -2.0])).sum(), x)
            results.append((loss.detach(), grad, sum(saved)))
        (l0, g0, b0), (l1, g1, b1) = results
        assert g0.abs().sum() > 0, name
        torch.testing.assert_close(l1, l0, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(g1, g0, rtol=1e-6, atol=1e-9, msg=name)
        assert b1 < 0.7 * b0, (name, b1, b0)
    assert not any("forward" in vars(b) for b in blocks)


def test_scorer_checkpointing_inside_crop_chunks_gives_the_same_gradient(encoder):
    """Both savings at once (the plan's small-card choice): the chunks' recomputation replays the
    checkpointed layers (the layers stay patched until the backward pass is done, as DOODL does)."""
    from doodl_nodes.core.checkpointing import checkpointed_blocks

    images = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    scorer = _scorers(encoder)["aesthetic maximize (mean)"][0]
    grads = []
    for enabled, chunk in ((False, 0), (True, 3)):
        x = images.clone().requires_grad_(True)
        with checkpointed_blocks(scorer.modules(), enabled):
            loss = scorer.loss(x, CropConfig(7, 0.5, "mean", chunk=chunk), torch.Generator().manual_seed(2))
            grads.append(torch.autograd.grad(loss.sum(), x)[0])
    scale = float(grads[0].abs().max())
    assert scale > 0
    # the chunks sum the crops' gradients in another order: float32 rounding at the gradient's scale
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-5 * scale)
