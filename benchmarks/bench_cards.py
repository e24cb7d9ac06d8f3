"""GPU benchmark for the cards users own: DOODL with the node's default settings, on the whole GPU
and on emulated smaller cards; throughput at batch 1/2/4; torch.compile warm-start in a fresh process.

Models are the full-size random-weight SD1.5 / SDXL UNets, SD VAE and ViT-L/14-sized aesthetic
scorer of ``bench_doodl.py`` (built through ComfyUI's loaders), the objective is the paper's (the
aesthetic head on 16 crops, cut power 0.3, both EDICT images), and every run goes through
``run_doodl`` (what the DOODL Optimize node calls) with ``DoodlRequest``'s defaults, which are the
node's: bf16 gradient pass, CUDA graphs, decoder checkpointing off, and the automatic memory plan.

An emulated card of C GiB: ``torch.cuda.set_per_process_memory_fraction(C / total)`` caps what the
process may allocate, and ComfyUI's reserve (``--reserve-vram``, ``EXTRA_RESERVED_VRAM``) is set to
``total - C`` plus ComfyUI's own default reserve, so ComfyUI and the memory plan see the free memory
of a C GiB card. A row records whether the run completed, seconds per iteration (median after the
first), the peak ``max_memory_allocated`` after the first iteration and over the whole run, and the
plan's choices.

Sections (``--sections``): ``norms`` (the gradient graphs with PyTorch's norms and with the fused
Triton norms: ms per model call and T=50 DOODL), ``knobs`` (T=50 with each memory saving forced
on in turn: what each costs and saves), ``sd15`` (T=10 and T=50), ``batch`` (T=50, batch 1, 2, 4),
``cards_sd15`` (T=50 on emulated 8 and 12 GiB cards), ``sdxl`` (1024², T=30: whole GPU, 12 and
8 GiB), ``compile`` (two fresh processes sharing inductor's on-disk caches: compile time of each
first iteration and the compiled seconds per iteration).

    python3 benchmarks/bench_cards.py --out $OUT --comfyui .carry/ComfyUI --sections sd15,batch,cards_sd15,sdxl
    python3 benchmarks/bench_cards.py --tiny --out /tmp/cards     # CPU: every code path, tiny models
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

import bench_doodl as bench  # noqa: E402

GiB = 1024 ** 3


class LogCapture(logging.Handler):
    """The pack's log lines during a run (graph switches, memory-plan choices)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage()[:300])


@contextlib.contextmanager
def emulated_card(card_gib):
    """Cap this process at ``card_gib`` GiB and make ComfyUI see that card's free memory."""
    if card_gib is None or not torch.cuda.is_available():
        yield
        return
    import comfy.model_management as mm

    total = torch.cuda.get_device_properties(0).total_memory
    old_reserve = mm.EXTRA_RESERVED_VRAM
    mm.EXTRA_RESERVED_VRAM = int(total - card_gib * GiB + old_reserve)
    torch.cuda.set_per_process_memory_fraction(min(1.0, card_gib * GiB / total))
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        mm.EXTRA_RESERVED_VRAM = old_reserve


@contextlib.contextmanager
def forced_settings(settings):
    """Run with exactly these memory settings instead of the automatic plan's (``settings``: the
    ``MemoryPlan`` fields crop_chunk, decoder_checkpointing, bf16_copies, score_images, and
    ``graphs``); None: the automatic plan, graphs on."""
    from doodl_nodes.bridge import doodl_run
    from doodl_nodes.bridge.memory_plan import MemoryPlan

    if settings is None:
        yield
        return
    settings = dict(settings)
    graphs = settings.pop("graphs", True)
    original = doodl_run._plan_memory

    def forced(*args, **kwargs):
        planned = original(*args, **kwargs)
        return MemoryPlan(available=planned.available, estimate=planned.estimate, choices=["forced"], **settings)

    doodl_run._plan_memory = forced
    try:
        with bench.graphs_env(graphs):
            yield
    finally:
        doodl_run._plan_memory = original


