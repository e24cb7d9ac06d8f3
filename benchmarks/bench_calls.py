"""Where the time of one SD1.5 CFG model call goes (issue 15's default-speed target).

Per-call replay times of CUDA-graph variants of the no-grad and the gradient call, recorded inside
one guider run on the full-size random SD1.5 UNet of ``bench_doodl.py`` (batch 2 = cond + uncond,
64x64 latent); the kernels of the eager call of each variant from the torch profiler, summed by
kind (convolution, matrix product, attention, normalization, layout conversion, elementwise); and
the copy operators of the default variants grouped by the source line that made them.

No-grad variants (the DOODL forward walk and EDICT sampling run this call): as recorded before
run 13 (the user's fp16 weights, NCHW, PyTorch's norms), channels-last weights + fused norms, the
whole layout with fused norms (run 13's default) and ``fast_unet`` (``bridge/fast_unet.py``: that
plus the fused GEGLU gates). Gradient variants (forward + backward, from the bf16 weight copies):
fused norms as before run 13, run 13's default, and ``fast_unet``. (ComfyUI picks the attention kernel itself, cuDNN's first on this GPU:
a ``sdpa_kernel`` context around its call changes nothing, run 12.)

    python3 benchmarks/bench_calls.py --out $OUT --comfyui .carry/ComfyUI
    python3 benchmarks/bench_calls.py --tiny --out /tmp/calls    # CPU: the code paths only
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import bench_doodl as bench  # noqa: E402

#: kernel-name patterns of each kind, first match wins (names of cuDNN, cuBLAS, PyTorch, Triton)
KINDS = [
    ("layout", r"nchwToNhwc|nhwcToNchw|transpose|permute|CatArrayBatched|direct_copy|copy_kernel"),
    ("attention", r"flash|fmha|attention|sdpa|cudnn_generated_fort_native|mha"),
    ("norm", r"norm|_stats_kernel|_apply_kernel|_grad_stats_kernel|_grad_apply_kernel|welford|moments"),
    ("convolution", r"conv|fprop|dgrad|wgrad|implicit_gemm|xmma_fprop|xmma_dgrad"),
    ("matmul", r"gemm|nvjet|cutlass|xmma|sm90_|sm80_|splitKreduce"),
    ("elementwise", r"elementwise|vectorized|silu|gelu|add|mul|reduce|softmax|fill|cat"),
]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "other"


def kernel_table(fn) -> dict:
    """Summed CUDA kernel time of one call by kind, and the 30 costliest kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    bench.sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        bench.sync()
    kinds: dict[str, float] = {}
    rows = []
    for e in prof.key_averages():
        if getattr(e, "device_type", None) != DeviceType.CUDA:
            continue
        us = getattr(e, "self_device_time_total", 0) or 0
        if us:
            k = kind_of(e.key)
            kinds[k] = kinds.get(k, 0.0) + us / 1e3
            rows.append((us, e.key, e.count, k))
    rows.sort(reverse=True)
    return {"kernel_ms": round(sum(kinds.values()), 3), "by_kind_ms": {k: round(v, 3) for k, v in
                                                                        sorted(kinds.items(), key=lambda kv: -kv[1])},
            "top": [{"us": round(r[0], 1), "kind": r[3], "count": r[2], "name": r[1][:110]} for r in rows[:30]]}


def graph_of(fn, device):
    """``fn`` recorded as a CUDA graph (after two warm-up calls on a side stream): its replay."""
    stream = torch.cuda.Stream(device)
    bench.sync()
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    bench.sync()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        graph.doodl_output = fn()
    bench.sync()
    return graph


