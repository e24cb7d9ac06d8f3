"""GPU benchmark: DOODL iteration time and memory at real model sizes, inside an in-process ComfyUI.

Full-size SD1.5 / SDXL UNets and the SD VAE are built through ComfyUI's own loaders
(``comfy.sd.load_diffusion_model_state_dict``, ``comfy.sd.VAE``) from state dicts of the real shapes
filled with small random values (speed and memory do not depend on the values; the scale keeps
activations finite). The scorer is the pack's ``AestheticScorer``: a CLIP ViT-L/14-sized image tower
(transformers, random weights, bf16) with a LAION-layout linear head loaded by
``load_aesthetic_head``. Everything "ours" goes through the pack's own entry points (``run_doodl``,
``run_in_guider``, ``generate_latent``/``invert_latent``), under ``torch.inference_mode()`` like
ComfyUI's executor, so the numbers are what users run.

Sections (``--sections``, in this order by default; a time budget skips what does not fit):

``env``         device, versions, measured bf16 matmul peak
``micro``       one CFG model call: eager vs CUDA graph, without/with grad, fp16/bf16/channels_last
``doodl``       seconds per DOODL iteration and peak memory (T, grad mode, graphs, dtype, options)
``sampling``    EDICT generation vs ComfyUI's Euler/DDIM at equal steps
``roundtrip``   EDICTInversion -> EDICTGenerate round-trip error, model in bf16
``flops``       FLOPs per model call / objective (torch FlopCounterMode) -> per-iteration floor
``official``    "official-style" configuration of our code (fp16, separate cond/uncond, dW, both images)
``plain``       plain autograd through the whole chain, increasing T until out of memory
``sdxl``        SDXL 1024x1024, T=30

Usage (device)::

    python benchmarks/bench_doodl.py --out $OUT --comfyui .carry/ComfyUI --model sd15
    python benchmarks/bench_doodl.py --out $OUT --comfyui .carry/ComfyUI --model sdxl

``--tiny`` runs every code path on the CPU with tiny models (development only; numbers meaningless);
the test suite runs it that way (``tests/benchmarks/test_bench_tiny.py``). Any section or
configuration that raises is recorded under "errors" in the results and makes the run exit 1
(after the other sections have run).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch._dynamo

REPO = Path(__file__).resolve().parents[1]
GiB = 1024 ** 3

SD15_UNET = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True,
                 legacy=False, adm_in_channels=None, in_channels=4, model_channels=320,
                 num_res_blocks=[2, 2, 2, 2], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 channel_mult=[1, 2, 4, 4], transformer_depth_middle=1, use_linear_in_transformer=False,
                 context_dim=768, num_heads=8, transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                 use_temporal_attention=False, use_temporal_resblock=False)
SDXL_UNET = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True,
                 legacy=False, num_classes="sequential", adm_in_channels=2816, in_channels=4,
                 model_channels=320, num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10],
                 channel_mult=[1, 2, 4], transformer_depth_middle=10, use_linear_in_transformer=True,
                 context_dim=2048, num_head_channels=64, transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                 use_temporal_attention=False, use_temporal_resblock=False)
SD_VAE = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128,
              ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)


# ----------------------------------------------------------------------------------------------
# small helpers

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Results:
    """Collects results and writes them (JSON) after every section."""

    def __init__(self, out_dir: Path, tag: str):
        self.path = out_dir / f"results_{tag}.json"
        self.data: dict = {"sections": {}, "errors": {}, "skipped": []}
        self.rows: list[str] = []

    def put(self, section: str, key: str, value) -> None:
        self.data["sections"].setdefault(section, {})[key] = value
        self.save()

    def error(self, section: str, exc: BaseException) -> None:
        self.data["errors"][section] = "".join(traceback.format_exception(exc))[-4000:]
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1, default=str))


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak():
    if torch.cuda.is_available():
        sync()
        torch.cuda.reset_peak_memory_stats()


def peak() -> dict:
    if not torch.cuda.is_available():
        return {}
    sync()
    return {"peak_alloc_gib": torch.cuda.max_memory_allocated() / GiB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / GiB}


def unload_all():
    import comfy.model_management as mm

    mm.unload_all_models()
    mm.soft_empty_cache(True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def env_flag(name: str, on: bool):
    """Set the environment switch ``name`` to "1"/"0" within the context, then restore it."""
    old = os.environ.get(name)
    os.environ[name] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def compile_env(on: bool):
    return env_flag("DOODL_TORCH_COMPILE", on)


def graphs_env(on: bool):
    return env_flag("DOODL_CUDA_GRAPHS", on)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


# ----------------------------------------------------------------------------------------------
# ComfyUI + models

def setup_comfyui(root: str, cpu: bool):
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(Path(root).resolve()))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    import comfy.model_management  # noqa: F401  (reads args)
    import comfy.sd  # noqa: F401
    import comfy.samplers  # noqa: F401
    import comfy.sample  # noqa: F401


def _random_state_dict(template: dict, device, dtype, seed: int, gain: float = 0.5) -> dict:
    """Random tensors with the template's shapes: weights N(0, gain^2/fan_in), norm scales ~1,
    biases small. Made directly on ``device`` in ``dtype`` (fast on the GPU)."""
    g = torch.Generator(device=device).manual_seed(seed)
    out = {}
    with torch.inference_mode(False), torch.no_grad():
        for k, v in template.items():
            shape = tuple(v.shape)
            t = torch.empty(shape, device=device, dtype=torch.float32)
            if len(shape) >= 2:
                fan_in = max(1, int(torch.Size(shape[1:]).numel()))
                t.normal_(0.0, gain / fan_in ** 0.5, generator=g)
            elif k.endswith("weight"):
                t.normal_(1.0, 0.02, generator=g)
            else:
                t.normal_(0.0, 0.02, generator=g)
            out[k] = t.to(dtype)
    return out


def build_unet(arch: str, device, dtype=None, seed: int = 0, channels_last: bool = False):
    """A ModelPatcher from ComfyUI's ``load_diffusion_model_state_dict`` (loaded in inference mode)."""
    import comfy.cli_args
    import comfy.ops
    import comfy.sd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    cfg = {"sd15": SD15_UNET, "sdxl": SDXL_UNET}[arch]
    net = UNetModel(**cfg, dtype=torch.float16, device="meta", operations=comfy.ops.disable_weight_init)
    template = net.state_dict()
    del net
    sd = _random_state_dict(template, device, torch.float16, seed)
    options = {} if dtype is None else {"dtype": dtype}
    old = getattr(comfy.cli_args.args, "force_channels_last", False)
    comfy.cli_args.args.force_channels_last = channels_last
    try:
        with torch.inference_mode():
            model = comfy.sd.load_diffusion_model_state_dict(sd, model_options=options)
    finally:
        comfy.cli_args.args.force_channels_last = old
    del sd
    if model is None:
        raise RuntimeError(f"ComfyUI did not detect the {arch} UNet")
    return model


