"""GPU benchmark: one DOODL iteration with ReNO's four-reward combination (SD1.5 512², T=50).

The objective is the preference workflow's (``doodl7_preference``): HPSv2.1 x 5 + ImageReward x 1 +
PickScore x 0.05 + the logit-scaled CLIP-H score x 0.01, each reward a full-size model of its real
architecture with random weights (bf16 on the GPU, as the workflow loads them):

* HPSv2.1: open_clip ``ViT-H-14`` (the image tower is differentiated; the text tower runs once),
* PickScore and laion CLIP-H: transformers ``CLIPModel`` with PickScore_v1's CLIP-H/14 config,
* ImageReward: the pack's BLIP ViT-L/16 + cross-attention BERT-base + head (``med_config.json``'s
  published configuration).

The diffusion side is ``bench_doodl``'s: a full-size SD1.5 UNet and SD VAE built through ComfyUI's
own loaders from random state dicts, run through ``run_doodl`` (what DOODL Optimize calls) under
``torch.inference_mode()``, cfg 7.5, batch 1. Rows: whole images (``num_crops 0``, ReNO's scoring)
and DOODL's 16 crops; both EDICT images scored. "Seconds per iteration" is the median time between
consecutive iteration callbacks after the first; "peak" is ``torch.cuda.max_memory_allocated`` over
those iterations (everything on the GPU: UNet, VAE, the four reward models, activations).

Usage (device)::

    python benchmarks/bench_rewards.py --out $OUT --comfyui .carry/ComfyUI

``--tiny`` runs every code path on the CPU with tiny models (tests; numbers meaningless).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_doodl as bd  # noqa: E402  (the SD1.5 UNet/VAE builders, timing and memory helpers)

PROMPT = "A red fox reading a newspaper in a cozy cafe, warm light, detailed illustration"
RENO_WEIGHTS = (5.0, 1.0, 0.05, 0.01)  # HPS, ImageReward, PickScore, CLIP
CLIP_H = dict(
    text_config=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                     num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu"),
    vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                       image_size=224, patch_size=14, hidden_act="gelu"),
    projection_dim=1024)
CLIP_TINY = dict(
    text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu"),
    vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8, hidden_act="gelu"),
    projection_dim=32)


def _test_module(name: str, rel: str):
    """A module of the test suite by path (``tests`` is ComfyUI's own package on this sys.path)."""
    import importlib.util

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / rel)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _preference_files():
    return _test_module("doodl_preference_files", "tests/scorers/preference_files.py")


def _params(modules) -> int:
    seen, n = set(), 0
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
    return n


def build_hps(device, dtype, tiny: bool, tmp: Path):
    import open_clip

    from doodl_nodes.scorers.base import freeze
    from doodl_nodes.scorers.encoders import OpenCLIPImageEncoder
    from doodl_nodes.scorers.hps import HPS_ARCH, HPSScorer

    arch = HPS_ARCH
    if tiny:
        arch = _preference_files().register_tiny_hps(tmp)
    with torch.device(device):
        model = open_clip.create_model(arch, pretrained=None)
    model = freeze(model.to(device=device, dtype=dtype))
    tokens = open_clip.get_tokenizer(arch)([PROMPT]).to(device)
    with torch.no_grad():
        text = model.encode_text(tokens)[0].float()
    return HPSScorer(OpenCLIPImageEncoder(model, f"{arch} (random)"), text, PROMPT), _params([model.visual])