def replay_ms(graph, reps: int) -> float:
    times = []
    for _ in range(reps):
        bench.sync()
        t0 = time.perf_counter()
        graph.replay()
        bench.sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def copies_by_source(fn) -> list:
    """The copy/layout operators of one call (``aten::copy_``, ``aten::clone``, ``aten::cat``, ...)
    with their CUDA time, grouped by the innermost ComfyUI/pack source line that called them."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    bench.sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as prof:
        fn()
        bench.sync()
    rows: dict = {}
    for e in prof.events():
        if e.name not in ("aten::copy_", "aten::clone", "aten::cat", "aten::contiguous", "aten::_to_copy"):
            continue
        us = getattr(e, "device_time_total", 0) or 0
        if not us:
            continue
        frames = list(e.stack or [])
        up = e.cpu_parent
        while up is not None:   # with_stack: the Python frames are the operator's ancestors
            frames.append(up.name)
            up = up.cpu_parent
        frames = [f for f in frames if ("comfy" in f or "doodl" in f) and "torch/" not in f]
        where = frames[0] if frames else "?"
        key = (e.name, where)
        n, t = rows.get(key, (0, 0.0))
        rows[key] = (n + 1, t + us)
    out = sorted(({"op": k[0], "where": k[1][-140:], "count": n, "us": round(t, 1)} for k, (n, t) in rows.items()),
                 key=lambda r: -r["us"])
    return out[:25]


def measure(ctx, reps: int, log) -> dict:
    from doodl_nodes.bridge.channels_last import channels_last_weights, layout_keeping_transformers
    from doodl_nodes.bridge.fast_unet import fast_unet
    from doodl_nodes.bridge.chain import run_in_guider
    from doodl_nodes.bridge.cuda_graphs import GraphedGuider
    from doodl_nodes.bridge.fused_norms import fused_group_norms

    out: dict = {"nograd": {}, "grad": {}}

    def fn(chain):
        device = chain.device
        g = torch.Generator().manual_seed(0)
        z = torch.randn(ctx["latent_shape"], generator=g).to(device) * float(chain.sigmas[0])
        s_in = chain.sigmas[len(chain.sigmas) // 3].to(torch.float32).reshape(1).expand(z.shape[0])
        w = torch.randn(ctx["latent_shape"], generator=g).to(device)
        dm = chain.base_model.diffusion_model
        with torch.no_grad():
            reference = chain.call_model(z, s_in, False).float()

        def nograd():
            with torch.no_grad():
                return chain.call_model(z, s_in, False)

        def layout_and_norms():   # run 13's default: fast_unet without the fused GEGLU gates
            return _stacked(channels_last_weights(dm), layout_keeping_transformers(dm), fused_group_norms(dm))

        # (name, context factory): the no-grad call as recorded before run 13, and since
        variants = [("NCHW, PyTorch norms (before)", contextlib.nullcontext),
                    ("channels-last weights + fused norms", lambda: _stacked(channels_last_weights(dm),
                                                                             fused_group_norms(dm))),
                    ("channels-last, fused norms (run 13)", layout_and_norms),
                    ("fast_unet (default)", lambda: fast_unet(dm))]
        for name, make in variants:
            row: dict = {}
            with make():
                with torch.no_grad():
                    o = nograd().float()
                row["max_abs_vs_before"] = float((o - reference).abs().max())
                row["rel_vs_before"] = float((o - reference).norm() / reference.norm())
                if device.type == "cuda":
                    with torch.no_grad():
                        graph = graph_of(nograd, device)
                        row["graph_ms"] = replay_ms(graph, reps)
                        row["replay_equals_eager"] = bool(torch.equal(graph_output(graph, nograd), nograd()))
                    del graph
                    row["kernels"] = kernel_table(nograd)
                    if "default" in name or "before" in name:
                        row["copies"] = _guarded(copies_by_source, nograd)
            out["nograd"][name] = row
            log(f"nograd {name}: {row.get('graph_ms', float('nan')):.2f} ms, "
                f"kernels {(row.get('kernels') or {}).get('by_kind_ms')}, rel {row.get('rel_vs_before')}")

        # the gradient call as the graphs record it: bf16 channels-last copies of fp16 weights
        gg = None
        if device.type == "cuda":
            gg = GraphedGuider(chain.call_model, chain.base_model, z.shape, device, bf16_copies=chain.bf16_autocast)
        zg = z.clone().requires_grad_(True)
        grad_ref = None
        variants = [("bf16 copies + fused norms (before)", lambda: fused_group_norms(dm)),
                    ("channels-last, fused norms (run 13)", layout_and_norms),
                    ("fast_unet (default)", lambda: fast_unet(dm))]
        for name, make in variants:
            row = {}
            with make():
                shadows = gg._bf16_shadows() if gg is not None else None
                autocast = None if shadows is None else False

                def fwd_bwd():
                    with torch.enable_grad():
                        o = chain.call_model(zg, s_in, True, cache_enabled=False, autocast=autocast)
                        return torch.autograd.grad(o, zg, w)[0]

                with contextlib.ExitStack() as stack:
                    if gg is not None:
                        stack.enter_context(gg._weights(shadows))
                    gz = fwd_bwd().float()
                    if grad_ref is None:
                        grad_ref = gz
                    row["grad_rel_vs_before"] = float((gz - grad_ref).norm() / grad_ref.norm())
                    if device.type == "cuda":
                        graph = graph_of(fwd_bwd, device)
                        row["graph_ms"] = replay_ms(graph, reps)
                        del graph
                        row["kernels"] = kernel_table(fwd_bwd)
                        row["copies"] = _guarded(copies_by_source, fwd_bwd)
            if gg is not None:
                gg._shadows = None   # made again from the next variant's weights
            out["grad"][name] = row
            log(f"grad {name}: {row.get('graph_ms', float('nan')):.2f} ms, "
                f"kernels {(row.get('kernels') or {}).get('by_kind_ms')}, rel {row.get('grad_rel_vs_before')}")
        if gg is not None:
            gg.close()

    bench.unload_all()
    with bench.graphs_env(False), torch.inference_mode():
        run_in_guider(ctx["model"], ctx["pos"], ctx["neg"], ctx["cfg"], bench.sigmas_for(ctx["model"], 10),
                      ctx["latent_shape"], fn, grad=True, precision="bf16")
    bench.unload_all()
    return out


def _guarded(f, *args):
    try:
        return f(*args)
    except Exception as exc:  # a profiler detail this torch lacks must not lose the timings
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


@contextlib.contextmanager
def _stacked(*contexts):
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(c) for c in contexts]


def graph_output(graph, fn):
    """The output tensor of a recorded call after one more replay (the capture's own output)."""
    graph.replay()
    bench.sync()
    return graph.doodl_output


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out"))
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", str(REPO / ".carry" / "ComfyUI")))
    ap.add_argument("--tiny", action="store_true", help="CPU development run with tiny models")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    bench.setup_comfyui(args.comfyui, cpu=args.tiny)
    import bench_cards

    ctx = bench_cards.build_context("sd15", args.tiny, out_dir)
    res = bench.Results(out_dir, f"calls{'_tiny' if args.tiny else ''}{'_' + args.tag if args.tag else ''}")
    res.data["argv"] = sys.argv
    if torch.cuda.is_available() and not args.tiny:
        res.put("env", "device", {"name": torch.cuda.get_device_name(0), "torch": torch.__version__,
                                  "cudnn": torch.backends.cudnn.version()})
    res.put("calls", "sd15", measure(ctx, args.reps, bench.log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