def run_row(ctx, model, *, steps: int, iterations: int, batch: int = 1, card_gib=None, label: str = "",
            settings=None) -> dict:
    from doodl_nodes.bridge.doodl_run import DoodlRequest, run_doodl
    from doodl_nodes.core.optimize import DoodlConfig

    sig = bench.sigmas_for(model, steps)
    request = DoodlRequest(config=DoodlConfig(iterations=iterations, seed=0, evaluate_final=False),
                           strip_frames=2)
    shape = (batch,) + tuple(ctx["latent_shape"][1:])
    bench.unload_all()
    rec: dict = {}
    capture = LogCapture()
    logger = logging.getLogger("doodl")
    logger.addHandler(capture)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    row = {"label": label, "steps": steps, "iterations": iterations, "batch": batch, "card_gib": card_gib,
           "forced": settings}
    t0 = time.perf_counter()
    try:
        with emulated_card(card_gib), forced_settings(settings):
            bench.reset_peak()
            with bench.iteration_clock(rec), torch.inference_mode():
                out = run_doodl(model, ctx["vae"], ctx["pos"], ctx["neg"], ctx["cfg"], sig, ctx["scorer"], request,
                                latent={"samples": torch.zeros(shape)}, seed=0)
            whole = bench.peak()
        ts = rec["t"]
        if len(ts) == 1:  # the counters were reset after the only iteration: its own peak
            whole = rec.get("first_peak")
        # one iteration only: its own time (no CUDA-graph capture on the eager paths this is used for)
        per_iter = [b - a for a, b in zip(ts, ts[1:])] or [ts[0] - t0]
        row.update(completed=True, median_iteration_s=bench.median(per_iter), iteration_s=per_iter,
                   first_iteration_s=ts[0] - t0, total_s=time.perf_counter() - t0,
                   images_per_minute=(60.0 * batch / bench.median(per_iter)) if per_iter else None,
                   steady=whole, incl_first_iteration=rec.get("first_peak"), memory_plan=out.memory,
                   warnings=out.warnings, status=out.status, final_losses=out.losses[-2:])
    except Exception as exc:  # an out-of-memory on a small card is a result, not a crash
        oom = isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()
        row.update(completed=False, out_of_memory=oom, total_s=time.perf_counter() - t0,
                   error="".join(traceback.format_exception(exc))[-2500:])
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)
        row["log"] = capture.lines[-20:]
        bench.unload_all()
    s = row.get("steady") or {}
    bench.log(f"{label} T={steps} batch={batch} card={card_gib}: completed={row['completed']} "
              f"{row.get('median_iteration_s', float('nan')):.3f} s/it, peak {s.get('peak_alloc_gib', float('nan')):.2f} GiB, "
              f"plan {(row.get('memory_plan') or {}).get('choices')}")
    return row


#: memory settings, each adding one saving to the previous (the automatic plan's order)
_BASE = dict(crop_chunk=0, decoder_checkpointing=False, bf16_copies=True, score_images=None)
_CKPT = dict(_BASE, decoder_checkpointing=True, scorer_checkpointing=True)
KNOBS = [("none", dict(_BASE)),
         ("decoder ckpt", dict(_BASE, decoder_checkpointing=True)),
         ("+scorer ckpt", dict(_CKPT)),
         ("+crop chunks", dict(_CKPT, crop_chunk=4)),
         ("+one image", dict(_CKPT, crop_chunk=4, score_images="x")),
         ("+no graphs, model ckpt", dict(_CKPT, crop_chunk=4, score_images="x", bf16_copies=False, graphs=False,
                                         model_checkpointing=True))]