def build_vae(device, seed: int = 1):
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    with torch.device("meta"):
        template = AutoencoderKL(ddconfig=SD_VAE, embed_dim=4).state_dict()
    sd = _random_state_dict(template, device, torch.float32, seed)
    with torch.inference_mode():
        vae = comfy.sd.VAE(sd=sd)
    del sd
    return vae


def build_tower(device, tiny: bool = False):
    """A ViT-L/14-sized CLIP image tower (transformers, random weights; bf16, or fp32 when tiny) as
    the pack's image encoder."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from doodl_nodes.scorers.encoders import HFCLIPImageEncoder

    if tiny:
        cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=28, patch_size=14, projection_dim=768)
    else:
        cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                               num_attention_heads=16, image_size=224, patch_size=14, projection_dim=768)
    torch.manual_seed(0)
    with torch.device(device):
        tower = CLIPVisionModelWithProjection(cfg)
    tower = tower.to(dtype=torch.float32 if tiny else torch.bfloat16).eval()
    return HFCLIPImageEncoder(tower.vision_model, tower.visual_projection, cfg.image_size,
                              label="ViT-L/14-sized (random)")


def build_scorer(device, tmp: Path, tiny: bool = False):
    """AestheticScorer: ViT-L/14-sized CLIP image tower (random, bf16) + linear head via the loader."""
    from safetensors.torch import save_file

    from doodl_nodes.scorers.aesthetic import AestheticScorer, load_aesthetic_head

    encoder = build_tower(device, tiny)
    head_path = tmp / "bench_aesthetic_head_vit_l_14_linear.safetensors"
    g = torch.Generator().manual_seed(3)
    save_file({"weight": torch.randn(1, 768, generator=g) * 0.5, "bias": torch.tensor([5.0])}, str(head_path))
    head = load_aesthetic_head(head_path)
    return AestheticScorer(encoder, head, target=None, clamp=False)


def conditioning(arch: str, seed: int, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode(False):
        if arch == "sdxl":
            cross = torch.randn((1, 77, 2048), generator=g)
            pooled = torch.randn((1, 1280), generator=g)
            return [[cross, {"pooled_output": pooled, "width": 1024, "height": 1024,
                             "target_width": 1024, "target_height": 1024}]]
        cross = torch.randn((1, 77, 768), generator=g)
        return [[cross, {"pooled_output": torch.randn((1, 768), generator=g)}]]


def sigmas_for(model, steps: int, scheduler: str = "normal"):
    import comfy.samplers

    with torch.inference_mode():
        return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)


# ----------------------------------------------------------------------------------------------
# DOODL runs

class GraphStats(logging.Handler):
    """The CUDA-graph counters of the runs inside the context, read from the debug line the pack
    logs when a run's graphs close ("DOODL: CUDA graph counters of this run: {...}"); ``last`` is
    the last run's dict, empty when no run used graphs (CPU, graphs off or blocked)."""

    PREFIX = "DOODL: CUDA graph counters"

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.last: dict = {}

    def emit(self, record):
        if record.msg.startswith(self.PREFIX) and record.args:
            self.last = dict(record.args[0] if isinstance(record.args, tuple) else record.args)

    def __enter__(self):
        self.logger = logging.getLogger("doodl")
        self.old_level = self.logger.level
        self.logger.addHandler(self)
        if self.logger.getEffectiveLevel() > logging.DEBUG:
            self.logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self.old_level)


def chain_graph_stats(chain) -> dict | None:
    """The live graph counters of a chain inside ``run_in_guider`` (None: no graphs this run)."""
    return dict(chain.graphs.stats) if chain.graphs is not None else None


@contextlib.contextmanager
def iteration_clock(record: dict, peak_fn=None, empty_cache: bool = True):
    """Timestamps of the per-iteration callback of run_doodl (the loss is synced before it runs).
    After the first iteration the peak-memory counters are reset, so ``steady`` peaks exclude the
    one-time work of iteration 0 (CUDA-graph capture and its eager warm-up). ``peak_fn``: what
    records the first iteration's peak (default :func:`peak`); ``empty_cache``: release the
    allocator's cached blocks before the reset."""
    from doodl_nodes.bridge import doodl_run

    original = doodl_run.send_event
    record["t"] = []

    def hook(event, data, node_id=None):
        if event == "doodl.iteration":
            sync()
            record["t"].append(time.perf_counter())
            if len(record["t"]) == 1:
                record["first_peak"] = (peak_fn or peak)()
                if empty_cache and torch.cuda.is_available():
                    torch.cuda.empty_cache()
                reset_peak()
        return original(event, data, node_id)

    doodl_run.send_event = hook
    try:
        yield
    finally:
        doodl_run.send_event = original


