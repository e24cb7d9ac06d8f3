"""Run in a subprocess with ``TRITON_INTERPRET=1``: one tiny ComfyUI UNet's forward and input
gradient, plain and inside ``fused_group_norms`` (the Triton kernels run on the CPU through Triton's
interpreter), with the weights in channels-last as the gradient graphs hold them. Prints one JSON line."""
import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
sys.path.insert(0, sys.argv[1])

import torch  # noqa: E402

from tests.comfyui_env import require_comfyui  # noqa: E402

require_comfyui()
from doodl_nodes.bridge.fused_norms import fused_group_norms  # noqa: E402
from tests.comfy.tiny_models import load_tiny_model, tiny_conditioning  # noqa: E402

kind = sys.argv[2]
torch.manual_seed(0)
patcher = load_tiny_model(kind)
base = patcher.model
dm = base.diffusion_model
for p in dm.parameters():
    p.requires_grad_(False)
    if p.dim() == 4:
        p.data = p.data.contiguous(memory_format=torch.channels_last)
cond = tiny_conditioning(kind, batch=2, seed=1)[0]
c = {"c_crossattn": cond[0]}
if getattr(dm, "num_classes", None) is not None:
    c["y"] = torch.randn(2, base.adm_channels)
x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
t = torch.tensor([500.0, 500.0])
w = torch.linspace(-1, 1, x.numel()).reshape(x.shape)


def call():
    xx = x.clone().requires_grad_(True)
    out = dm(xx, t, context=c["c_crossattn"], y=c.get("y"))
    (g,) = torch.autograd.grad((out * w).sum(), xx)
    return out.detach(), g


plain_out, plain_grad = call()
norms = sum(isinstance(m, torch.nn.GroupNorm) for m in dm.modules())
with fused_group_norms(dm) as swapped:
    kinds = sorted({type(m).__name__ for m in dm.modules()
                    if "forward" in m.__dict__})
    fused_out, fused_grad = call()
restored = not any("forward" in m.__dict__ for m in dm.modules())
print(json.dumps({
    "kind": kind, "norms": norms, "swapped": swapped, "patched_types": kinds, "restored": restored,
    "out_rel": float((fused_out - plain_out).norm() / plain_out.norm()),
    "grad_rel": float((fused_grad - plain_grad).norm() / plain_grad.norm()),
    "grad_norm": float(plain_grad.norm()),
}))
