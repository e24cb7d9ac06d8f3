"""GPU benchmark of DOODL on the few-step and flow architectures, at real model sizes.

Models are full-size random weights built through ComfyUI's own loaders
(``comfy.sd.load_diffusion_model_state_dict`` for the diffusion model, ``comfy.sd.VAE`` key detection
for the VAE) from state dicts of the real shapes: SDXL (run as SDXL-Turbo: same network), Flux
schnell (12 B, bf16) and SD3 medium (MMDiT depth 24). Speed and memory do not depend on the values.
Everything "ours" runs through the pack's entry points (``run_doodl``, ``run_in_guider``) under
``torch.inference_mode()`` as ComfyUI's executor runs nodes, CUDA graphs on (the default).

Configurations (``--configs``; the issue's list):

=====================  =====================================================================
``sdxl_turbo_1``       SDXL-Turbo 512x512, SDTurboScheduler 1 step, euler chain, cfg 1
``sdxl_turbo_4``       SDXL-Turbo 512x512, SDTurboScheduler 4 steps, euler chain, cfg 1
``flux_schnell_4``     Flux schnell 1024x1024 bf16, sgm_uniform 4 steps, euler chain, cfg 1
``sd3_medium_28``      SD3 medium 1024x1024, 28 steps (simple), EDICT chain, cfg 5
=====================  =====================================================================

Each runs with two scorers: the CLIP text scorer and the aesthetic head (both on a ViT-L/14-sized
CLIP image tower, transformers, random bf16 weights; 16 crops, each scorer's released crop
reduction). Per run: seconds per iteration (median over the iterations after the first, which
records the CUDA graphs), the peak memory of the first iteration (graph capture included;
``peak_incl_first``) and of the iterations after it (``steady_peak``), and the graph counters.
Sections (``--sections``), run per configuration in the table's order:

``doodl``      the table above
``profile``    per configuration: one model call without grad, one with grad (forward + backward),
               and the objective (differentiable decode + scorer, forward + backward), so a
               missed target can be explained (iteration ~ steps x calls + objective)
``roundtrip``  EDICT inversion -> generation round-trip error per architecture (float64 state; a
               float64 random latent and a float32-valued one, as a VAE gives)
``graphs``     the recorded CUDA graphs against the eager call with the architecture's extra
               conditioning (SDXL ADM, pooled vectors): no-grad replay difference (must be 0), the
               gradient's relative difference, the graph counters

Usage on the GPU machine (ComfyUI tree at ``--comfyui``; open_clip is not needed), in two commands
of under 10 minutes each::

    python benchmarks/bench_arch.py --comfyui /path/to/ComfyUI --out $OUT --tag fast \
        --configs sdxl_turbo_1,sdxl_turbo_4,flux_schnell_4 --budget-s 480
    python benchmarks/bench_arch.py --comfyui /path/to/ComfyUI --out $OUT --tag sd3 \
        --configs sd3_medium_28 --iters 3 --budget-s 480

``--tiny`` runs every path on the CPU with the tiny test models (tests/comfy/tiny_models.py) at
64x64, at most 3 steps, 2 crops (checks the code; the numbers mean nothing;
tests/comfy/test_bench_arch.py runs it).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
# bench_doodl's ViT-L/14-sized random tower and its log, timing, memory and unload helpers
from bench_doodl import build_tower, iteration_clock, log, peak, reset_peak, sync, unload_all  # noqa: E402


CONFIGS = {
    "sdxl_turbo_1": dict(arch="sdxl", size=512, steps=1, scheduler="sd_turbo", chain="euler", cfg=1.0),
    "sdxl_turbo_4": dict(arch="sdxl", size=512, steps=4, scheduler="sd_turbo", chain="euler", cfg=1.0),
    "flux_schnell_4": dict(arch="flux_schnell", size=1024, steps=4, scheduler="sgm_uniform", chain="euler",
                           cfg=1.0),
    "sd3_medium_28": dict(arch="sd3", size=1024, steps=28, scheduler="simple", chain="edict", cfg=5.0),
}
SCORERS = ("clip_text", "aesthetic")
TARGETS = {"sdxl_turbo_1": "<= 0.25 s/iteration", "flux_schnell_4": "<= 3 s/iteration within 60 GiB"}

# Real sizes (the networks' constructor arguments; ComfyUI's detection gives them back)
SDXL_UNET = dict(use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
                 num_classes="sequential", adm_in_channels=2816, in_channels=4, model_channels=320,
                 num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10], channel_mult=[1, 2, 4],
                 transformer_depth_middle=10, use_linear_in_transformer=True, context_dim=2048,
                 num_head_channels=64, transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                 use_temporal_attention=False, use_temporal_resblock=False)
FLUX_SCHNELL = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                    hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38,
                    axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=False)
SD3_MEDIUM = dict(patch_size=2, in_channels=16, out_channels=16, depth=24, input_size=None, adm_in_channels=2048,
                  num_patches=192 * 192, pos_embed_max_size=192, pos_embed_scaling_factor=None,
                  x_block_self_attn_layers=[],
                  context_embedder_config={"target": "torch.nn.Linear",
                                           "params": {"in_features": 4096, "out_features": 1536}})
KL_VAE = dict(double_z=True, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
              num_res_blocks=2, attn_resolutions=[], dropout=0.0)
#: (tokens, width) of the cross-attention context, pooled width, dtype of the weights
ARCH = {"sdxl": dict(tokens=77, context=2048, pooled=1280, channels=4, dtype=torch.float16),
        "flux_schnell": dict(tokens=256, context=4096, pooled=768, channels=16, dtype=torch.bfloat16),
        "sd3": dict(tokens=154, context=4096, pooled=2048, channels=16, dtype=torch.float16)}
TINY_KIND = {"sdxl": "sdxl", "flux_schnell": "flux_schnell", "sd3": "flow"}


def peak_gib() -> dict:
    """``bench_doodl.peak`` rounded, under this script's key names."""
    p = peak()
    return {"alloc_gib": round(p["peak_alloc_gib"], 2), "reserved_gib": round(p["peak_reserved_gib"], 2)} if p else {}