def build_context(arch: str, tiny: bool, out_dir: Path) -> dict:
    device = torch.device("cpu" if tiny else "cuda")
    if tiny:
        import importlib.util

        spec = importlib.util.spec_from_file_location("doodl_tiny_models", REPO / "tests" / "comfy" / "tiny_models.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["doodl_tiny_models"] = mod
        spec.loader.exec_module(mod)
        with torch.inference_mode():
            model, vae = mod.load_tiny_model("eps"), mod.tiny_vae("eps")
        latent_shape, arch = (1, 4, 8, 8), "sd15"
    else:
        model, vae = bench.build_unet(arch, device), bench.build_vae(device)
        latent_shape = (1, 4, 64, 64) if arch == "sd15" else (1, 4, 128, 128)
    return {"model": model, "vae": vae, "scorer": bench.build_scorer(device, out_dir, tiny=tiny),
            "pos": bench.conditioning(arch, 1), "neg": bench.conditioning(arch, 2), "cfg": 7.5,
            "latent_shape": latent_shape}


#: the graphed run's kernels, each variant on its own (issue 15's "channels-last end to end" and
#: "fused norms in the backward" levers): PyTorch's GroupNorm + SiLU (their outputs leave the
#: channels-last layout) and the pack's fused Triton kernels (``DOODL_FUSED_NORMS``, the earlier name
#: of ``DOODL_FUSED_KERNELS``: since run 16 it also switches the fused GEGLU gates; the row labels
#: keep their run-9 names)
NORM_VARIANTS = [("pytorch norms", False), ("fused norms", True)]


def call_costs(ctx, reps: int) -> tuple[dict, torch.Tensor]:
    """ms per CFG model call replayed from the CUDA graphs (no grad; forward + backward), and the
    input gradient of one fixed call (to compare variants)."""
    from doodl_nodes.bridge.chain import run_in_guider

    out: dict = {}
    grads = []

    def fn(chain):
        g = torch.Generator().manual_seed(0)
        z = torch.randn(ctx["latent_shape"], generator=g).to(chain.device) * float(chain.sigmas[0])
        s = chain.sigmas[len(chain.sigmas) // 3].to(torch.float32)
        zg = z.clone().requires_grad_(True)
        w = torch.randn(ctx["latent_shape"], generator=g).to(chain.device)

        def nograd():
            with torch.no_grad():
                chain.denoise(z, s)

        def grad():
            with torch.enable_grad():
                o = chain.denoise(zg, s)
                return torch.autograd.grad(o, zg, w)[0]

        out["graph_nograd_ms"] = bench._call_timer(nograd, reps) * 1e3
        out["graph_grad_ms"] = bench._call_timer(grad, reps) * 1e3
        grads.append(grad().detach().float().cpu())
        out["graph_stats"] = bench.chain_graph_stats(chain)

    bench.unload_all()
    with bench.graphs_env(True), torch.inference_mode():
        run_in_guider(ctx["model"], ctx["pos"], ctx["neg"], ctx["cfg"], bench.sigmas_for(ctx["model"], 10),
                      ctx["latent_shape"], fn, grad=True, precision="bf16")
    bench.unload_all()
    return out, grads[0]


def section_norms(res, ctx, steps: int, iterations: int, reps: int) -> None:
    reference = None
    for name, fused in NORM_VARIANTS:
        with bench.env_flag("DOODL_FUSED_NORMS", fused):
            costs, grad = call_costs(ctx, reps)
            if reference is None:
                reference = grad
            costs["grad_rel_to_pytorch_norms"] = float((grad - reference).norm() / reference.norm())
            costs["grad_finite_nonzero"] = bool(torch.isfinite(grad).all() and grad.abs().sum() > 0)
            bench.log(f"{name}: no grad {costs['graph_nograd_ms']:.2f} ms, fwd+bwd {costs['graph_grad_ms']:.2f} ms, "
                      f"grad rel {costs['grad_rel_to_pytorch_norms']:.2e}")
            row = run_row(ctx, ctx["model"], steps=steps, iterations=iterations, label=f"sd15 {name}")
        res.put("norms", name, {"calls": costs, "doodl": row})


class CacheLog(logging.Handler):
    """AOTAutograd's cache decisions (why a graph bypasses its on-disk cache) during a run."""

    NAME = "torch._functorch._aot_autograd.autograd_cache"

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if "ypass" in msg or "not cach" in msg.lower():
            self.lines.append(msg[:400])

    def __enter__(self):
        self.logger = logging.getLogger(self.NAME)
        self.old_level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.old_level)


def compile_phases(cache_log: CacheLog | None = None) -> dict:
    """Where this process's compiling went: Dynamo's per-phase seconds (tracing, AOTAutograd,
    inductor, cache lookups), its cache hit/miss counters and AOTAutograd's bypass reasons."""
    from torch._dynamo import utils

    out: dict = {"seconds": {}, "counters": {}, "autograd_cache_log": cache_log.lines[:10] if cache_log else []}
    with contextlib.suppress(Exception):
        table = utils.compile_times(repr="csv", aggregate=True)   # (names, values)
        out["seconds"] = {name: float(value) for name, value in zip(*table)}
    for group in ("aot_autograd", "inductor", "stats"):
        with contextlib.suppress(Exception):
            out["counters"][group] = {k: v for k, v in utils.counters[group].items()
                                      if "cache" in k or k in ("unique_graphs", "calls_captured")}
    return out


def section_compile(args, res) -> None:
    """Two fresh processes, one after the other, sharing inductor's caches on disk."""
    cache = Path(args.out) / "inductor_cache" if args.tiny else Path("/tmp/doodl_inductor_cache")
    env = dict(os.environ, DOODL_TORCH_COMPILE="1", TORCHINDUCTOR_CACHE_DIR=str(cache),
               TORCHINDUCTOR_FX_GRAPH_CACHE="1", TORCHINDUCTOR_AUTOGRAD_CACHE="1")
    for run in ("cold", "warm"):
        out = Path(args.out) / f"compile_{run}.json"
        cmd = [sys.executable, __file__, "--out", args.out, "--comfyui", args.comfyui, "--sections", "compile_once",
               "--iters", str(args.iters), "--compile-result", str(out)] + (["--tiny"] if args.tiny else [])
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.budget_s)
        if p.returncode != 0:
            raise RuntimeError(f"compile {run} process failed (rc {p.returncode}): {p.stderr[-2000:]}")
        row = json.loads(out.read_text())
        row["process_s"] = time.perf_counter() - t0
        res.put("compile", run, row)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out"))
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", str(REPO / ".carry" / "ComfyUI")))
    ap.add_argument("--sections", default="sd15,batch,cards_sd15,sdxl")
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--tiny", action="store_true", help="CPU development run with tiny models")
    ap.add_argument("--tag", default="")
    ap.add_argument("--budget-s", type=float, default=560.0)
    ap.add_argument("--sdxl-cards", type=lambda v: [None if c == "whole" else int(c) for c in v.split(",")],
                    default=[None, 12, 8], help="card sizes of the sdxl section (GiB, or 'whole')")
    ap.add_argument("--sdxl-iters", type=int, default=2)
    ap.add_argument("--compile-result", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    bench.setup_comfyui(args.comfyui, cpu=args.tiny)
    torch.backends.cuda.matmul.allow_tf32 = True
    sections = [s for s in args.sections.split(",") if s]
    it = args.iters
    T10, T50, T30 = (2, 3, 2) if args.tiny else (10, 50, 30)

    if sections == ["compile_once"]:           # the child process of section_compile
        ctx = build_context("sd15", args.tiny, out_dir)
        with CacheLog() as cache_log:
            row = run_row(ctx, ctx["model"], steps=T50, iterations=it, label="sd15 compiled")
        row["compile_phases"] = compile_phases(cache_log)
        Path(args.compile_result).write_text(json.dumps(row, default=str))
        return 0 if row["completed"] else 1

    res = bench.Results(out_dir, f"cards{'_tiny' if args.tiny else ''}{'_' + args.tag if args.tag else ''}")
    res.data["argv"] = sys.argv
    start = time.perf_counter()
    ctx = None
    failed = []
    for section in sections:
        bench.log(f"== {section}")
        try:
            if section == "env":
                bench.section_env(res, torch.device("cpu" if args.tiny else "cuda"))
            elif section in ("sd15", "batch", "cards_sd15", "knobs", "norms"):
                if ctx is None or ctx.get("arch") != "sd15":
                    ctx = None
                    bench.unload_all()
                    ctx = build_context("sd15", args.tiny, out_dir) | {"arch": "sd15"}
                m = ctx["model"]
                if section == "norms":
                    section_norms(res, ctx, T50, it, 3 if args.tiny else 20)
                elif section == "knobs":
                    for name, st in KNOBS:
                        res.put(section, name, run_row(ctx, m, steps=T50, iterations=it if st.get("graphs", True) else 2,
                                                       label=f"sd15 {name}", settings=st))
                elif section == "sd15":
                    for T in (T10, T50):
                        res.put(section, f"T{T}", run_row(ctx, m, steps=T, iterations=it, label="sd15 default"))
                elif section == "batch":
                    for b in (1, 2, 4):
                        res.put(section, f"batch{b}", run_row(ctx, m, steps=T50, iterations=max(2, it - 1), batch=b,
                                                              label="sd15 default"))
                else:
                    for card in (8, 12):
                        res.put(section, f"{card}GiB", run_row(ctx, m, steps=T50, iterations=it, card_gib=card,
                                                               label="sd15 default"))
            elif section == "sdxl":
                ctx = None
                bench.unload_all()
                ctx = build_context("sdxl", args.tiny, out_dir) | {"arch": "sdxl"}
                for card in args.sdxl_cards:
                    res.put(section, f"{card or 'whole'}GiB", run_row(ctx, ctx["model"], steps=T30, iterations=args.sdxl_iters,
                                                                       card_gib=card, label="sdxl 1024 default"))
            elif section == "compile":
                section_compile(args, res)
            else:
                raise ValueError(f"unknown section {section}")
        except Exception as exc:
            res.error(section, exc)
            failed.append(section)
            bench.log(f"section {section} failed: {''.join(traceback.format_exception(exc))[-2000:]}")
    res.data["elapsed_s"] = time.perf_counter() - start
    res.save()
    bench.log(f"done in {res.data['elapsed_s']:.0f} s -> {res.path}")
    for sec, rows in res.data["sections"].items():
        for k, r in rows.items():
            if isinstance(r, dict) and "completed" in r:
                st = r.get("steady") or {}
                print(f"{sec:10s} {k:8s} completed={r['completed']!s:5s} {r.get('median_iteration_s', float('nan')):7.3f} s/it "
                      f"peak {st.get('peak_alloc_gib', float('nan')):6.2f} GiB  first {r.get('first_iteration_s', float('nan')):6.1f} s "
                      f"plan {(r.get('memory_plan') or {}).get('choices')}")
    if failed:
        print("FAILED sections:", failed)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
