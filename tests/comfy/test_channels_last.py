"""A graphed run holds the UNet channels-last end to end with fused kernels (``bridge/fast_unet.py``,
``channels_last.py``, ``fused_norms.py``, ``fused_geglus.py``): on real tiny
ComfyUI UNets (SD1.5 with conv projections, SD2-v and SDXL with linear ones) the forward and the
input gradient are the plain model's up to float32 rounding, the transformer blocks hand back
channels-last images, and the model is given back exactly as it was (same Parameter objects, NCHW,
same values, inference tensors still inference tensors). The switch in ``chain.py`` holds the
context for graphed, uncompiled runs only. (The GPU speed is measured in benchmarks/RESULTS.md.)"""
import pytest
import torch

from tests.comfyui_env import require_comfyui

pytestmark = pytest.mark.comfyui


def _model(kind):
    from tests.comfy.tiny_models import load_tiny_model, tiny_conditioning

    torch.manual_seed(0)
    with torch.inference_mode():   # as a loader node leaves it
        patcher = load_tiny_model(kind)
    base = patcher.model
    cond = tiny_conditioning(kind, batch=2, seed=1)[0]
    y = torch.randn(2, base.adm_channels, generator=torch.Generator().manual_seed(2)) \
        if getattr(base.diffusion_model, "num_classes", None) is not None else None
    return base.diffusion_model, cond[0], y


def _call(dm, context, y, grad_weights):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    t = torch.tensor([500.0, 500.0])
    out = dm(x, t, context=context, y=y)
    (g,) = torch.autograd.grad((out * grad_weights).sum(), x)
    return out.detach(), g


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kind", ["eps", "v", "sdxl"])
def test_fast_unet_matches_and_gives_the_model_back(kind):
    require_comfyui()
    from comfy.ldm.modules.attention import SpatialTransformer

    from doodl_nodes.bridge.autograd import make_autograd_safe
    from doodl_nodes.bridge.fast_unet import fast_unet

    dm, context, y = _model(kind)
    make_autograd_safe(dm)   # what a DOODL run does before its gradient passes
    params = dict(dm.named_parameters())
    before = {k: p.detach().clone() for k, p in params.items()}
    w = torch.linspace(-1, 1, 2 * 4 * 8 * 8).reshape(2, 4, 8, 8)
    plain_out, plain_grad = _call(dm, context, y, w)
    transformers = [m for m in dm.modules() if type(m) is SpatialTransformer]
    assert transformers

    seen = []

    def spy(module, args, output):
        seen.append(output.is_contiguous(memory_format=torch.channels_last))

    hooks = [m.register_forward_hook(spy) for m in transformers]
    with fast_unet(dm) as counts:
        # 1x1 kernels are both layouts at once: nothing to re-lay
        assert counts["channels_last_weights"] == sum(p.dim() == 4 and p.shape[2:] != (1, 1) for p in params.values())
        assert counts["layout_keeping_transformers"] == len(transformers)
        assert counts["fused_group_norms"] == sum(isinstance(m, torch.nn.GroupNorm) for m in dm.modules())
        assert counts["fused_geglus"] == sum(type(m).__name__ == "GEGLU" for m in dm.modules()) > 0
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in params.values() if p.dim() == 4)
        out, grad = _call(dm, context, y, w)
    for h in hooks:
        h.remove()
    assert seen and all(seen), seen   # every transformer block handed back a channels-last image
    assert _rel(out, plain_out) < 1e-5 and _rel(grad, plain_grad) < 1e-5
    assert dict(dm.named_parameters()) == params   # the same Parameter objects
    for k, p in params.items():
        assert p.is_contiguous() and torch.equal(p, before[k]), k
    assert not any("forward" in m.__dict__ for m in dm.modules())


def test_inference_weights_stay_inference_tensors():
    """An EDICT sampling run does not make the weights autograd-safe: the loader's inference
    tensors are re-laid and put back as inference tensors."""
    require_comfyui()
    from doodl_nodes.bridge.channels_last import channels_last_weights

    dm, context, y = _model("eps")
    convs = [p for p in dm.parameters() if p.dim() == 4]
    assert convs and all(p.is_inference() for p in convs)
    with torch.no_grad():
        plain = dm(torch.ones(2, 4, 8, 8), torch.tensor([500.0, 500.0]), context=context)
        with channels_last_weights(dm) as n:
            assert n == sum(p.shape[2:] != (1, 1) for p in convs) > 0
            assert all(p.is_inference() and p.is_contiguous(memory_format=torch.channels_last) for p in convs)
            relaid = dm(torch.ones(2, 4, 8, 8), torch.tensor([500.0, 500.0]), context=context)
    assert all(p.is_inference() and p.is_contiguous() for p in convs)
    assert _rel(relaid, plain) < 1e-5