def run_doodl_timed(ctx, model, *, steps: int, iterations: int, grad_mode="checkpoint", score_images="both",
                    decoder_ckpt=False, graphs=True, precision="bf16", model_patcher=None, crops=None,
                    label="", scorer=None, compile=False):
    from doodl_nodes.bridge.doodl_run import DoodlRequest, run_doodl
    from doodl_nodes.core.crops import CropConfig
    from doodl_nodes.core.optimize import DoodlConfig

    m = model if model_patcher is None else model_patcher
    sig = sigmas_for(model, steps)
    cfgd = DoodlConfig(iterations=iterations, grad_mode=grad_mode, seed=0, evaluate_final=False)
    req = DoodlRequest(config=cfgd, crops=crops or CropConfig(), score_images=score_images, precision=precision,
                       decoder_checkpointing=decoder_ckpt, strip_frames=2)
    unload_all()
    rec: dict = {}
    reset_peak()
    t0 = time.perf_counter()
    with graphs_env(graphs), compile_env(compile), iteration_clock(rec), GraphStats() as stats, \
            torch.inference_mode():
        run_doodl(m, ctx["vae"], ctx["pos"], ctx["neg"], ctx["cfg"], sig, scorer or ctx["scorer"], req,
                  latent={"samples": torch.zeros(ctx["latent_shape"])}, seed=0)
    total = time.perf_counter() - t0
    ts = rec["t"]
    per_iter = [b - a for a, b in zip(ts, ts[1:])]
    out = {"label": label, "steps": steps, "iterations": iterations, "grad_mode": grad_mode,
           "score_images": score_images, "decoder_checkpointing": decoder_ckpt, "graphs": graphs,
           # the pack always lays the gradient graphs' bf16 weight copies out channels-last now
           "precision": precision, "shadow_channels_last": True, "torch_compile": compile,
           "scorer": (scorer or ctx["scorer"]).name, "first_iteration_s": (ts[0] - t0) if ts else None,
           "iteration_s": per_iter, "median_iteration_s": median(per_iter), "total_s": total,
           "steady": peak(), "incl_first_iteration": rec.get("first_peak"),
           "graph_stats": stats.last}
    log(f"DOODL {label} T={steps} {grad_mode} graphs={graphs}: {out['median_iteration_s']:.3f} s/it, "
        f"steady peak {out['steady'].get('peak_alloc_gib', float('nan')):.2f} GiB alloc "
        f"({out['steady'].get('peak_reserved_gib', float('nan')):.2f} reserved); graphs {out['graph_stats']}")
    return out


# ----------------------------------------------------------------------------------------------
# sections

def run_configs(res: Results, ctx, section: str, cfgs, iterations: int, over_budget,
                steps_in_key: bool = True) -> None:
    """Time each DOODL configuration (``run_doodl_timed`` arguments plus ``model`` and optionally
    ``iterations``) into ``section``: a failure is recorded and the next one runs; what the time
    budget leaves out is listed under "skipped"."""
    for i, c in enumerate(cfgs):
        name = f"{c['label']} T{c['steps']}" if steps_in_key else c["label"]
        if over_budget():
            res.data["skipped"].append(f"{section}:{c['label']}" + (f":T{c['steps']}" if steps_in_key else ""))
            continue
        c = dict(c)
        mdl = c.pop("model")
        it = c.pop("iterations", iterations)
        try:
            r = run_doodl_timed(ctx, mdl, iterations=it, **c)
        except Exception as exc:  # record, go on with the next configuration; the run exits 1
            r = {"label": c["label"], "error": "".join(traceback.format_exception(exc))[-3000:]}
            res.error(f"{section}:{i:02d} {name}", exc)
            log(f"{section} config failed: {r['error'][-800:]}")
            unload_all()
        res.put(section, f"{i:02d} {name}", r)


def section_env(res: Results, device):
    import comfy.model_management as mm

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "platform": platform.platform(), "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "comfy_attention": "pytorch SDPA" if mm.pytorch_attention_enabled() else "other",
            "cudnn_benchmark": torch.backends.cudnn.benchmark}
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except Exception:
        pass
    try:
        import comfyui_version
        info["comfyui"] = comfyui_version.__version__
    except Exception:
        pass
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, sm_count=p.multi_processor_count, memory_gib=p.total_memory / GiB,
                    capability=f"{p.major}.{p.minor}")
        n = 8192
        a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        sync()
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        ev[0].record()
        reps = 20
        for _ in range(reps):
            a @ b
        ev[1].record()
        sync()
        ms = ev[0].elapsed_time(ev[1]) / reps
        info["matmul_bf16_8192_tflops"] = 2 * n ** 3 / (ms / 1e3) / 1e12
        del a, b
        torch.cuda.empty_cache()
    res.put("env", "info", info)
    log(f"env {info}")


def _call_timer(fn, reps: int) -> float:
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps


