"""The fused GEGLU kernels (``core/fused_geglu.py``) against PyTorch, run on the CPU by Triton's
interpreter in a subprocess (``TRITON_INTERPRET=1`` must be set before Triton is imported): values
and input gradients in float64 and bf16, ragged sizes, no-grad calls; the fallback to PyTorch when a
kernel fails and without Triton."""
from pathlib import Path

import pytest
import torch

from doodl_nodes.core import fused_geglu
from tests.triton_probes import interpreter_probe_rows

PROBE = Path(__file__).with_name("fused_geglu_probe.py")


@pytest.fixture(scope="module")
def probe_rows():
    return interpreter_probe_rows(PROBE)


def test_kernels_match_pytorch(probe_rows):
    cases = [r for r in probe_rows if "shape" in r]
    assert len(cases) == 4
    for r in cases:
        assert r["fused"] == "_GEGLUBackward", r           # the kernels ran, not the fallback
        assert r["y_shape"] == r["shape"][:-1] + [r["shape"][-1] // 2]
        assert r["y_dtype"] == r["grad_dtype"] == r["dtype"], r
        # float32 inside the kernels; bf16 rounds the output and each gradient half once
        bound = 1e-2 if r["dtype"] == "torch.bfloat16" else 2e-6
        assert r["y_rel"] < bound and r["grad_rel"] < bound, r
    (row,) = [r for r in probe_rows if "no_grad_rel" in r]
    assert row["no_grad_rel"] < 2e-6


def test_a_kernel_that_fails_hands_over_to_pytorch(probe_rows):
    (row,) = [r for r in probe_rows if r.get("failure") == "forward"]
    assert "unsupported GPU" in row["reason"]
    assert row["fallback"] == row["later"] == "MulBackward0"   # PyTorch's a * gelu(g), then and later
    assert row["rel"] < 1e-15


def test_cpu_tensors_without_the_interpreter_run_pytorch():
    h = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    y = fused_geglu.geglu(h)
    assert type(y.grad_fn).__name__ == "MulBackward0"
    assert torch.equal(y, fused_geglu.geglu_reference(h))
