"""The fused norms (``bridge/fused_norms.py``) and GEGLU gates (``bridge/fused_geglus.py``) on a real
ComfyUI UNet: inside the context every GroupNorm (and every GEGLU gate) runs the Triton kernels (on
the CPU through Triton's interpreter, in a subprocess) and the SiLU after a norm is folded in; the
forward and the input gradient match the plain model; the modules are restored after; blocks that
modulate the norm's output keep their SiLU."""
from pathlib import Path

import pytest
import torch

from doodl_nodes.bridge.fused_norms import fused_group_norms
from tests.comfyui_env import require_comfyui
from tests.triton_probes import interpreter_probe_rows

pytestmark = pytest.mark.comfyui

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("fused_norms_probe.py")


def test_tiny_sd15_unet_matches_with_fused_norms():
    require_comfyui()
    rows = interpreter_probe_rows(PROBE, "eps", cwd=ROOT)
    geglu = next(r for r in rows if "geglus" in r)
    row = next(r for r in rows if "norms" in r)
    # the GEGLU gates: every one swapped and running the kernels, the same function, put back
    assert geglu["geglus"] > 0 and geglu["geglu_grad_fns"] == ["_GEGLUBackward"], geglu
    assert geglu["geglu_restored"], geglu
    for key in ("geglu_out_rel", "geglu_grad_rel", "both_out_rel", "both_grad_rel"):
        assert geglu[key] < 1e-4, geglu
    assert row["norms"] > 0 and row["swapped"] == row["norms"], row
    assert row["patched_types"] == ["GroupNorm", "SiLU"], row
    assert row["restored"], row
    assert row["grad_norm"] > 0
    # float32 model; the kernels sum in float32 too (PyTorch's norm uses Welford's update)
    assert row["out_rel"] < 1e-4 and row["grad_rel"] < 1e-4, row


class _ScaleShiftBlock(torch.nn.Module):
    """Like a ResBlock with ``use_scale_shift_norm``: out_layers[0] is called alone."""

    use_scale_shift_norm = True

    def __init__(self):
        super().__init__()
        self.out_layers = torch.nn.Sequential(torch.nn.GroupNorm(2, 4), torch.nn.SiLU(), torch.nn.Identity())


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.plain = torch.nn.Sequential(torch.nn.GroupNorm(2, 4), torch.nn.SiLU(), torch.nn.Conv2d(4, 4, 1))
        self.modulated = _ScaleShiftBlock()
        self.alone = torch.nn.GroupNorm(2, 4)


def test_which_layers_are_swapped():
    net = _Net()
    net.alone.forward = net.alone.forward   # someone else's instance patch: left alone
    with fused_group_norms(net) as n:
        assert n == 2
        assert "forward" in net.plain[0].__dict__ and "forward" in net.plain[1].__dict__   # SiLU folded in
        assert "forward" in net.modulated.out_layers[0].__dict__
        assert "forward" not in net.modulated.out_layers[1].__dict__   # the SiLU after a modulated norm stays
        x = torch.randn(2, 4, 3, 3)
        y = net.plain(x)
        ref = torch.nn.functional.silu(torch.nn.functional.group_norm(x, 2, net.plain[0].weight, net.plain[0].bias))
        assert torch.allclose(y, net.plain[2](ref), atol=1e-6)   # CPU: PyTorch's ops, same function
    assert "forward" not in net.plain[0].__dict__ and "forward" not in net.plain[1].__dict__
    assert "forward" in net.alone.__dict__


def test_models_without_group_norm_swap_nothing():
    lin = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.SiLU())
    with fused_group_norms(lin) as n:
        assert n == 0
        assert not any("forward" in m.__dict__ for m in lin.modules())