def setup_comfyui(root: str, cpu: bool) -> None:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(Path(root).resolve()))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    import comfy.model_management  # noqa: F401  (reads args)
    import comfy.sd  # noqa: F401
    import comfy.samplers  # noqa: F401


def _tiny_models():
    spec = importlib.util.spec_from_file_location("doodl_tiny_models", REPO / "tests" / "comfy" / "tiny_models.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["doodl_tiny_models"] = mod
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------------------- models

def _random_state_dict(template: dict, device, dtype, seed: int, gain: float = 0.5) -> dict:
    """Tensors of the template's shapes made on ``device``: weights N(0, gain^2/fan_in), norm
    scales ~1, biases and embeddings small (keeps activations finite at any depth)."""
    g = torch.Generator(device=device).manual_seed(seed)
    out = {}
    with torch.inference_mode(False), torch.no_grad():
        for k, v in template.items():
            shape = tuple(v.shape)
            t = torch.empty(shape, device=device, dtype=torch.float32)
            if len(shape) >= 2:
                t.normal_(0.0, gain / max(1, int(torch.Size(shape[1:]).numel())) ** 0.5, generator=g)
            elif k.endswith(("weight", "scale")):
                t.normal_(1.0, 0.02, generator=g)
            else:
                t.normal_(0.0, 0.02, generator=g)
            out[k] = t.to(dtype)
    return out


def _template(arch: str) -> dict:
    import comfy.ops

    ops = comfy.ops.disable_weight_init
    if arch == "sdxl":
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

        net = UNetModel(**SDXL_UNET, dtype=torch.float16, device="meta", operations=ops)
    elif arch == "flux_schnell":
        from comfy.ldm.flux.model import Flux

        net = Flux(**FLUX_SCHNELL, dtype=torch.bfloat16, device="meta", operations=ops)
    else:
        from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper

        net = OpenAISignatureMMDITWrapper(**SD3_MEDIUM, dtype=torch.float16, device="meta", operations=ops)
    return net.state_dict()


def build_model(arch: str, device, tiny: bool):
    """A ModelPatcher from ComfyUI's ``load_diffusion_model_state_dict`` (in inference mode)."""
    import comfy.sd

    if tiny:
        with torch.inference_mode():
            return _tiny_models().load_tiny_model(TINY_KIND[arch])
    a = ARCH[arch]
    sd = _random_state_dict(_template(arch), device, a["dtype"], seed=0)
    with torch.inference_mode():
        model = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": a["dtype"]})
    del sd
    if model is None:
        raise RuntimeError(f"ComfyUI did not detect the {arch} model")
    want = {"sdxl": "SDXL", "flux_schnell": "FluxSchnell", "sd3": "SD3"}[arch]
    got = type(model.model.model_config).__name__
    if got != want:
        raise RuntimeError(f"ComfyUI detected {got}, expected {want}")
    return model


def build_vae(channels: int, device, tiny: bool):
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    if tiny:
        with torch.inference_mode():
            return _tiny_models().tiny_vae("flow" if channels == 16 else "eps")
    with torch.device("meta"):
        template = AutoencoderKL(ddconfig=dict(KL_VAE, z_channels=channels), embed_dim=channels).state_dict()
    if channels == 16:  # SD3/Flux layout: no quant convs
        template = {k: v for k, v in template.items() if not k.startswith(("quant_conv.", "post_quant_conv."))}
    sd = _random_state_dict(template, device, torch.float32, seed=1)
    with torch.inference_mode():
        vae = comfy.sd.VAE(sd=sd)
    if vae.latent_channels != channels:
        raise RuntimeError(f"ComfyUI built a {vae.latent_channels}-channel VAE, expected {channels}")
    return vae


def build_scorer(name: str, encoder, out_dir: Path):
    from safetensors.torch import save_file

    from doodl_nodes.scorers.aesthetic import AestheticScorer, load_aesthetic_head
    from doodl_nodes.scorers.clip import CLIPTextScorer

    g = torch.Generator().manual_seed(3)
    if name == "clip_text":
        return CLIPTextScorer(encoder, torch.randn(768, generator=g), prompt="(random text embedding)")
    head_path = out_dir / "bench_arch_aesthetic_head.safetensors"
    save_file({"weight": torch.randn(1, 768, generator=g) * 0.5, "bias": torch.tensor([5.0])}, str(head_path))
    return AestheticScorer(encoder, load_aesthetic_head(head_path), target=None, clamp=False)


def conditioning(arch: str, seed: int, size: int, tiny: bool):
    a = ARCH[arch]
    if tiny:
        return _tiny_models().tiny_conditioning(TINY_KIND[arch], seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode(False):
        extra = {"pooled_output": torch.randn((1, a["pooled"]), generator=g)}
        if arch == "sdxl":
            extra.update(width=size, height=size, target_width=size, target_height=size)
        return [[torch.randn((1, a["tokens"], a["context"]), generator=g), extra]]


def make_sigmas(model, scheduler: str, steps: int):
    import comfy.samplers

    with torch.inference_mode():
        if scheduler == "sd_turbo":
            from comfy_extras.nodes_custom_sampler import SDTurboScheduler

            return SDTurboScheduler().get_sigmas(model, steps, 1.0)[0]
        return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)


# --------------------------------------------------------------------------------------- measuring

@contextlib.contextmanager
def graph_counters(record: dict):
    """The CUDA-graph counters of the run (GraphedGuider.stats, read when it closes)."""
    from doodl_nodes.bridge.cuda_graphs import GraphedGuider

    original = GraphedGuider.close

    def close(self):
        record.update(self.stats)
        if self.broken:
            record["broken"] = self.broken
        return original(self)

    GraphedGuider.close = close
    try:
        yield
    finally:
        GraphedGuider.close = original


class Context:
    """Models, VAEs and scorers, built once per architecture."""

    def __init__(self, device, tiny: bool, out_dir: Path):
        self.device, self.tiny, self.out_dir = device, tiny, out_dir
        self.models: dict = {}
        self.vaes: dict = {}
        self.encoder = None
        self.scorers: dict = {}

    def model(self, arch: str):
        if arch not in self.models:
            for other in list(self.models):   # one full-size model at a time
                del self.models[other]
            unload_all()
            t0 = time.perf_counter()
            self.models[arch] = build_model(arch, self.device, self.tiny)
            log(f"built {arch} in {time.perf_counter() - t0:.1f} s")
        return self.models[arch]

    def vae(self, channels: int):
        if channels not in self.vaes:
            self.vaes[channels] = build_vae(channels, self.device, self.tiny)
        return self.vaes[channels]

    def scorer(self, name: str):
        if self.encoder is None:
            self.encoder = build_tower(self.device, self.tiny)
        if name not in self.scorers:
            self.scorers[name] = build_scorer(name, self.encoder, self.out_dir)
        return self.scorers[name]

    def config(self, name: str) -> dict:
        """The configuration; with --tiny at most 3 steps (the chains are the same code at any length)."""
        c = dict(CONFIGS[name])
        if self.tiny:
            c["steps"] = min(c["steps"], 3)
        return c

    def latent_side(self, size: int) -> int:
        return 8 if self.tiny else size // 8


def run_config(ctx: Context, name: str, scorer_name: str, iterations: int) -> dict:
    from doodl_nodes.bridge.doodl_run import DoodlRequest, run_doodl
    from doodl_nodes.core.crops import CropConfig
    from doodl_nodes.core.optimize import DoodlConfig

    c = ctx.config(name)
    arch = c["arch"]
    model = ctx.model(arch)
    vae = ctx.vae(ARCH[arch]["channels"])
    scorer = ctx.scorer(scorer_name)
    sigmas = make_sigmas(model, c["scheduler"], c["steps"])
    side = ctx.latent_side(c["size"])
    crops = CropConfig(num_crops=2 if ctx.tiny else 16)
    config = DoodlConfig(iterations=iterations, seed=0, chain=c["chain"], evaluate_final=False)
    request = DoodlRequest(config=config, crops=crops, precision="bf16", strip_frames=2)
    pos, neg = conditioning(arch, 1, c["size"], ctx.tiny), conditioning(arch, 2, c["size"], ctx.tiny)
    latent = {"samples": torch.zeros((1, ARCH[arch]["channels"], side, side))}
    rec: dict = {}
    graphs: dict = {}
    unload_all()
    reset_peak()
    t0 = time.perf_counter()
    with iteration_clock(rec, peak_fn=peak_gib, empty_cache=False), graph_counters(graphs), torch.inference_mode():
        out = run_doodl(model, vae, pos, neg, c["cfg"], sigmas, scorer, request, latent=latent, seed=0)
    total = time.perf_counter() - t0
    ts = rec["t"]
    per = [b - a for a, b in zip(ts, ts[1:])]
    row = {"config": name, "scorer": scorer.name, **c, "pixels": f"{side * 8}x{side * 8}",
           "crops": crops.num_crops, "iterations": iterations, "first_iteration_s": ts[0] - t0 if ts else None,
           "iteration_s": [round(x, 4) for x in per], "median_iteration_s": statistics.median(per) if per else None,
           "total_s": round(total, 2), "steady_peak": peak_gib(), "peak_incl_first": rec.get("first_peak"),
           "graphs": graphs, "memory_plan": out.memory, "losses": out.losses, "warnings": out.warnings}
    med = row["median_iteration_s"]
    log(f"{name} [{scorer_name}] {med if med is None else round(med, 3)} s/it, steady peak "
        f"{row['steady_peak'].get('alloc_gib')} GiB, first-iteration peak "
        f"{(row['peak_incl_first'] or {}).get('alloc_gib')} GiB, graphs {graphs}")
    return row


def _timed(fn, reps: int) -> float:
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps


def profile_config(ctx: Context, name: str, scorer_name: str, reps: int) -> dict:
    """One model call without grad, one with grad (forward + backward to the latent), and the
    objective (decode + scorer, forward + backward), each as DOODL runs it (graphs on)."""
    from doodl_nodes.bridge.chain import run_in_guider
    from doodl_nodes.bridge.scorer_models import patchers_for
    from doodl_nodes.bridge.vae import decode_differentiable
    from doodl_nodes.core.crops import CropConfig

    c = ctx.config(name)
    arch = c["arch"]
    model, vae, scorer = ctx.model(arch), ctx.vae(ARCH[arch]["channels"]), ctx.scorer(scorer_name)
    sigmas = make_sigmas(model, c["scheduler"], c["steps"])
    side = ctx.latent_side(c["size"])
    shape = (1, ARCH[arch]["channels"], side, side)
    crops = CropConfig(num_crops=2 if ctx.tiny else 16)
    pos, neg = conditioning(arch, 1, c["size"], ctx.tiny), conditioning(arch, 2, c["size"], ctx.tiny)
    gen = torch.Generator().manual_seed(0)
    images = 2 if c["chain"] == "edict" else 1

    def fn(chain):
        x = chain.initial_latent(torch.randn(shape, generator=gen))
        s = chain.sigmas[0]

        def nograd():
            with torch.no_grad():
                chain.denoise(x, s)

        def grad():
            z = x.detach().requires_grad_(True)
            with torch.enable_grad():
                torch.autograd.grad(chain.denoise(z, s).sum(), z)

        def objective():
            lat = torch.randn((images,) + shape[1:], dtype=torch.float64, device=chain.device).requires_grad_(True)
            with torch.enable_grad():
                img = decode_differentiable(vae, chain.latent_format, lat)
                torch.autograd.grad(scorer.loss(img, crops, gen).sum(), lat)

        return {"model_call_nograd_s": _timed(nograd, reps), "model_call_grad_s": _timed(grad, reps),
                "objective_s": _timed(objective, reps)}

    unload_all()
    reset_peak()
    with torch.inference_mode():
        out = run_in_guider(model, pos, neg, c["cfg"], sigmas, shape, fn, grad=True, precision="bf16",
                            extra_patchers=[vae.patcher] + patchers_for([scorer]),
                            extra_modules=[vae.first_stage_model] + list(scorer.modules()))
    calls = c["steps"] * (2 if c["chain"] == "edict" else 1)
    out["predicted_iteration_s"] = (calls * (out["model_call_nograd_s"] + out["model_call_grad_s"])
                                    + out["objective_s"])
    out.update(config=name, scorer=scorer_name, model_calls_per_chain=calls, peak=peak_gib())
    log(f"profile {name} [{scorer_name}]: " + ", ".join(f"{k} {v:.4f}" for k, v in out.items()
                                                          if isinstance(v, float)))
    return out


def graph_check(ctx: Context, name: str) -> dict:
    """The recorded CUDA graphs against the eager call on this architecture's conditioning (SDXL's
    ADM ``y``, the pooled ``y`` of SD3/Flux): without grad the replay must equal the eager call
    bit for bit; with grad, the input gradient of the graphed call (bf16 weight copies for an
    fp16 model) against eager autograd under bf16 autocast. Plus the graph counters (captures,
    replays, fallbacks)."""
    from doodl_nodes.bridge.chain import run_in_guider

    c = ctx.config(name)
    arch = c["arch"]
    model = ctx.model(arch)
    sigmas = make_sigmas(model, c["scheduler"], c["steps"])
    side = ctx.latent_side(c["size"])
    shape = (1, ARCH[arch]["channels"], side, side)
    pos, neg = conditioning(arch, 1, c["size"], ctx.tiny), conditioning(arch, 2, c["size"], ctx.tiny)

    def fn(chain):
        x = chain.initial_latent(torch.randn(shape, generator=torch.Generator().manual_seed(0)))
        s = chain.sigmas[0]
        z_in, s_in = x.float(), s.reshape(1).float().expand(shape[0])
        with torch.no_grad():
            chain.denoise(x, s)                        # records
            replay = chain.denoise(x, s)               # replays
            eager = chain.call_model(z_in, s_in, False).double()
        z = x.detach().requires_grad_(True)
        with torch.enable_grad():
            (g_graph,) = torch.autograd.grad(chain.denoise(z, s).sum(), z)
            z2 = z_in.detach().requires_grad_(True)
            (g_eager,) = torch.autograd.grad(chain.call_model(z2, s_in, True).float().sum(), z2)
        g_eager = g_eager.double()
        return {"nograd_max_abs_diff": float((replay - eager).abs().max()),
                "grad_rel_diff": float((g_graph - g_eager).norm() / g_eager.norm()),
                "graph_stats": dict(chain.graphs.stats) if chain.graphs is not None else None}

    unload_all()
    with torch.inference_mode():
        out = run_in_guider(model, pos, neg, c["cfg"], sigmas, shape, fn, grad=True, precision="bf16")
    out.update(config=name)
    log(f"graphs {name}: nograd max |graph - eager| {out['nograd_max_abs_diff']:.3g}, grad rel "
        f"{out['grad_rel_diff']:.3g}, counters {out['graph_stats']}")
    return out


def roundtrip(ctx: Context, name: str) -> dict:
    """EDICT inversion then generation of a random latent, float64 state (what EDICT Inversion and
    EDICT Generate do), on this configuration's model, sigmas and cfg."""
    from doodl_nodes.bridge.chain import run_in_guider
    from doodl_nodes.core.edict import edict_invert, edict_sample

    c = ctx.config(name)
    arch = c["arch"]
    model = ctx.model(arch)
    steps = max(c["steps"], 2)
    sigmas = make_sigmas(model, c["scheduler"], steps)
    side = ctx.latent_side(c["size"])
    shape = (1, ARCH[arch]["channels"], side, side)
    pos, neg = conditioning(arch, 1, c["size"], ctx.tiny), conditioning(arch, 2, c["size"], ctx.tiny)

    def fn(chain):
        out = {}
        r = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(chain.device)
        for label, x0 in (("float64_latent", r), ("float32_valued_latent", r.float().double())):
            xt, yt = edict_invert(chain.denoise, x0, x0.clone(), chain.sigmas, input_scale=chain.input_scale)
            back, _ = edict_sample(chain.denoise, xt, yt, chain.sigmas, input_scale=chain.input_scale)
            out[label] = float((back - x0).norm() / x0.norm())
        return out

    unload_all()
    with torch.inference_mode():
        out = run_in_guider(model, pos, neg, c["cfg"], sigmas, shape, fn)
    out.update(config=name, steps=steps)
    log(f"round trip {name} ({steps} steps): " + ", ".join(f"{k} {v:.2e}" for k, v in out.items()
                                                           if isinstance(v, float)))
    return out


def summarize(data: dict) -> None:
    print("\n| configuration | scorer | s/iteration | steady peak GiB | first-iteration peak GiB | target |")
    print("|---|---|---|---|---|---|")
    for r in data.get("doodl", []):
        if "error" in r:
            print(f"| {r['config']} | {r.get('scorer_name')} | error | | | |")
            continue
        med = r["median_iteration_s"]
        print(f"| {r['config']} ({r['pixels']}, {r['steps']} steps, {r['chain']}) | {r['scorer']} | "
              f"{'n/a' if med is None else f'{med:.3f}'} | {r['steady_peak'].get('alloc_gib', 'n/a')} | "
              f"{(r['peak_incl_first'] or {}).get('alloc_gib', 'n/a')} | {TARGETS.get(r['config'], '')} |")
    for p in data.get("profile", []):
        if "error" not in p:
            print(f"profile {p['config']} [{p['scorer']}]: nograd call {p['model_call_nograd_s']:.4f} s, grad call "
                  f"{p['model_call_grad_s']:.4f} s, objective {p['objective_s']:.4f} s -> predicted "
                  f"{p['predicted_iteration_s']:.3f} s/it ({p['model_calls_per_chain']} calls)")
    for g in data.get("graphs", []):
        if "error" not in g:
            print(f"graphs {g['config']}: no-grad replay vs eager max abs {g['nograd_max_abs_diff']:.3g}, "
                  f"grad rel {g['grad_rel_diff']:.3g}, counters {g['graph_stats']}")
    for r in data.get("roundtrip", []):
        if "error" not in r:
            print(f"round trip {r['config']} ({r['steps']} steps): float64 latent {r['float64_latent']:.2e}, "
                  f"float32-valued latent {r['float32_valued_latent']:.2e}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out"))
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", "/work/ComfyUI"))
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--scorers", default=",".join(SCORERS))
    ap.add_argument("--sections", default="graphs,doodl,profile,roundtrip")
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=540.0, help="skip what starts after this many seconds")
    ap.add_argument("--tiny", action="store_true", help="CPU run with the tiny test models (checks the code)")
    args = ap.parse_args(argv)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    setup_comfyui(args.comfyui, cpu=args.tiny)
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cpu" if args.tiny else "cuda")
    ctx = Context(device, args.tiny, out_dir)
    path = out_dir / f"bench_arch{'_tiny' if args.tiny else ''}{'_' + args.tag if args.tag else ''}.json"
    data: dict = {"argv": sys.argv, "torch": torch.__version__, "skipped": [],
                  "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else "cpu"}
    start = time.perf_counter()
    configs = [c for c in args.configs.split(",") if c]
    scorers = [s for s in args.scorers.split(",") if s]
    # one model at a time (every section of a configuration runs before the next model is built),
    # in the table's order: the cheap SDXL-Turbo rows first, so a time budget cuts the big ones
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configurations {unknown}; choose from {list(CONFIGS)}")
    for name in sorted(configs, key=list(CONFIGS).index):
        for section in [s for s in args.sections.split(",") if s]:
            jobs = [None] if section in ("roundtrip", "graphs") else scorers
            if section in ("roundtrip", "graphs") and name == "sdxl_turbo_1":
                continue   # the same model and schedule as sdxl_turbo_4
            for scorer in jobs:
                key = f"{section}:{name}" + (f":{scorer}" if scorer else "")
                if time.perf_counter() - start > args.budget_s:
                    data["skipped"].append(key)
                    continue
                try:
                    if section == "doodl":
                        row = run_config(ctx, name, scorer, 2 if args.tiny else args.iters)
                    elif section == "profile":
                        row = profile_config(ctx, name, scorer, 1 if args.tiny else args.reps)
                    elif section == "roundtrip":
                        row = roundtrip(ctx, name)
                    elif section == "graphs":
                        row = graph_check(ctx, name)
                    else:
                        raise ValueError(f"unknown section {section}")
                except Exception as exc:  # record it and go on
                    row = {"config": name, "scorer_name": scorer,
                           "error": "".join(traceback.format_exception(exc))[-3000:]}
                    log(f"{key} failed: {row['error'][-1500:]}")
                    unload_all()
                data.setdefault(section, []).append(row)
                path.write_text(json.dumps(data, indent=1, default=str))
    data["elapsed_s"] = round(time.perf_counter() - start, 1)
    path.write_text(json.dumps(data, indent=1, default=str))
    log(f"done in {data['elapsed_s']} s -> {path}")
    summarize(data)
    return data


if __name__ == "__main__":
    main()
