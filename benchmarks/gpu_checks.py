"""Checks that need a CUDA GPU (not part of the CPU suite: pytest collects ``tests/`` only).

    COMFYUI_PATH=.carry/ComfyUI python -m pytest benchmarks/gpu_checks.py -q -s -p no:cacheprovider

One DOODL iteration's value and gradient through the CUDA-graph fast path against the eager path:
full-size SD1.5 UNet and SD VAE built through ComfyUI's loaders, 10 steps of the EDICT and of the
euler chain, the checkpointed chain gradient of a decode + symmetry loss, cfg 7.5. With an fp32
model and fp32 gradient pass both paths do the same arithmetic and must agree (this checks the
graph machinery); in the default bf16 fast path (fp16 weights, gradient graphs from bf16 weight
copies) the graphed gradient must be as close to the fp32 gradient as the eager bf16 one is.
A graphed sampling run (the model held channels-last, fused norms) replays its eager calls bit for
bit and inverts exactly. Also: the scorer networks are loaded by ComfyUI onto the GPU.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


@pytest.fixture(scope="module")
def ctx():
    if not torch.cuda.is_available():
        pytest.fail("these checks need a CUDA GPU (run them on the device)")
    import bench_doodl as bench

    bench.setup_comfyui(os.environ.get("COMFYUI_PATH", str(REPO / ".carry" / "ComfyUI")), cpu=False)
    device = torch.device("cuda")
    model = bench.build_unet("sd15", device)
    model_fp32 = bench.build_unet("sd15", device, dtype=torch.float32)
    vae = bench.build_vae(device)
    pos, neg = bench.conditioning("sd15", 1), bench.conditioning("sd15", 2)
    return dict(bench=bench, model=model, model_fp32=model_fp32, vae=vae, pos=pos, neg=neg, device=device)


def _value_and_grad(ctx, chain_kind: str, graphs: bool, steps: int = 10, model=None,
                    precision: str = "bf16", bf16_copies: bool = True, checkpointing: bool = False):
    from doodl_nodes.bridge.chain import run_in_guider
    from doodl_nodes.bridge.vae import decode_differentiable
    from doodl_nodes.core.chains import make_chain
    from doodl_nodes.scorers.symmetry import SymmetryScorer

    model, vae = model or ctx["model"], ctx["vae"]
    sigmas = ctx["bench"].sigmas_for(model, steps)
    shape = (1, 4, 64, 64)
    scorer = SymmetryScorer()

    def fn(chain):
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        x = chain.initial_latent(noise)
        ops = make_chain(chain_kind, chain.denoise, input_scale=chain.input_scale)

        def objective(a, b):
            img = decode_differentiable(vae, chain.latent_format, torch.cat([a, b]), checkpoint=checkpointing)
            return scorer.loss(img).mean()

        loss, grads, _ = ops.value_and_grad(objective, ops.state(x, x.clone()), chain.sigmas)
        stats = dict(chain.graphs.stats) if chain.graphs is not None else {}
        return float(loss), [g.double().cpu() for g in grads], stats

    with torch.inference_mode():
        return run_in_guider(model, ctx["pos"], ctx["neg"], 7.5, sigmas, shape, fn, grad=True,
                             precision=precision, extra_patchers=[vae.patcher],
                             extra_modules=[vae.first_stage_model], cuda_graphs=graphs,
                             bf16_copies=bf16_copies, model_checkpointing=checkpointing)


def _compare(a, b) -> tuple[float, float]:
    """(cosine, relative distance) of gradient lists ``a`` against the reference ``b``."""
    num = sum(float((g * e).sum()) for g, e in zip(a, b))
    na = sum(float(g.norm() ** 2) for g in a) ** 0.5
    nb = sum(float(e.norm() ** 2) for e in b) ** 0.5
    dist = sum(float((g - e).norm() ** 2) for g, e in zip(a, b)) ** 0.5
    return num / (na * nb), dist / nb


def _check_graph_stats(stats: dict) -> None:
    assert stats.get("graph_grad_calls", 0) > 0 and stats.get("graph_backwards", 0) > 0, stats
    assert stats.get("eager_recomputes", 0) == 0 and stats.get("eager_calls", 0) == 0, stats
    _check_layout_stats(stats)


def _check_layout_stats(stats: dict) -> None:
    """The run held SD1.5 channels-last end to end with fused kernels (``fast_unet.py``): its 3x3
    weights re-laid, its 16 transformer blocks layout-keeping and, with Triton, its 61 GroupNorms
    and 16 GEGLU gates fused."""
    from doodl_nodes.bridge.cuda_graphs import channels_last_enabled, fused_kernels_enabled

    if channels_last_enabled():
        assert stats.get("channels_last_weights", 0) > 0, stats
        assert stats.get("layout_keeping_transformers", 0) == 16, stats
    if fused_kernels_enabled():
        assert stats.get("fused_group_norms", 0) == 61 and stats.get("fused_geglus", 0) == 16, stats


def test_graphed_sampling_run_is_exact_and_replays_eager_calls(ctx):
    """A graphed EDICT sampling run (no grad; the model held channels-last with fused norms): each
    no-grad replay is bit-identical to the eager call made inside the same run, and inverting the
    sampled pair with the same graphs gives the starting noise back (float64 state)."""
    from doodl_nodes.bridge.chain import run_in_guider
    from doodl_nodes.core.edict import edict_invert, edict_sample

    model = ctx["model"]
    sigmas = ctx["bench"].sigmas_for(model, 50)
    shape = (1, 4, 64, 64)

    def fn(chain):
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        x = chain.initial_latent(noise)
        z = x.float()
        s = chain.sigmas[7].float()
        replay = chain.denoise(z, s)
        eager = chain.call_model(z, s.reshape(1).expand(1), False)
        assert chain.graphs is not None, "a no-grad run on a freshly loaded model must record its calls"
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        x0, y0 = edict_sample(chain.denoise, x, x.clone(), chain.sigmas, input_scale=chain.input_scale)
        torch.cuda.synchronize()
        chain.graphs.stats["sample_s"] = round(time.perf_counter() - t0, 3)   # printed, not asserted
        xb, yb = edict_invert(chain.denoise, x0, y0, chain.sigmas, input_scale=chain.input_scale)
        err = max(float((xb - x).abs().max()), float((yb - x).abs().max()))
        return torch.equal(replay, eager), err, float(x.abs().max()), dict(chain.graphs.stats)

    with torch.inference_mode():
        same, err, scale, stats = run_in_guider(model, ctx["pos"], ctx["neg"], 7.5, sigmas, shape, fn,
                                                cuda_graphs=True)
    print(f"graphed sampling: replay == eager {same}; round trip max |error| {err:.3e} (|x| up to {scale:.3g}); "
          f"{stats}")
    assert same
    assert stats.get("graph_calls", 0) >= 200 and stats.get("eager_calls", 0) == 0, stats
    _check_layout_stats(stats)
    assert err <= 1e-6 * scale, err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_geglu_kernels_match_pytorch_on_the_gpu(dtype):
    """core/fused_geglu.py's Triton kernels at SD1.5's shapes (batch 2: tokens x 2 * 4 * channels)
    against PyTorch's ``a * gelu(g)`` in float64: values and input gradients."""
    from doodl_nodes.core.fused_geglu import geglu, geglu_reference

    for tokens, width in [(4096, 2560), (1024, 5120), (256, 10240), (64, 10240)]:
        g = torch.Generator(device="cuda").manual_seed(tokens + width)
        h = torch.randn(2, tokens, width, device="cuda", generator=g, dtype=torch.float64) * 2
        dy = torch.randn(2, tokens, width // 2, device="cuda", generator=g, dtype=torch.float64)
        hf = h.to(dtype).requires_grad_(True)
        yf = geglu(hf)
        (gf,) = torch.autograd.grad(yf, hf, dy.to(dtype))
        assert type(yf.grad_fn).__name__ == "_GEGLUBackward"
        hr = h.clone().requires_grad_(True)
        yr = geglu_reference(hr)
        (gr,) = torch.autograd.grad(yr, hr, dy)
        y_rel = float((yf.double() - yr).norm() / yr.norm())
        g_rel = float((gf.double() - gr).norm() / gr.norm())
        print(f"geglu {dtype} {tokens}x{width}: y rel {y_rel:.2e}, grad rel {g_rel:.2e}")
        bound = 1e-2 if dtype == torch.bfloat16 else 2e-6
        assert y_rel < bound and g_rel < bound, (tokens, width, y_rel, g_rel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_group_norm_kernels_match_pytorch_on_the_gpu(dtype):
    """core/fused_norm.py's Triton kernels at SD1.5's shapes (batch 2, 32 groups, channels-last)
    against PyTorch's group_norm + silu in float64: values and input gradients."""
    from doodl_nodes.core.fused_norm import group_norm_act

    for c, hw in [(320, 64), (640, 32), (960, 32), (1280, 8), (2560, 8), (1920, 16)]:
        g = torch.Generator(device="cuda").manual_seed(c + hw)
        x = (torch.randn(2, c, hw, hw, device="cuda", generator=g, dtype=torch.float64) * 1.5 + 0.5)
        x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, device="cuda", generator=g, dtype=torch.float64)
        b = torch.randn(c, device="cuda", generator=g, dtype=torch.float64)
        dy = torch.randn(x.shape, device="cuda", generator=g, dtype=torch.float64)
        for act in (True, False):
            xf = x.to(dtype).requires_grad_(True)
            yf = group_norm_act(xf, 32, w.to(dtype), b.to(dtype), 1e-5, act=act)
            (gf,) = torch.autograd.grad(yf, xf, dy.to(dtype))
            xr = x.clone().requires_grad_(True)
            yr = torch.nn.functional.group_norm(xr, 32, w, b, 1e-5)
            yr = torch.nn.functional.silu(yr) if act else yr
            (gr,) = torch.autograd.grad(yr, xr, dy)
            y_rel = float((yf.double() - yr).norm() / yr.norm())
            g_rel = float((gf.double() - gr).norm() / gr.norm())
            print(f"fused norm {dtype} C={c} {hw}x{hw} act={act}: y rel {y_rel:.2e}, grad rel {g_rel:.2e}")
            assert type(yf.grad_fn).__name__ == "_GroupNormActBackward"
            assert yf.is_contiguous(memory_format=torch.channels_last) and gf.is_contiguous(
                memory_format=torch.channels_last)
            bound = 1e-2 if dtype == torch.bfloat16 else 1e-5
            assert y_rel < bound and g_rel < bound, (c, hw, act, y_rel, g_rel)


@pytest.mark.parametrize("chain_kind", ["edict", "euler"])
def test_graphed_iteration_equals_eager_in_fp32(ctx, chain_kind):
    """The graph machinery itself (captures, the one grad slot reused by the split VJP, replays):
    with an fp32 model and fp32 gradient pass both paths compute the same function. Not bit for
    bit: the graphed run holds the model channels-last with fused norms (other fp32 kernels), and
    EDICT's coupled chain amplifies those rounding differences (run 14: loss 2.1e-4 relative for
    EDICT, 4.9e-6 for Euler, gradients 4.9e-3 / 6.6e-3 as before the layout change)."""
    model32 = ctx["model_fp32"]
    # true fp32: TF32 convolutions (PyTorch's default) may pick other algorithms under capture
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        loss_g, grads_g, stats = _value_and_grad(ctx, chain_kind, True, model=model32, precision="fp32")
        loss_e, grads_e, none = _value_and_grad(ctx, chain_kind, False, model=model32, precision="fp32")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
    assert none == {}
    _check_graph_stats(stats)
    cos, rel = _compare(grads_g, grads_e)
    print(f"fp32 {chain_kind}: loss {loss_g:.8g} vs {loss_e:.8g}; grad cos {cos:.8f}, rel {rel:.3e}; {stats}")
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads_g)
    assert abs(loss_g - loss_e) <= 1e-3 * abs(loss_e) and rel < 1e-2, (loss_g, loss_e, rel)


