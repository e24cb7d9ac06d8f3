"""Checks that need a CUDA GPU (not part of the CPU suite: pytest collects ``tests/`` only).

    COMFYUI_PATH=.carry/ComfyUI python -m pytest benchmarks/gpu_checks.py -q -s -p no:cacheprovider

One DOODL iteration's value and gradient with the CUDA-graph fast path equal the eager path's, up
to bf16 rounding: full-size SD1.5 UNet (fp16 weights, ComfyUI's default on NVIDIA; the gradient
graphs run it from bf16 copies) and SD VAE built through ComfyUI's loaders, 10 EDICT steps, the
checkpointed chain gradient of a decode + symmetry loss, cfg 7.5. Also the euler chain, and the
scorer networks being loaded by ComfyUI onto the GPU.
"""
from __future__ import annotations

import os
import sys
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
    vae = bench.build_vae(device)
    pos, neg = bench.conditioning("sd15", 1), bench.conditioning("sd15", 2)
    return dict(bench=bench, model=model, vae=vae, pos=pos, neg=neg, device=device)


def _value_and_grad(ctx, chain_kind: str, graphs: bool, steps: int = 10):
    from doodl_nodes.bridge.chain import run_in_guider
    from doodl_nodes.bridge.vae import decode_differentiable
    from doodl_nodes.core.chains import make_chain
    from doodl_nodes.scorers.symmetry import SymmetryScorer

    model, vae = ctx["model"], ctx["vae"]
    sigmas = ctx["bench"].sigmas_for(model, steps)
    shape = (1, 4, 64, 64)
    scorer = SymmetryScorer()

    def fn(chain):
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        x = chain.initial_latent(noise)
        ops = make_chain(chain_kind, chain.denoise, input_scale=chain.input_scale)

        def objective(a, b):
            img = decode_differentiable(vae, chain.latent_format, torch.cat([a, b]))
            return scorer.loss(img).mean()

        loss, grads, _ = ops.value_and_grad(objective, ops.state(x, x.clone()), chain.sigmas)
        stats = dict(chain.graphs.stats) if chain.graphs is not None else {}
        return float(loss), [g.double().cpu() for g in grads], stats

    with torch.inference_mode():
        return run_in_guider(model, ctx["pos"], ctx["neg"], 7.5, sigmas, shape, fn, grad=True,
                             precision="bf16", extra_patchers=[vae.patcher],
                             extra_modules=[vae.first_stage_model], cuda_graphs=graphs)


@pytest.mark.parametrize("chain_kind", ["edict", "euler"])
def test_graphed_iteration_equals_eager(ctx, chain_kind):
    loss_g, grads_g, stats = _value_and_grad(ctx, chain_kind, True)
    loss_e, grads_e, none = _value_and_grad(ctx, chain_kind, False)
    assert none == {} and stats.get("graph_grad_calls", 0) > 0 and stats.get("graph_backwards", 0) > 0
    assert stats.get("eager_recomputes", 0) == 0, stats
    assert abs(loss_g - loss_e) <= 1e-2 * abs(loss_e), (loss_g, loss_e)
    for g, e in zip(grads_g, grads_e):
        assert torch.isfinite(g).all() and e.abs().sum() > 0
        cos = float((g * e).sum() / (g.norm() * e.norm()))
        rel = float((g - e).norm() / e.norm())
        print(f"{chain_kind}: loss {loss_g:.6g} vs {loss_e:.6g}; grad cos {cos:.6f}, rel {rel:.3e}; {stats}")
        assert cos > 0.995 and rel < 0.1


def test_scorer_networks_are_loaded_by_comfyui_onto_the_gpu(ctx):
    import comfy.model_management as mm

    from doodl_nodes.bridge.scorer_models import ScorerModules, scorer_patchers

    scorer = ctx["bench"].build_scorer(ctx["device"], Path("/tmp/doodl_gpu_checks"))
    patchers = scorer_patchers(scorer)
    mm.load_models_gpu(patchers, force_full_load=True)
    own = [p for p in patchers if isinstance(p.model, ScorerModules)]
    assert own and all(q.device.type == "cuda" for p in own for q in p.model.parameters())
    assert any(lm.model is own[0] for lm in mm.current_loaded_models)
    mm.unload_all_models()
    assert all(q.device.type == "cpu" for p in own for q in p.model.parameters())