def build_clip_score(device, dtype, tiny: bool, score_name: str, seed: int):
    import transformers
    from open_clip.tokenizer import SimpleTokenizer

    from doodl_nodes.scorers.base import freeze
    from doodl_nodes.scorers.encoders import HFCLIPImageEncoder
    from doodl_nodes.scorers.pickscore import PickScoreScorer

    torch.manual_seed(seed)
    config = transformers.CLIPConfig(**(CLIP_TINY if tiny else CLIP_H), logit_scale_init_value=4.6052)
    with torch.device(device):
        model = transformers.CLIPModel(config)
    model = freeze(model.to(device=device, dtype=dtype))
    with torch.no_grad():
        ids = SimpleTokenizer(context_length=77)([PROMPT]).to(device)
        text = model.text_projection(model.text_model(input_ids=ids).pooler_output)[0].float()
    size = config.vision_config.image_size
    encoder = HFCLIPImageEncoder(model.vision_model, model.visual_projection, size,
                                 label=f"CLIP-H/14-sized (random, {score_name})")
    scorer = PickScoreScorer(encoder, text, float(model.logit_scale.exp()), PROMPT, score_name=score_name)
    return scorer, _params([model.vision_model, model.visual_projection])


def build_imagereward(device, dtype, tiny: bool, tmp: Path):
    from doodl_nodes.scorers.base import freeze
    from doodl_nodes.scorers.imagereward import (BLIPTextEncoder, BLIPVisionTransformer, ImageRewardBundle,
                                                 ImageRewardModel, ImageRewardScorer, RewardMLP, TextConfig,
                                                 WordPieceTokenizer)
    TINY_VOCAB = _preference_files().TINY_VOCAB
    cfg = TextConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                     vocab_size=len(TINY_VOCAB) + 2, max_position_embeddings=64, encoder_width=128) if tiny \
        else TextConfig(encoder_width=1024)  # med_config.json of BLIP/ImageReward
    vocab = tmp / "bench_vocab.txt"
    filler = [f"w{i}" for i in range(max(0, cfg.vocab_size - 2 - len(TINY_VOCAB)))]
    vocab.write_text("\n".join(TINY_VOCAB + filler) + "\n", encoding="utf-8")
    torch.manual_seed(5)
    with torch.device(device):
        vision = BLIPVisionTransformer(64, 16, 128, 2, 2) if tiny else BLIPVisionTransformer(224, 16, 1024, 24, 16)
        model = ImageRewardModel(vision, BLIPTextEncoder(cfg), RewardMLP(cfg.hidden_size))
    model = freeze(model.to(device=device, dtype=dtype))
    bundle = ImageRewardBundle(model, WordPieceTokenizer(vocab), "BLIP ViT-L/16 + BERT-base (random)")
    return ImageRewardScorer(bundle, PROMPT), _params([model])


def run_timed(ctx, model, *, steps: int, iterations: int, crops, scorer, label: str) -> dict:
    """One ``run_doodl`` call (what DOODL Optimize runs): seconds between iteration callbacks and the
    peak memory over the iterations after the first (``bench_doodl.iteration_clock``)."""
    from doodl_nodes.bridge.doodl_run import DoodlRequest, run_doodl
    from doodl_nodes.core.optimize import DoodlConfig

    sig = bd.sigmas_for(model, steps)
    request = DoodlRequest(config=DoodlConfig(iterations=iterations, seed=0, evaluate_final=False), crops=crops,
                           score_images="both", precision="bf16", strip_frames=2)
    bd.unload_all()
    rec: dict = {}
    bd.reset_peak()
    t0 = time.perf_counter()
    with bd.iteration_clock(rec), torch.inference_mode():
        out = run_doodl(model, ctx["vae"], ctx["pos"], ctx["neg"], ctx["cfg"], sig, scorer, request,
                        latent={"samples": torch.zeros(ctx["latent_shape"])}, seed=0)
    total = time.perf_counter() - t0
    ts = rec["t"]
    per_iter = [b - a for a, b in zip(ts, ts[1:])]
    row = {"label": label, "steps": steps, "iterations": iterations, "num_crops": crops.num_crops,
           "first_iteration_s": (ts[0] - t0) if ts else None, "iteration_s": per_iter,
           "median_iteration_s": bd.median(per_iter), "total_s": total, "steady": bd.peak(),
           "incl_first_iteration": rec.get("first_peak"), "losses": out.losses, "scores": out.scores,
           "memory_plan": out.memory}
    bd.log(f"{label} T={steps}: {row['median_iteration_s']:.3f} s/it, steady peak "
           f"{row['steady'].get('peak_alloc_gib', float('nan')):.2f} GiB alloc; memory plan {out.memory}")
    return row