@pytest.mark.parametrize("chain_kind", ["edict", "euler"])
def test_graphed_bf16_iteration_is_as_accurate_as_eager_bf16(ctx, chain_kind):
    """The default fast path (fp16 weights, bf16 gradient graphs from bf16 weight copies) against
    the eager bf16 path (autocast), both measured against the fp32 eager gradient: the graphs may
    round differently but must not be less accurate than eager bf16."""
    loss_r, grads_r, _ = _value_and_grad(ctx, chain_kind, False, model=ctx["model_fp32"], precision="fp32")
    loss_g, grads_g, stats = _value_and_grad(ctx, chain_kind, True)
    loss_e, grads_e, _ = _value_and_grad(ctx, chain_kind, False)
    _check_graph_stats(stats)
    cos_g, rel_g = _compare(grads_g, grads_r)
    cos_e, rel_e = _compare(grads_e, grads_r)
    print(f"bf16 {chain_kind}: loss graphed {loss_g:.6g}, eager {loss_e:.6g}, fp32 {loss_r:.6g}; against fp32: "
          f"graphed cos {cos_g:.6f} rel {rel_g:.3e}, eager cos {cos_e:.6f} rel {rel_e:.3e}; {stats}")
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads_g)
    assert abs(loss_g - loss_r) <= 1e-2 * abs(loss_r)
    assert rel_g <= 1.5 * rel_e + 0.02, (rel_g, rel_e)


