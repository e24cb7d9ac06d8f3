"""The gradient pass's attention override (``bridge.safety.differentiable_attention_override``):
memory-chunked attention is swapped for ComfyUI's PyTorch attention only on calls that record an
autograd graph; no-grad calls run exactly the attention ComfyUI chose."""
import pytest
import torch

from tests.comfyui_env import require_comfyui

pytestmark = pytest.mark.comfyui


@pytest.fixture
def attention():
    require_comfyui()
    import comfy.ldm.modules.attention as attention

    return attention


def _qkv(grad=False):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 16, 32, generator=gen) for _ in range(3))
    if grad:
        q.requires_grad_(True)
    return q, k, v


def test_override_exists_on_cpu_and_keeps_no_grad_calls_on_comfyuis_attention(attention, monkeypatch):
    from doodl_nodes.bridge.safety import differentiable_attention_override

    # CPU ComfyUI picks a memory-chunked attention by default: the case the override is for
    assert attention.optimized_attention in (attention.attention_sub_quad, attention.attention_split)
    override = differentiable_attention_override()
    assert override is not None and override.doodl_differentiable
    chunked = attention.optimized_attention.__wrapped__
    q, k, v = _qkv()
    want = chunked(q, k, v, 2)
    with torch.no_grad():
        assert torch.equal(override(chunked, q, k, v, 2), want)
    # grad mode on but nothing requires grad: no graph, so ComfyUI's choice stays
    assert torch.equal(override(chunked, q, k, v, 2), want)


def test_override_routes_graph_building_calls_to_pytorch_attention(attention, monkeypatch):
    from doodl_nodes.bridge.safety import differentiable_attention_override

    calls = []
    real = attention.attention_pytorch

    def spy(*args, **kwargs):
        calls.append(args[0].requires_grad)
        return real(*args, **kwargs)

    monkeypatch.setattr(attention, "attention_pytorch", spy)
    override = differentiable_attention_override()
    chunked = attention.optimized_attention.__wrapped__
    q, k, v = _qkv(grad=True)
    out = override(chunked, q, k, v, 2)
    assert calls == [True]
    torch.testing.assert_close(out, real(q.detach(), k, v, 2), rtol=0, atol=0)
    out.square().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    # the chunked kernel gives the same values up to rounding
    torch.testing.assert_close(out.detach(), chunked(q.detach(), k, v, 2), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        override(chunked, q, k, v, 2)
    assert calls == [True], "a no-grad call must not be rerouted"
    # any other attention function is passed through untouched, with grad too
    basic = attention.attention_basic.__wrapped__
    torch.testing.assert_close(override(basic, q, k, v, 2), basic(q, k, v, 2), rtol=0, atol=0)
    assert calls == [True]