def _profile_gpu_time(fn) -> dict:
    """Wall time of one call and the summed CUDA kernel time inside it (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        sync()
        wall = time.perf_counter() - t0
    from torch.autograd import DeviceType

    kern = 0.0
    rows = []
    for e in prof.key_averages():
        if getattr(e, "device_type", None) != DeviceType.CUDA:
            continue  # CPU-side operator events also carry their kernels' time: skip them
        dt = getattr(e, "self_device_time_total", 0) or 0
        if dt:
            kern += dt
            rows.append((dt, e.key, e.count))
    rows.sort(reverse=True)
    return {"wall_ms": wall * 1e3, "kernel_ms": kern / 1e3,
            "top": [{"us": r[0], "name": r[1][:90], "count": r[2]} for r in rows[:25]]}


def section_micro(res: Results, ctx, models: dict, reps: int):
    """Per CFG-call cost, eager vs CUDA graph, no grad and fwd+bwd, for several model dtypes."""
    from doodl_nodes.bridge.chain import run_in_guider

    for name, model in models.items():
        out = {}

        def fn(chain):
            g = torch.Generator().manual_seed(0)
            z = torch.randn(ctx["latent_shape"], generator=g).to(chain.device) * float(chain.sigmas[0])
            s = chain.sigmas[len(chain.sigmas) // 3].to(torch.float32)
            s_in = s.reshape(1).expand(z.shape[0])
            zg = z.clone().requires_grad_(True)

            def eager_nograd():
                with torch.no_grad():
                    chain.call_model(z, s_in, False)

            def graph_nograd():
                with torch.no_grad():
                    chain.denoise(z, s)

            def eager_grad():
                with torch.enable_grad():
                    o = chain.call_model(zg, s_in, True)
                    torch.autograd.grad(o, zg, torch.ones_like(o))

            def graph_grad():
                with torch.enable_grad():
                    o = chain.denoise(zg, s)
                    torch.autograd.grad(o, zg, torch.ones_like(o))

            with torch.no_grad():
                a = chain.call_model(z, s_in, False)
                b = chain.denoise(z, s)
                out["graph_vs_eager_nograd_maxabs"] = float((a - b).abs().max())
            with torch.enable_grad():
                o1 = chain.call_model(zg, s_in, True)
                g1, = torch.autograd.grad(o1, zg, torch.ones_like(o1))
                o2 = chain.denoise(zg, s)
                g2, = torch.autograd.grad(o2, zg, torch.ones_like(o2))
                out["graph_vs_eager_grad_rel"] = float((g1 - g2).norm() / g1.norm().clamp_min(1e-30))
            out["eager_nograd_ms"] = _call_timer(eager_nograd, reps) * 1e3
            out["graph_nograd_ms"] = _call_timer(graph_nograd, reps) * 1e3
            out["eager_grad_ms"] = _call_timer(eager_grad, max(2, reps // 2)) * 1e3
            out["graph_grad_ms"] = _call_timer(graph_grad, max(2, reps // 2)) * 1e3
            if chain.device.type == "cuda":
                out["profile_eager_nograd"] = _profile_gpu_time(eager_nograd)
                out["profile_eager_grad"] = _profile_gpu_time(eager_grad)
            out["graph_stats"] = chain_graph_stats(chain)
            if chain.device.type == "cuda":
                out["mem_alloc_after_gib"] = torch.cuda.memory_allocated() / GiB
                out["mem_reserved_after_gib"] = torch.cuda.memory_reserved() / GiB
            out["model_dtype"] = str(chain.base_model.get_dtype())
            out["autocast_bf16_on_grad"] = chain.bf16_autocast

        unload_all()
        with graphs_env(True), torch.inference_mode():
            run_in_guider(model, ctx["pos"], ctx["neg"], ctx["cfg"], ctx["sigmas10"], ctx["latent_shape"], fn,
                          grad=True, precision="bf16")
        res.put("micro", name, out)
        log(f"micro {name}: " + ", ".join(f"{k}={v:.3g}" for k, v in out.items() if isinstance(v, float)))


def section_sampling(res: Results, ctx, model, steps_list, reps: int, tag="sd15"):
    import comfy.sample
    import comfy.samplers

    from doodl_nodes.bridge.edict_ops import generate_latent

    latent = torch.zeros(ctx["latent_shape"])
    unload_all()
    for steps in steps_list:
        sig = sigmas_for(model, steps)
        row = {}
        for name in ("euler", "ddim"):
            sampler = comfy.samplers.sampler_object(name)

            def run():
                with torch.inference_mode():
                    noise = comfy.sample.prepare_noise(latent, 0)
                    comfy.sample.sample_custom(model, noise, ctx["cfg"], sampler, sig, ctx["pos"], ctx["neg"],
                                               latent, disable_pbar=True, seed=0)
            row[f"{name}_s"] = _call_timer(run, reps)
        for graphs in (True, False):
            stats = GraphStats()

            def run_edict():
                with graphs_env(graphs), stats, torch.inference_mode():
                    generate_latent(model, ctx["pos"], ctx["neg"], ctx["cfg"], sig,
                                    latent={"samples": latent}, seed=0)
            row[f"edict_{'graphs' if graphs else 'eager'}_s"] = _call_timer(run_edict, reps)
            row[f"edict_{'graphs' if graphs else 'eager'}_stats"] = stats.last
        row["edict_graphs_over_euler"] = row["edict_graphs_s"] / row["euler_s"]
        row["edict_eager_over_euler"] = row["edict_eager_s"] / row["euler_s"]
        res.put("sampling", f"{tag}_T{steps}", row)
        log(f"sampling {tag} T={steps}: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items() if isinstance(v, float)))


def section_roundtrip(res: Results, ctx, model_bf16, steps: int):
    from doodl_nodes.bridge.chain import run_in_guider
    from doodl_nodes.bridge.edict_ops import generate_latent, invert_latent
    from doodl_nodes.core.edict import edict_invert, edict_sample

    g = torch.Generator().manual_seed(5)
    lat = torch.randn(ctx["latent_shape"], generator=g) * 5.0  # raw VAE-space "encoded image"
    sig = sigmas_for(model_bf16, steps)
    for graphs in (True, False):
        unload_all()
        with graphs_env(graphs), torch.inference_mode():
            el, _ = invert_latent(model_bf16, ctx["pos"], ctx["neg"], ctx["cfg"], sig, {"samples": lat})
            back = generate_latent(model_bf16, ctx["pos"], ctx["neg"], ctx["cfg"], sig, edict_latent=el)
        node_err = float((back.float() - lat).abs().max())
        state = {}

        def fn(chain):
            x0 = chain.base_model.process_latent_in(lat.to(chain.device)).double()
            xT, yT = edict_invert(chain.denoise, x0, x0.clone(), chain.sigmas)
            xr, yr = edict_sample(chain.denoise, xT, yT, chain.sigmas)
            state["x"] = float((xr - x0).abs().max())
            state["y"] = float((yr - x0).abs().max())
            state["dtype"] = str(chain.base_model.get_dtype())

        with graphs_env(graphs), torch.inference_mode():
            run_in_guider(model_bf16, ctx["pos"], ctx["neg"], ctx["cfg"], sig, ctx["latent_shape"], fn)
        row = {"steps": steps, "graphs": graphs, "node_roundtrip_maxabs_vae_space_float32_output": node_err,
               "float64_state_roundtrip_maxabs_model_space_x": state["x"],
               "float64_state_roundtrip_maxabs_model_space_y": state["y"], "model_dtype": state["dtype"]}
        res.put("roundtrip", f"T{steps}_graphs{int(graphs)}", row)
        log(f"roundtrip {row}")


def section_flops(res: Results, ctx, model):
    from torch.utils.flop_counter import FlopCounterMode

    from doodl_nodes.bridge.chain import run_in_guider
    from doodl_nodes.bridge.vae import decode_differentiable
    from doodl_nodes.core.crops import CropConfig

    out = {}

    def fn(chain):
        z = torch.randn(ctx["latent_shape"], device=chain.device) * 3
        s = chain.sigmas[2]
        with FlopCounterMode(display=False) as fc:
            with torch.no_grad():
                chain.denoise(z, s)
        out["cfg_call_fwd"] = fc.get_total_flops()
        zg = z.clone().requires_grad_(True)
        with FlopCounterMode(display=False) as fc:
            with torch.enable_grad():
                o = chain.denoise(zg, s)
                torch.autograd.grad(o, zg, torch.ones_like(o))
        out["cfg_call_fwd_bwd"] = fc.get_total_flops()
        x0 = torch.randn(ctx["latent_shape"], device=chain.device, dtype=torch.float64)
        gen = torch.Generator().manual_seed(0)
        for n_img in (2, 1):
            xg = torch.cat([x0] * n_img).requires_grad_(True)
            with FlopCounterMode(display=False) as fc:
                with torch.enable_grad():
                    img = decode_differentiable(ctx["vae"], chain.latent_format, xg)
                    loss = ctx["scorer"].loss(img, CropConfig(), gen).sum()
                    torch.autograd.grad(loss, xg)
            out[f"objective_fwd_bwd_{n_img}img"] = fc.get_total_flops()
            if chain.device.type == "cuda":
                for ckpt in (False, True):
                    sync()
                    base = torch.cuda.memory_allocated()
                    reset_peak()
                    t0 = time.perf_counter()
                    with torch.enable_grad():
                        img = decode_differentiable(ctx["vae"], chain.latent_format, xg, checkpoint=ckpt)
                        loss = ctx["scorer"].loss(img, CropConfig(), gen).sum()
                        torch.autograd.grad(loss, xg)
                    sync()
                    key = f"objective_{n_img}img_decoder_ckpt{int(ckpt)}"
                    out[key + "_extra_peak_gib"] = (torch.cuda.max_memory_allocated() - base) / GiB
                    out[key + "_s"] = time.perf_counter() - t0
            del img, loss

    ctx["scorer"].to(torch.device(ctx["device"]))
    unload_all()
    with graphs_env(False), torch.inference_mode():
        run_in_guider(model, ctx["pos"], ctx["neg"], ctx["cfg"], ctx["sigmas10"], ctx["latent_shape"], fn,
                      grad=True, precision="bf16", extra_patchers=[ctx["vae"].patcher],
                      extra_modules=[ctx["vae"].first_stage_model] + ctx["scorer"].modules())
    for T in (10, 25, 50):
        out[f"iteration_checkpoint_T{T}"] = (2 * T * (out["cfg_call_fwd"] + out["cfg_call_fwd_bwd"])
                                            + out["objective_fwd_bwd_2img"])
        out[f"iteration_reversible_T{T}"] = (2 * T * (2 * out["cfg_call_fwd"] + out["cfg_call_fwd_bwd"])
                                            + out["objective_fwd_bwd_2img"])
        out[f"forward_chain_T{T}"] = 2 * T * out["cfg_call_fwd"]
    res.put("flops", ctx["arch"], out)
    log("flops " + ", ".join(f"{k}={v / 1e12:.2f}T" if v > 1e6 else f"{k}={v:.3f}" for k, v in out.items()))


class _CallWithWeightGrads(torch.autograd.Function):
    """One model call whose backward also computes the weight gradients and accumulates them into
    ``.grad`` (what memcnn did for the released code, whose UNet weights were not frozen). The
    pack's gradient walker asks autograd for the latent's gradient only, which prunes dW; this
    function's backward asks for both."""

    @staticmethod
    def forward(ctx, x, run, params):
        with torch.enable_grad():
            for q in params:
                q.requires_grad_(True)
            xd = x.detach().requires_grad_(True)
            out = run(xd)
        ctx.graph = (xd, out, params)
        return out.detach()

    @staticmethod
    def backward(ctx, g):
        xd, out, params = ctx.graph
        del ctx.graph
        grads = torch.autograd.grad(out, [xd] + params, g, allow_unused=True)
        for q, gq in zip(params, grads[1:]):
            if gq is not None:
                q.grad = gq if q.grad is None else q.grad + gq
        return grads[0], None, None