def test_an_unknown_transformer_forward_is_left_alone(monkeypatch):
    """The layout-keeping forward reproduces one ComfyUI version's SpatialTransformer.forward; a
    ComfyUI whose forward differs keeps its own (and the run stays correct, only slower)."""
    require_comfyui()
    from comfy.ldm.modules.attention import SpatialTransformer

    from doodl_nodes.bridge import channels_last
    from doodl_nodes.bridge.fingerprints import forward_fingerprint

    assert forward_fingerprint(SpatialTransformer.forward) in channels_last.KNOWN_FORWARDS
    dm, _, _ = _model("eps")
    monkeypatch.setattr(channels_last, "KNOWN_FORWARDS", frozenset())
    with channels_last.layout_keeping_transformers(dm) as n:
        assert n == 0 and not any("forward" in m.__dict__ for m in dm.modules())


def test_an_unknown_geglu_forward_is_left_alone(monkeypatch):
    require_comfyui()
    from comfy.ldm.modules.attention import GEGLU

    from doodl_nodes.bridge import fused_geglus
    from doodl_nodes.bridge.fingerprints import forward_fingerprint

    assert forward_fingerprint(GEGLU.forward) in fused_geglus.KNOWN_FORWARDS
    dm, _, _ = _model("eps")
    with fused_geglus.fused_geglus(dm) as n:
        assert n == sum(type(m) is GEGLU for m in dm.modules()) > 0
    monkeypatch.setattr(fused_geglus, "KNOWN_FORWARDS", frozenset())
    with fused_geglus.fused_geglus(dm) as n:
        assert n == 0 and not any("forward" in m.__dict__ for m in dm.modules())


def test_fused_norms_leave_cast_and_autocast_calls_to_comfyui():
    """Norms whose weights ComfyUI casts at each call, of another dtype than the input, or called
    under autocast run ComfyUI's own forward inside the context."""
    require_comfyui()
    import comfy.ops

    from doodl_nodes.bridge import fused_norms

    norm = comfy.ops.manual_cast.GroupNorm(2, 4)
    x = torch.randn(1, 4, 3, 3)
    assert fused_norms._comfy_path(norm, x)                       # manual cast: ComfyUI casts the weights
    plain = torch.nn.GroupNorm(2, 4)
    assert not fused_norms._comfy_path(plain, x)
    assert fused_norms._comfy_path(plain, x.double())              # dtype mismatch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused_norms._comfy_path(plain, x)


class _Graphs:
    def __init__(self):
        self.stats = {}


class _Chain:
    def __init__(self, dm, graphs):
        self.graphs = graphs
        self.base_model = type("Base", (), {"diffusion_model": dm})()


@pytest.mark.parametrize("graphs,compile,env,expected", [
    (True, False, None, True), (False, False, None, False), (True, True, None, False), (True, False, "0", False)])
def test_the_run_switch(monkeypatch, graphs, compile, env, expected):
    """``chain.py`` holds the context around a run exactly when it is graphed and not compiled, and
    ``DOODL_CHANNELS_LAST=0`` turns it off; the counts land in the run's graph counters."""
    require_comfyui()
    from doodl_nodes.bridge.chain import _CallbackSampler

    if env is None:
        monkeypatch.delenv("DOODL_CHANNELS_LAST", raising=False)
    else:
        monkeypatch.setenv("DOODL_CHANNELS_LAST", env)
    dm = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3))
    chain = _Chain(dm, _Graphs() if graphs else None)
    sampler = _CallbackSampler(lambda c: None, False, "bf16", [], cuda_graphs=graphs, torch_compile=compile)
    with sampler._layout(chain):
        inside = dm[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert inside == expected
    assert dm[0].weight.is_contiguous()
    if expected:
        assert chain.graphs.stats["channels_last_weights"] == 1
