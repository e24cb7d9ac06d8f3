"""ComfyUI loads (moves) a model for our runs only in inference mode, as its own samplers do.

A weight that ComfyUI moves to the GPU outside inference mode becomes a tensor without a version
counter, and every later call fails ("Inference tensors do not track version counter"; found on an
H200 for EDICT sampling on a freshly loaded model, benchmarks/RESULTS.md run 13). A CPU run never
moves weights, so this records the autograd mode of every ``load_models_gpu`` call instead, in
sampling (no-grad) and DOODL-style (grad) runs, called from inside and from outside inference mode."""
import contextlib

import pytest
import torch

from tests.comfyui_env import require_comfyui

pytestmark = pytest.mark.comfyui


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("caller_in_inference_mode", [True, False])
def test_models_are_loaded_in_inference_mode(monkeypatch, grad, caller_in_inference_mode):
    require_comfyui()
    import comfy.model_management as mm

    from doodl_nodes.bridge.chain import run_in_guider
    from tests.comfy.setups import tiny_setup

    model, _, pos, neg, sigmas = tiny_setup("eps", steps=2)
    modes = []
    original = mm.load_models_gpu

    def recording(*args, **kwargs):
        modes.append(torch.is_inference_mode_enabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(mm, "load_models_gpu", recording)

    def fn(chain):
        inside = (torch.is_inference_mode_enabled(), torch.is_grad_enabled())
        z = torch.zeros(1, 4, 8, 8)
        if grad:
            z.requires_grad_(True)
        out = chain.denoise(z, chain.sigmas[0])
        if grad:
            torch.autograd.grad(out.sum(), z)
        return inside

    with torch.inference_mode() if caller_in_inference_mode else contextlib.nullcontext():
        inside = run_in_guider(model, pos, neg, 2.0, sigmas, (1, 4, 8, 8), fn, grad=grad)
    assert modes and all(modes), modes          # every load (ours and the guider's) in inference mode
    assert inside == (False, grad)              # our body: out of inference mode, grad only for DOODL