@pytest.mark.parametrize("chain_kind", ["edict", "euler"])
def test_checkpointed_model_and_decoder_give_the_eager_gradient(ctx, chain_kind):
    """The small-card path (model and decoder checkpointing, eager) against plain eager, fp32 with
    TF32 off: the recomputation replays the same kernels, so values and gradients agree to
    cuDNN's run-to-run differences."""
    model32 = ctx["model_fp32"]
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        loss_c, grads_c, _ = _value_and_grad(ctx, chain_kind, False, model=model32, precision="fp32",
                                             checkpointing=True)
        loss_e, grads_e, _ = _value_and_grad(ctx, chain_kind, False, model=model32, precision="fp32")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
    cos, rel = _compare(grads_c, grads_e)
    print(f"checkpointed {chain_kind}: loss {loss_c:.8g} vs {loss_e:.8g}; grad cos {cos:.8f}, rel {rel:.3e}")
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads_c)
    assert abs(loss_c - loss_e) <= 1e-5 * abs(loss_e) and rel < 1e-3, (loss_c, loss_e, rel)


def test_scorer_networks_are_loaded_by_comfyui_onto_the_gpu(ctx):
    import comfy.model_management as mm

    from doodl_nodes.bridge.scorer_models import ScorerModules, scorer_patchers

    tmp = Path("/tmp/doodl_gpu_checks")
    tmp.mkdir(parents=True, exist_ok=True)
    scorer = ctx["bench"].build_scorer(ctx["device"], tmp)
    patchers = scorer_patchers(scorer)
    mm.load_models_gpu(patchers, force_full_load=True)
    own = [p for p in patchers if isinstance(p.model, ScorerModules)]
    assert own and all(q.device.type == "cuda" for p in own for q in p.model.parameters())
    assert any(lm.model is own[0] for lm in mm.current_loaded_models)
    mm.unload_all_models()
    assert all(q.device.type == "cpu" for p in own for q in p.model.parameters())