def split_cfg(apply_model, args):
    """One UNet call per batch entry (separate cond and uncond calls, as the released code)."""
    x, t, c = args["input"], args["timestep"], args["c"]
    n = x.shape[0]
    outs = []
    for i in range(n):
        ci = {k: (v[i:i + 1] if torch.is_tensor(v) and v.shape[:1] == (n,) else v) for k, v in c.items()}
        outs.append(apply_model(x[i:i + 1], t[i:i + 1], **ci))
    return torch.cat(outs)


def official_style_wrapper(apply_model, args):
    """ComfyUI ``model_function_wrapper`` (public ComfyUI API; nothing of the pack is patched) that
    runs our code the way the released DOODL ran: cond and uncond as separate UNet calls, the
    differentiable pass in the model's own dtype (fp16: bf16 autocast off inside the call), and on
    calls with grad the UNet weight gradients computed and accumulated every step."""
    x = args["input"]
    with torch.autocast(device_type=x.device.type, enabled=False):
        if not (torch.is_grad_enabled() and x.requires_grad):
            return split_cfg(apply_model, args)
        base = apply_model.__self__   # ComfyUI's BaseModel (the wrapper gets its bound apply_model)
        params = [q for q in base.diffusion_model.parameters() if q.is_floating_point()]
        return _CallWithWeightGrads.apply(x, lambda xd: split_cfg(apply_model, {**args, "input": xd}), params)


