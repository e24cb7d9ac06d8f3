"""Peak memory of the chain gradient must not grow with the number of steps (plain autograd does).

Each measurement runs in a fresh subprocess reading its own peak RSS (VmHWM). We assert
the scaling, not a machine-specific number: going from 4 to 24 steps, plain autograd's peak grows by
hundreds of MiB while both constant-memory modes stay within a small fraction of that.

glibc's dynamic mmap threshold would otherwise put freed 4 MiB activations on the brk heap, where
long-lived 32 KiB state tensors fragment it and inflate RSS without any live tensor growing; a fixed
threshold (MALLOC_MMAP_THRESHOLD_) makes RSS track live tensors, which is what we measure.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("memory_probe.py")
ROOT = Path(__file__).resolve().parents[2]


def _growth(mode, steps):
    out = subprocess.run([sys.executable, str(PROBE), mode, str(steps), str(ROOT)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_constant_in_steps():
    plain = _growth("plain", 24) - _growth("plain", 4)
    ckpt = _growth("checkpoint", 24) - _growth("checkpoint", 4)
    rev = _growth("reversible", 24) - _growth("reversible", 4)
    # plain autograd keeps ~2 calls x several 4 MiB activations per step: >= ~300 MiB for 20 steps
    assert plain > 250, plain
    assert ckpt < 0.1 * plain, (ckpt, plain)
    assert rev < 0.1 * plain, (rev, plain)