def build_rewards(device, dtype, tiny: bool, tmp: Path, res: "bd.Results"):
    from doodl_nodes.scorers.combine import CombinedScorer

    parts, info = [], {}
    for name, build in (("hps", lambda: build_hps(device, dtype, tiny, tmp)),
                        ("imagereward", lambda: build_imagereward(device, dtype, tiny, tmp)),
                        ("pickscore", lambda: build_clip_score(device, dtype, tiny, "pickscore", 1)),
                        ("clip", lambda: build_clip_score(device, dtype, tiny, "clip_score", 2))):
        t0 = time.perf_counter()
        scorer, n = build()
        info[name] = {"differentiated_params": n, "build_s": time.perf_counter() - t0, "name": scorer.name}
        bd.log(f"{name}: {n / 1e6:.0f} M differentiated parameters, built in {info[name]['build_s']:.1f} s")
        parts.append(scorer)
    res.put("setup", "rewards", info)
    return CombinedScorer(parts, RENO_WEIGHTS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/out"))
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", "/work/ComfyUI"))
    ap.add_argument("--tiny", action="store_true", help="CPU development run with tiny models")
    ap.add_argument("--iters", type=int, default=3, help="DOODL iterations per row (the first is not timed)")
    ap.add_argument("--crops", default="0,16", help="comma-separated num_crops per row")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--tag", default="")
    args = ap.parse_args(argv)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    bd.setup_comfyui(args.comfyui, cpu=args.tiny)
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    res = bd.Results(out_dir, f"rewards{'_tiny' if args.tiny else ''}{'_' + args.tag if args.tag else ''}")
    res.data["argv"] = sys.argv
    failures = 0

    t0 = time.perf_counter()
    if args.tiny:
        tiny = _test_module("doodl_tiny_models", "tests/comfy/tiny_models.py")
        with torch.inference_mode():
            model, vae = tiny.load_tiny_model("eps"), tiny.tiny_vae("eps")
        latent_shape, steps = (1, 4, 8, 8), 2
    else:
        model, vae = bd.build_unet("sd15", device), bd.build_vae(device)
        latent_shape, steps = (1, 4, 64, 64), args.steps
    scorer = build_rewards(device, dtype, args.tiny, out_dir, res)
    ctx = {"vae": vae, "scorer": scorer, "pos": bd.conditioning("sd15", 1), "neg": bd.conditioning("sd15", 2),
           "cfg": 7.5, "latent_shape": latent_shape}
    res.put("setup", "build_s", time.perf_counter() - t0)
    if torch.cuda.is_available():
        res.put("setup", "device", torch.cuda.get_device_name())
    res.put("setup", "torch", torch.__version__)

    from doodl_nodes.core.crops import CropConfig

    for n in [int(c) for c in args.crops.split(",") if c.strip()]:
        label = f"ReNO rewards, {'whole images' if n == 0 else f'{n} crops'}, both EDICT images"
        try:
            row = run_timed(ctx, model, steps=steps, iterations=args.iters, crops=CropConfig(num_crops=n),
                            scorer=scorer, label=label)
            res.put("doodl", f"crops{n}_T{steps}", row)
        except Exception as exc:  # a failed row fails the run
            failures += 1
            res.error(f"doodl crops{n}", exc)
            bd.log(f"row {label} FAILED: {exc}\n{traceback.format_exc()}")
    res.save()
    rows = res.data["sections"].get("doodl", {})
    print(json.dumps({k: {"s_per_iteration": v.get("median_iteration_s"),
                          "peak_alloc_gib": (v.get("steady") or {}).get("peak_alloc_gib"),
                          "first_iteration_s": v.get("first_iteration_s")}
                      for k, v in rows.items()}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