def _release_weight_grads(model) -> int:
    """Freeze the UNet again and drop its ``.grad``s; returns how many weights had one."""
    n = 0
    for q in model.model.diffusion_model.parameters():
        n += q.grad is not None
        q.requires_grad_(False)
        q.grad = None
    return n


def section_official(res: Results, ctx, model, steps_list, iterations):
    m = model.clone()
    m.set_model_unet_function_wrapper(official_style_wrapper)
    for steps in steps_list:
        try:
            out = run_doodl_timed(ctx, model, model_patcher=m, steps=steps, iterations=iterations,
                                  score_images="both", graphs=False, label="official-style")
        finally:
            with_grad = _release_weight_grads(model)
        out["unet_weights_with_grad"] = with_grad   # > 0: dW really was computed
        out["note"] = ("fp16 differentiable pass, cond/uncond as separate UNet calls, UNet weights "
                       "requiring grad with dW accumulated every step, both EDICT images decoded")
        res.put("official", f"T{steps}", out)


def section_plain(res: Results, ctx, model, steps_list):
    from doodl_nodes.bridge.chain import run_in_guider
    from doodl_nodes.bridge.vae import decode_differentiable
    from doodl_nodes.core.crops import CropConfig
    from doodl_nodes.core.edict import edict_sample

    ctx["scorer"].to(torch.device(ctx["device"]))
    for steps in steps_list:
        sig = sigmas_for(model, steps)
        row = {"steps": steps}

        def fn(chain):
            noise = torch.randn(ctx["latent_shape"], generator=torch.Generator().manual_seed(0))
            x = chain.initial_latent(noise).requires_grad_(True)
            gen = torch.Generator().manual_seed(1)
            t0 = time.perf_counter()
            with torch.enable_grad():
                x0, y0 = edict_sample(chain.denoise, x, x, chain.sigmas)
                img = decode_differentiable(ctx["vae"], chain.latent_format, torch.cat([x0, y0]))
                loss = ctx["scorer"].loss(img, CropConfig(), gen).mean()
                (gx,) = torch.autograd.grad(loss, x)
            sync()
            row["seconds"] = time.perf_counter() - t0
            row["grad_finite"] = bool(torch.isfinite(gx).all())

        unload_all()
        reset_peak()
        try:
            with torch.inference_mode():
                run_in_guider(model, ctx["pos"], ctx["neg"], ctx["cfg"], sig, ctx["latent_shape"], fn, grad=True,
                              precision="bf16", extra_patchers=[ctx["vae"].patcher],
                              extra_modules=[ctx["vae"].first_stage_model] + ctx["scorer"].modules(),
                              cuda_graphs=False)
            row.update(peak())
            row["ok"] = True
        except torch.OutOfMemoryError as exc:
            row.update(peak())
            row["ok"] = False
            row["error"] = str(exc).splitlines()[0][:300]
        res.put("plain", f"T{steps}", row)
        log(f"plain autograd {row}")
        unload_all()
        if not row["ok"]:
            break


