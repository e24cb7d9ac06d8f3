"""Run in a subprocess (fresh compile caches): a function that calls ComfyUI's attention the way its
UNet does (``comfy.ops.scaled_dot_product_attention``), compiled with inductor and differentiated,
with ComfyUI's CUDA attention wrapper emulated on the CPU, once as it is and once inside
``attention_outside_graph``. Prints one JSON line: AOTAutograd's cache counters of each compile."""
import json
import os
import sys
import tempfile

os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="doodl_compiled_attention_")
sys.path.insert(0, sys.argv[1])

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from tests.comfyui_env import require_comfyui  # noqa: E402

require_comfyui()
import comfy.ops  # noqa: E402

from doodl_nodes.bridge import compiled_attention  # noqa: E402

PRIORITY = [SDPBackend.MATH]


def comfy_cuda_wrapper(q, k, v, *args, **kwargs):   # comfy/ops.py's CUDA branch, on the CPU
    with sdpa_kernel(PRIORITY, set_priority=True):
        return F.scaled_dot_product_attention(q, k, v, *args, **kwargs)


comfy.ops.SDPA_BACKEND_PRIORITY = PRIORITY
comfy.ops.scaled_dot_product_attention = comfy_cuda_wrapper


def attention_block(x, w):
    q = x @ w
    return comfy.ops.scaled_dot_product_attention(q, q, q).sin().sum()


def compile_once():
    torch._dynamo.reset()
    before = dict(counters["aot_autograd"])
    x = torch.linspace(-1, 1, 2 * 2 * 8 * 16).reshape(2, 2, 8, 16).requires_grad_(True)
    w = torch.linspace(-0.5, 0.5, 256).reshape(16, 16)
    out = torch.compile(attention_block)(x, w)
    (g,) = torch.autograd.grad(out, x)
    after = dict(counters["aot_autograd"])
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}, float(out), g


as_is, out_a, grad_a = compile_once()
with compiled_attention.attention_outside_graph() as changed:
    plain_inside = comfy.ops.scaled_dot_product_attention is compiled_attention._plain_sdpa
    fixed, out_b, grad_b = compile_once()
restored = comfy.ops.scaled_dot_product_attention is comfy_cuda_wrapper
print(json.dumps({"as_is": as_is, "fixed": fixed, "changed": changed, "plain_inside": plain_inside,
                  "restored": restored, "same_value": abs(out_a - out_b) <= 1e-6 * abs(out_a),
                  "grad_rel": float((grad_a - grad_b).norm() / grad_a.norm())}))
