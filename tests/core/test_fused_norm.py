"""The fused GroupNorm(+SiLU) kernels (``core/fused_norm.py``) against PyTorch, run on the CPU by
Triton's interpreter in a subprocess (``TRITON_INTERPRET=1`` must be set before Triton is imported):
values and input gradients in both layouts, with and without the SiLU and the affine parameters,
several programs per group, outputs in the input's layout and dtype; plus the fallbacks."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from doodl_nodes.core import fused_norm
from tests.triton_probes import interpreter_probe_rows

PROBE = Path(__file__).with_name("fused_norm_probe.py")


@pytest.fixture(scope="module")
def probe_rows():
    return interpreter_probe_rows(PROBE)


def test_kernels_match_pytorch_in_every_layout(probe_rows):
    cases = [r for r in probe_rows if "shape" in r]
    assert len(cases) == 7
    for r in cases:
        assert r["fused"] == "_GroupNormActBackward", r          # the kernels ran, not the fallback
        assert r["layout_kept"], r
        want = "torch.bfloat16" if r["dtype"] == "torch.bfloat16" else "torch.float64"
        assert r["y_dtype"] == r["grad_dtype"] == want, r
        # float32 accumulation inside the kernels; bf16 rounds the output and the gradient once
        bound = 1e-2 if r["dtype"] == "torch.bfloat16" else 2e-6
        assert r["y_rel"] < bound and r["grad_rel"] < bound, r


def test_trainable_weights_and_wide_groups_fall_back_to_pytorch(probe_rows):
    """Weights that require grad fall back only in grad mode; without it the kernels run."""
    (row,) = [r for r in probe_rows if "trainable_weight" in r]
    assert row["trainable_weight"] != "_GroupNormActBackward"
    assert row["weight_grad_rel"] < 1e-12
    (no_grad,) = [r for r in probe_rows if "trainable_weight_no_grad_launches" in r]
    assert no_grad["trainable_weight_no_grad_launches"] == 1 and no_grad["no_grad_rel"] < 1e-6, no_grad
    (wide,) = [r for r in probe_rows if "wide_groups" in r]
    assert wide["wide_groups"] == "SiluBackward0"


def test_a_kernel_that_fails_to_build_hands_over_to_pytorch(probe_rows):
    rows = {r["failure"]: r for r in probe_rows if "failure" in r}
    back, fwd, oom = rows["backward"], rows["forward"], rows["oom"]
    # the backward kernels fail: the forward ran fused, the gradient is PyTorch's, later calls too
    assert back["forward"] == "_GroupNormActBackward" and "unsupported GPU" in back["reason"]
    assert not back["available_after"] and back["grad_rel"] < 1e-6
    # the forward kernels fail: the very call falls back, and the process does not try again
    assert fwd["forward"] == "SiluBackward0" and "no compiler" in fwd["reason"]
    assert fwd["second_call"] == "SiluBackward0" and fwd["y_equal"]
    # running out of memory is not a Triton problem: it propagates and nothing is given up
    assert oom["outcome"] == "raised" and oom["reason"] is None


def test_cpu_tensors_without_the_interpreter_use_pytorch():
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    w, b = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    assert torch.equal(fused_norm.group_norm_act(x, 4, w, b, act=True), F.silu(F.group_norm(x, 4, w, b)))
    assert torch.equal(fused_norm.group_norm_act(x, 2), F.group_norm(x, 2))


def test_channels_that_do_not_split_into_groups_are_refused():
    with pytest.raises(ValueError, match="7 channels do not split into 2 groups"):
        fused_norm.group_norm_act(torch.zeros(1, 7, 2, 2), 2)
