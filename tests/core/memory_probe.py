"""Run in a subprocess: peak RSS growth of one gradient computation through an EDICT chain.

Usage: python memory_probe.py MODE STEPS  ->  prints the peak-RSS increase in MiB over a warm-up
run of 2 steps. MODE is "plain", "checkpoint" or "reversible". The denoiser expands its input to a
~8 MiB activation (and autograd saves several of those per call), so storing every step's
activations is visible while storing only the states (64 KiB each) is not.
"""
import resource
import sys

import torch

torch.set_num_threads(1)
sys.path.insert(0, sys.argv[3])
from doodl_nodes.core.backprop import edict_value_and_grad  # noqa: E402
from doodl_nodes.core.edict import edict_sample  # noqa: E402

EXPAND = 128
SHAPE = (1, 4, 32, 32)  # 4096 float64 = 32 KiB; activations are EXPAND x that = 4 MiB each


def denoise(z, sigma):
    h = z.repeat(1, EXPAND, 1, 1)                  # (1, 512, 32, 32)
    h = torch.tanh(h * 0.1 + sigma * 0.01)         # saved for backward
    h = torch.sin(h) * h                           # more saved tensors
    return z * 0.5 + h.reshape(1, EXPAND, 4, 32, 32).mean(1)


def run(mode, steps):
    sigmas = torch.linspace(10, 0, steps + 1, dtype=torch.float64)
    x = torch.randn(SHAPE, dtype=torch.float64)
    obj = lambda a, b: (a ** 2).sum() + b.sum()  # noqa: E731
    if mode == "plain":
        xr = x.clone().requires_grad_(True)
        loss = obj(*edict_sample(denoise, xr, xr, sigmas))
        loss.backward()
    else:
        edict_value_and_grad(denoise, obj, x, x, sigmas, mode=mode)


def peak_mib():
    """This process's peak RSS. /proc's VmHWM belongs to the process image; ru_maxrss would be
    inherited across fork+exec from a large parent (pytest with ComfyUI loaded) and hide growth."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    mode, steps = sys.argv[1], int(sys.argv[2])
    run(mode, 2)
    base = peak_mib()
    run(mode, steps)
    print(f"{peak_mib() - base:.1f}")
