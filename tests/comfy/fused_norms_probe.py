"""Run in a subprocess with ``TRITON_INTERPRET=1``: one tiny ComfyUI UNet's forward and input
gradient, plain and inside ``fused_group_norms`` (the Triton kernels run on the CPU through Triton's
interpreter), with the weights in channels-last as the gradient graphs hold them; then the same for
``fused_geglus`` alone and with the norms. Prints two JSON lines."""
import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
sys.path.insert(0, sys.argv[1])

import torch  # noqa: E402

from tests.comfyui_env import require_comfyui  # noqa: E402

require_comfyui()
from doodl_nodes.bridge.fused_geglus import fused_geglus  # noqa: E402
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

# the GEGLU gates (fused_geglus.py) on the same model, alone and together with the norms
grad_fns = []
hooks = [m.register_forward_hook(lambda mod, args, out: grad_fns.append(type(out.grad_fn).__name__))
         for m in dm.modules() if type(m).__name__ == "GEGLU"]
with fused_geglus(dm) as geglus:
    geglu_out, geglu_grad = call()
with fused_geglus(dm), fused_group_norms(dm):
    both_out, both_grad = call()
for h in hooks:
    h.remove()
geglu_restored = not any("forward" in m.__dict__ for m in dm.modules())
print(json.dumps({
    "geglus": geglus, "geglu_grad_fns": sorted(set(grad_fns)), "geglu_restored": geglu_restored,
    "geglu_out_rel": float((geglu_out - plain_out).norm() / plain_out.norm()),
    "geglu_grad_rel": float((geglu_grad - plain_grad).norm() / plain_grad.norm()),
    "both_out_rel": float((both_out - plain_out).norm() / plain_out.norm()),
    "both_grad_rel": float((both_grad - plain_grad).norm() / plain_grad.norm()),
}))
print(json.dumps({
    "kind": kind, "norms": norms, "swapped": swapped, "patched_types": kinds, "restored": restored,
    "out_rel": float((fused_out - plain_out).norm() / plain_out.norm()),
    "grad_rel": float((fused_grad - plain_grad).norm() / plain_grad.norm()),
    "grad_norm": float(plain_grad.norm()),
}))
