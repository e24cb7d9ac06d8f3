"""The CUDA-graph fast path's switches and its refusal to record where it is not safe. (Replays
themselves need a GPU: they are exercised by benchmarks/bench_doodl.py, not by CI.)"""
import pytest
import torch

from tests.comfyui_env import require_comfyui

pytestmark = pytest.mark.comfyui


def test_environment_switches(monkeypatch):
    require_comfyui()
    from doodl_nodes.bridge.cuda_graphs import cuda_graphs_enabled, torch_compile_enabled

    monkeypatch.delenv("DOODL_CUDA_GRAPHS", raising=False)
    monkeypatch.delenv("DOODL_TORCH_COMPILE", raising=False)
    assert cuda_graphs_enabled() and not torch_compile_enabled()
    for off in ("0", "false", "OFF", "no"):
        monkeypatch.setenv("DOODL_CUDA_GRAPHS", off)
        assert not cuda_graphs_enabled()
    monkeypatch.setenv("DOODL_TORCH_COMPILE", "1")
    assert torch_compile_enabled() and not torch_compile_enabled(False) and cuda_graphs_enabled(True)


def test_fused_kernels_switch(monkeypatch):
    require_comfyui()
    from doodl_nodes.bridge import cuda_graphs
    from doodl_nodes.core.fused_norm import triton_available

    for name in ("DOODL_FUSED_KERNELS", "DOODL_FUSED_NORMS", "DOODL_CHANNELS_LAST"):
        monkeypatch.delenv(name, raising=False)
    assert cuda_graphs.fused_kernels_enabled() == triton_available()
    assert cuda_graphs.channels_last_enabled()
    monkeypatch.setenv("DOODL_FUSED_KERNELS", "off")
    assert not cuda_graphs.fused_kernels_enabled()
    monkeypatch.setenv("DOODL_FUSED_KERNELS", "1")
    monkeypatch.setenv("DOODL_FUSED_NORMS", "0")   # the earlier name still switches them off
    assert not cuda_graphs.fused_kernels_enabled()
    monkeypatch.setenv("DOODL_FUSED_NORMS", "1")
    monkeypatch.setattr(cuda_graphs, "triton_available", lambda: False)
    assert not cuda_graphs.fused_kernels_enabled()   # no Triton (Windows, macOS): PyTorch's ops
    monkeypatch.setenv("DOODL_CHANNELS_LAST", "no")
    assert not cuda_graphs.channels_last_enabled()


def test_graphs_are_not_used_off_cuda_or_on_patched_models():
    require_comfyui()
    import comfy.patcher_extension as pe

    from doodl_nodes.bridge.chain import run_in_guider
    from doodl_nodes.bridge.cuda_graphs import graph_blockers
    from tests.comfy.setups import tiny_setup

    model, _, pos, neg, sigmas = tiny_setup("eps", steps=2)
    patched = model.clone()
    patched.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "some_pack", lambda ex, *a, **k: ex(*a, **k))

    def fn(chain):
        return graph_blockers(chain.model_wrap, chain.extra_args, torch.device("cuda")), chain.graphs

    with torch.inference_mode():
        why_plain, graphs = run_in_guider(model, pos, neg, 2.0, sigmas, (1, 4, 8, 8), fn, cuda_graphs=True)
        why_patched, _ = run_in_guider(patched, pos, neg, 2.0, sigmas, (1, 4, 8, 8), fn, cuda_graphs=True)
    assert graphs is None  # CPU: never recorded
    assert any("not every model weight is on the GPU" in w for w in why_plain)
    assert any("wrappers" in w for w in why_patched)


def test_weights_that_require_grad_block_only_gradient_runs():
    """ComfyUI's loaders leave ``requires_grad`` on: a no-grad run (EDICT sampling or inversion on a
    freshly loaded model) still records its calls (under no_grad nothing is recorded for the
    weights); a gradient run freezes the weights first, and refuses to record unfrozen ones."""
    require_comfyui()
    from doodl_nodes.bridge.chain import run_in_guider
    from doodl_nodes.bridge.cuda_graphs import graph_blockers
    from tests.comfy.setups import tiny_setup

    model, _, pos, neg, sigmas = tiny_setup("eps", steps=2)

    def fn(chain):
        base = chain.model_wrap.inner_model
        unfrozen = any(p.requires_grad for p in base.parameters())
        return unfrozen, [graph_blockers(chain.model_wrap, chain.extra_args, torch.device("cuda"), grad=g)
                          for g in (False, True)]

    with torch.inference_mode():
        unfrozen, (why_nograd, why_grad) = run_in_guider(model, pos, neg, 2.0, sigmas, (1, 4, 8, 8), fn)
    assert unfrozen   # as the loader left it
    assert not any("require grad" in w for w in why_nograd), why_nograd
    assert any("require grad" in w for w in why_grad), why_grad