# ----------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out"))
    ap.add_argument("--comfyui", default=None,
                    help="ComfyUI root (default: found as the tests find it: COMFYUI_PATH, the host "
                         "ComfyUI, or .cache/ComfyUI from tests/comfyui_bootstrap.py)")
    ap.add_argument("--model", choices=("sd15", "sdxl"), default="sd15")
    ap.add_argument("--sections", default="")
    ap.add_argument("--budget-s", type=float, default=540.0)
    ap.add_argument("--tiny", action="store_true", help="CPU development run with tiny models")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    ap.add_argument("--channels-last", action="store_true", help="also measure a channels_last model in micro")
    args = ap.parse_args(argv)

    if args.comfyui is None:
        sys.path.insert(0, str(REPO))
        from tests.comfyui_bootstrap import find_root

        root, why = find_root()
        if root is None:
            ap.error(f"--comfyui not given and {why}")
        args.comfyui = str(root)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        # tiny models gain nothing from more threads, and on a shared CPU spinning OpenMP threads
        # slow them down many times (the test suite measured ~25x)
        torch.set_num_threads(1)
    setup_comfyui(args.comfyui, cpu=args.tiny)
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cpu" if args.tiny else "cuda")
    res = Results(out_dir, f"{args.model}{'_tiny' if args.tiny else ''}{'_' + args.tag if args.tag else ''}")
    res.data["argv"] = sys.argv
    start = time.perf_counter()
    default_sections = {
        "sd15": "env,micro,doodl,sampling,roundtrip,flops,official,plain",
        "sdxl": "env,sdxl",
    }[args.model]
    sections = [s for s in (args.sections or default_sections).split(",") if s]

    # ---- models
    t0 = time.perf_counter()
    if args.tiny:
        import importlib.util

        spec = importlib.util.spec_from_file_location("doodl_tiny_models", REPO / "tests" / "comfy" / "tiny_models.py")
        tiny = importlib.util.module_from_spec(spec)
        sys.modules["doodl_tiny_models"] = tiny
        spec.loader.exec_module(tiny)
        load_tiny_model, tiny_vae = tiny.load_tiny_model, tiny.tiny_vae

        with torch.inference_mode():
            model = load_tiny_model("eps")
            model_bf16 = load_tiny_model("eps")
            vae = tiny_vae("eps")
        latent_shape = (1, 4, 8, 8)
        arch = "tiny"
    else:
        arch = args.model
        model = build_unet(arch, device)
        model_bf16 = build_unet(arch, device, dtype=torch.bfloat16, seed=0)
        vae = build_vae(device)
        latent_shape = (1, 4, 64, 64) if arch == "sd15" else (1, 4, 128, 128)
    scorer = build_scorer(device, out_dir, tiny=args.tiny)
    ctx = {"vae": vae, "scorer": scorer, "pos": conditioning(arch, 1), "neg": conditioning(arch, 2),
           "cfg": 7.5, "latent_shape": latent_shape, "device": str(device), "arch": arch,
           "sigmas10": sigmas_for(model, 10)}
    res.put("setup", "build_s", time.perf_counter() - t0)
    log(f"models built in {time.perf_counter() - t0:.1f} s")

    T_list = [2] if args.tiny else [10, 25, 50]
    iters = args.iters
    reps = 2 if args.tiny else 10

    def over_budget():
        return time.perf_counter() - start > args.budget_s

    def doodl_configs():
        from doodl_nodes.scorers.symmetry import SymmetryScorer

        sym = SymmetryScorer()
        big = T_list[-1]
        fp16 = "fp16 weights (ComfyUI default), graphs"
        cfgs = [dict(model=model, steps=T, label=fp16) for T in T_list]
        cfgs += [dict(model=model, steps=T, grad_mode="reversible", label=fp16 + ", reversible") for T in T_list]
        cfgs += [dict(model=model_bf16, steps=T, label="bf16 weights, graphs") for T in T_list]
        cfgs += [dict(model=model, steps=big, score_images="x", label=fp16 + ", score x only"),
                 dict(model=model, steps=big, score_images="x", decoder_ckpt=True,
                      label=fp16 + ", score x only, decoder checkpointing")]
        cfgs += [dict(model=model, steps=T, score_images="x", decoder_ckpt=True, scorer=sym,
                      label=fp16 + ", symmetry scorer (no CLIP), score x, decoder ckpt") for T in (T_list[0], big)]
        cfgs += [dict(model=model, steps=T, graphs=False, iterations=2,
                      label="fp16 weights, eager (straightforward)") for T in T_list]
        cfgs += [dict(model=model_bf16, steps=big, graphs=False, iterations=2, label="bf16 weights, eager")]
        return cfgs

    for section in sections:
        if over_budget():
            res.data["skipped"].append(section)
            log(f"skip {section}: over budget")
            continue
        log(f"== {section}")
        try:
            if section == "env":
                section_env(res, device)
            elif section == "micro":
                models = {"fp16_weights": model, "bf16_weights": model_bf16}
                if args.channels_last and not args.tiny:
                    models["fp16_weights_channels_last"] = build_unet(arch, device, channels_last=True)
                section_micro(res, ctx, models, reps)
                for k in list(models):
                    if k.endswith("channels_last"):
                        del models[k]
                unload_all()
            elif section == "quick":
                for c in (dict(model=model_bf16, steps=T_list[0], label="bf16 weights, graphs"),
                          dict(model=model, steps=T_list[0], graphs=False, iterations=2,
                               label="fp16 weights, eager (straightforward)")):
                    c = dict(c)
                    mdl = c.pop("model")
                    it = c.pop("iterations", iters)
                    res.put("quick", f"{c['label']} T{c['steps']}", run_doodl_timed(ctx, mdl, iterations=it, **c))
            elif section == "compiled":
                fp16 = "fp16 weights (ComfyUI default), graphs + torch.compile"
                cfgs = [dict(model=model, steps=T_list[-1], compile=True, label=fp16),
                        dict(model=model, steps=T_list[0], compile=True, label=fp16)]
                run_configs(res, ctx, "compiled", cfgs, iters, over_budget)
                if not over_budget():
                    with compile_env(True):
                        section_sampling(res, ctx, model, [T_list[-1]], 3, tag="sd15_compiled")
            elif section == "doodl2":
                from doodl_nodes.scorers.symmetry import SymmetryScorer

                sym = SymmetryScorer()
                fp16 = "fp16 weights (ComfyUI default), graphs"
                cfgs = [dict(model=model, steps=T, label=fp16) for T in T_list]
                cfgs += [dict(model=model, steps=T, grad_mode="reversible", label=fp16 + ", reversible")
                         for T in T_list]
                cfgs += [dict(model=model, steps=T_list[-1], label=fp16 + ", channels-last bf16 copies"),
                         dict(model=model, steps=T_list[-1], score_images="x", decoder_ckpt=True,
                              label=fp16 + ", score x only, decoder checkpointing"),
                         dict(model=model_bf16, steps=T_list[-1], label="bf16 weights, graphs")]
                cfgs += [dict(model=m_, steps=T, score_images="x", decoder_ckpt=True, scorer=sym,
                              label=f"{lbl}, symmetry scorer (no CLIP), score x, decoder ckpt")
                         for m_, lbl in ((model, fp16), (model_bf16, "bf16 weights, graphs"))
                         for T in (T_list[0], T_list[-1])]
                run_configs(res, ctx, "doodl2", cfgs, iters, over_budget)
            elif section == "doodl":
                run_configs(res, ctx, "doodl", doodl_configs(), iters, over_budget)
            elif section == "sampling":
                section_sampling(res, ctx, model, T_list, 2 if args.tiny else 3)
            elif section == "roundtrip":
                section_roundtrip(res, ctx, model_bf16, 3 if args.tiny else 50)
            elif section == "flops":
                section_flops(res, ctx, model_bf16)
            elif section == "official":
                section_official(res, ctx, model, sorted({T_list[0], T_list[-1]}), 2)
            elif section == "plain":
                steps = [1, 2] if args.tiny else [1, 2, 4, 8, 16, 25, 50]
                section_plain(res, ctx, model_bf16, steps)
            elif section == "compile":
                section_compile(res, ctx, model, reps)
            elif section == "sdxl":
                section_sdxl(res, ctx, model, model_bf16, args, over_budget)
            else:
                raise ValueError(f"unknown section {section}")
        except Exception as exc:
            res.error(section, exc)
            log(f"section {section} failed: {''.join(traceback.format_exception(exc))[-2000:]}")
            unload_all()
    res.data["elapsed_s"] = time.perf_counter() - start
    res.save()
    log(f"done in {res.data['elapsed_s']:.0f} s -> {res.path}")
    summarize(res.data)
    if res.data["errors"]:
        log(f"FAILED: {len(res.data['errors'])} section(s) or configuration(s) raised: {sorted(res.data['errors'])}")
        return 1
    return 0


