"""Model checkpointing (the memory plan's last saving) on every architecture we claim: one model
call's gradient is unchanged, the saved activations shrink, the input model is left as it was, and
an unknown layout is refused up front."""
import functools

import pytest
import torch

from tests.comfyui_env import require_comfyui

pytestmark = pytest.mark.comfyui

KINDS = ["eps", pytest.param("sdxl", marks=pytest.mark.slow), "flow", "flux"]


@pytest.fixture(scope="module")
def comfy():
    require_comfyui()
    return True


@functools.lru_cache(maxsize=None)
def _setup(kind):
    from tests.comfy.setups import tiny_setup

    return tiny_setup(kind, 3)


def _call_grad(kind, checkpointing):
    """(saved bytes, value, gradient) of one CFG model call at the first sigma, with grad."""
    from doodl_nodes.bridge.chain import run_in_guider

    model, _, pos, neg, sigmas = _setup(kind)
    shape = (1, 16 if kind in ("flow", "flux") else 4, 8, 8)

    def fn(chain):
        z = chain.initial_latent(torch.randn(shape, generator=torch.Generator().manual_seed(0))).float()
        z.requires_grad_(True)
        saved = []

        def pack(t):
            saved.append(t.numel() * t.element_size())
            return t

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = chain.denoise(z, chain.sigmas[0])
        w = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
        (g,) = torch.autograd.grad((out * w).sum(), z)
        return sum(saved), out.detach(), g

    with torch.inference_mode():
        return run_in_guider(model, pos, neg, 2.0, sigmas, shape, fn, grad=True, precision="fp32",
                             model_checkpointing=checkpointing)


@pytest.mark.parametrize("kind", KINDS)
def test_checkpointed_call_has_the_same_gradient_and_saves_less(comfy, kind):
    plain_bytes, plain_out, plain_grad = _call_grad(kind, False)
    ckpt_bytes, ckpt_out, ckpt_grad = _call_grad(kind, True)
    assert torch.equal(plain_out, ckpt_out)
    assert torch.isfinite(ckpt_grad).all() and float(ckpt_grad.abs().max()) > 0
    torch.testing.assert_close(ckpt_grad, plain_grad, rtol=1e-5, atol=1e-7)
    assert ckpt_bytes < 0.6 * plain_bytes, (ckpt_bytes, plain_bytes)
    # the input model's blocks are ComfyUI's own again once a plain patcher loads it
    model = _setup(kind)[0]
    import comfy.model_management

    with torch.inference_mode():
        comfy.model_management.load_models_gpu([model])
    dm = model.get_model_object("diffusion_model")
    patched = [n for n, m in dm.named_modules() if getattr(vars(m).get("forward"), "doodl_checkpointed", False)]
    assert patched == []


def test_targets_per_architecture(comfy):
    from doodl_nodes.bridge.model_checkpointing import checkpoint_targets

    eps = checkpoint_targets(_setup("eps")[0].get_model_object("diffusion_model"))
    assert eps and all(p.split(".")[0] in ("input_blocks", "middle_block", "output_blocks") for p in eps)
    assert any(".1" in p for p in eps)  # transformer layers, not only resnets
    sd3 = checkpoint_targets(_setup("flow")[0].get_model_object("diffusion_model"))
    assert sd3 and all(p.startswith("joint_blocks.") for p in sd3)
    assert checkpoint_targets(_setup("flux")[0].get_model_object("diffusion_model")) == {}


def test_unknown_layout_is_refused(comfy):
    from doodl_nodes.bridge.model_checkpointing import ModelNotCheckpointable, add_model_checkpointing

    class Patcher:
        def get_model_object(self, name):
            return torch.nn.Sequential(torch.nn.Linear(2, 2))

    with pytest.raises(ModelNotCheckpointable, match="cannot checkpoint this diffusion model"):
        add_model_checkpointing(Patcher())