def section_compile(res: Results, ctx, model, reps: int):
    """torch.compile (inductor, default mode) of the UNet forward, without grad: per-call time eager,
    compiled, and compiled inside our CUDA graph. Measures whether compilation would pay."""
    from doodl_nodes.bridge.chain import run_in_guider

    out = {}

    def fn(chain):
        dm = chain.base_model.diffusion_model
        z = torch.randn(ctx["latent_shape"], generator=torch.Generator().manual_seed(0)).to(chain.device) * 3
        s = chain.sigmas[3]
        s_in = s.to(torch.float32).reshape(1).expand(z.shape[0])
        ref = chain.call_model(z, s_in, False)
        out["eager_ms"] = _call_timer(lambda: chain.call_model(z, s_in, False), reps) * 1e3
        original = dm.forward
        torch._dynamo.config.recompile_limit = 64
        dm.forward = torch.compile(original, dynamic=False)
        try:
            t0 = time.perf_counter()
            got = chain.call_model(z, s_in, False)
            sync()
            out["first_call_incl_compile_s"] = time.perf_counter() - t0
            out["compiled_vs_eager_maxabs"] = float((got - ref).abs().max())
            out["compiled_ms"] = _call_timer(lambda: chain.call_model(z, s_in, False), reps) * 1e3
            g = chain.denoise(z, s)
            out["compiled_graph_vs_eager_maxabs"] = float((g - ref).abs().max())
            out["compiled_graph_ms"] = _call_timer(lambda: chain.denoise(z, s), reps) * 1e3
            out["graph_stats"] = chain_graph_stats(chain)
        finally:
            del dm.forward

    unload_all()
    with graphs_env(True), torch.inference_mode():
        run_in_guider(model, ctx["pos"], ctx["neg"], ctx["cfg"], ctx["sigmas10"], ctx["latent_shape"], fn)
    res.put("compile", "nograd_forward", out)
    log(f"compile {out}")


def section_sdxl(res: Results, ctx, model, model_bf16, args, over_budget):
    T = 2 if args.tiny else 30
    fp16 = "SDXL fp16 weights (ComfyUI default), graphs, decoder ckpt"
    bf16 = "SDXL bf16 weights, graphs, decoder ckpt"
    cfgs = [
        dict(model=model, steps=T, score_images="both", decoder_ckpt=True, label=fp16),
        dict(model=model, steps=T, score_images="x", decoder_ckpt=True, label=fp16 + ", score x only"),
        dict(model=model_bf16, steps=T, score_images="both", decoder_ckpt=True, label=bf16),
        dict(model=model_bf16, steps=T, score_images="x", decoder_ckpt=True, label=bf16 + ", score x only"),
        dict(model=model, steps=T, score_images="both", decoder_ckpt=True, graphs=False, iterations=2,
             label="SDXL fp16 weights, eager, decoder ckpt"),
    ]
    run_configs(res, ctx, "sdxl", cfgs, args.iters, over_budget, steps_in_key=False)
    if not over_budget():
        section_sampling(res, ctx, model, [T], 2, tag="sdxl")


def summarize(data: dict) -> None:
    secs = data["sections"]
    lines = []
    for key, r in (secs.get("doodl", {}) | secs.get("doodl2", {}) | secs.get("sdxl", {}) | secs.get("compiled", {})
                   | {"official " + k: v for k, v in secs.get("official", {}).items()}).items():
        if "median_iteration_s" in r:
            st = r.get("steady") or {}
            lines.append(f"{key:70s} {r['median_iteration_s']:8.3f} s/it  peak {st.get('peak_alloc_gib', float('nan')):6.2f} "
                         f"GiB (res {st.get('peak_reserved_gib', float('nan')):6.2f})")
    print("\n".join(lines))
    for k in ("micro", "sampling", "roundtrip", "plain"):
        if k in secs:
            print(k, json.dumps({kk: {a: b for a, b in v.items() if not isinstance(b, (dict, list))}
                                 for kk, v in secs[k].items()}, default=str)[:3000])
    if data.get("errors"):
        print("ERRORS in sections:", list(data["errors"]))


if __name__ == "__main__":
    sys.exit(main())
