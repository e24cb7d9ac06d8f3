"""The demo experiment: train (or load) the models, sweep the baseline, generate, evaluate, write.

Protocol (all seeded; the same settings give the same numbers):

1. Train the unconditional denoiser on the training split (labels unused), a CNN that guides and an
   MLP that only evaluates (different architectures and seeds, both on clean images only).
2. Each guided method gets its setting from a small sweep scored on *validation* seeds (disjoint
   from the reported ones) by the held-out evaluator's accuracy (ties: lower per-class FD): one-step
   guidance over guidance scales, with and without the multi-crop loss; DOODL over learning rates
   (when ``settings.lrs`` holds more than one). Selecting with the evaluation metric itself is
   generous to both; the reported seeds are never used for selection.
3. For every target digit and the reported seeds (the same starting noise for every method):
   unguided EDICT, one-step guidance at its chosen setting, and DOODL.
4. Score with the held-out evaluator: accuracy on the target, Fréchet distance between its
   penultimate features of the generated images and of the held-out real images of the target
   (per class, then averaged), and count model evaluations per image.
"""
from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..core.crops import CropConfig
from ..core.optimize import DoodlConfig
from .data import Digits, load_digits_split
from .methods import (Generation, GuideLoss, guide_losses, initial_noise, karras_sigmas,
                      run_doodl, run_one_step, run_unguided)
from .metrics import class_accuracy, features, frechet_distance
from .render import loss_curves, sample_grid
from .report import results_markdown
from .settings import DemoSettings
from .train import train_classifier, train_denoiser

__all__ = ["run_demo"]


def _evaluate(images: torch.Tensor, target_vec: torch.Tensor, targets: list[int], data: Digits,
              evaluator, guide, ridge: float, pooled: Optional[torch.Tensor] = None) -> dict:
    """Scores of ``images`` generated for ``target_vec``. ``pooled``: the distinct images for the
    pooled FD when ``images`` repeats them (unguided samples are scored against every target)."""
    device = images.device
    pooled = images if pooled is None else pooled
    ok_eval = class_accuracy(evaluator, images, target_vec)
    ok_guide = class_accuracy(guide, images, target_vec)
    ce = guide_losses(guide, images, target_vec).detach().cpu()
    per_target = {}
    for k in targets:
        sel = (target_vec == k).cpu()
        real = features(evaluator, data.test_class(k).to(device))
        per_target[str(k)] = {
            "eval_accuracy": float(ok_eval[sel].mean()),
            "guide_accuracy": float(ok_guide[sel].mean()),
            "fd": frechet_distance(features(evaluator, images[sel.to(device)]), real, ridge),
            "guide_ce": float(ce[sel].mean()),
        }
    real_all = torch.cat([data.test_class(k) for k in targets]).to(device)
    return {
        "eval_accuracy": float(ok_eval.mean()),
        "guide_accuracy": float(ok_guide.mean()),
        "fd_per_class": float(np.mean([v["fd"] for v in per_target.values()])),
        "fd_pooled": frechet_distance(features(evaluator, pooled), features(evaluator, real_all), ridge),
        "guide_ce": float(ce.mean()),
        "per_target": per_target,
        "correct": ok_eval,
    }


def _doodl_config(s: DemoSettings, lr: float) -> DoodlConfig:
    return DoodlConfig(iterations=s.iterations, lr=float(lr), momentum=s.momentum, clip=s.clip,
                       perturbation=s.perturbation, renormalize=True, tie_latents=True, p=s.p,
                       leapfrog=True, grad_mode="checkpoint", seed=s.doodl_seed,
                       evaluate_final=False)


def _cost(g: Generation, steps: int) -> dict:
    unguided = 2 * steps  # EDICT: two model calls per step
    return {"forward_per_image": g.forward_per_image, "backward_per_image": g.backward_per_image,
            "cost_vs_unguided": (g.forward_per_image + 2 * g.backward_per_image) / unguided,
            "seconds": g.seconds}


def _environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
           "cpu_count": __import__("os").cpu_count(), "torch_threads": torch.get_num_threads(),
           "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def run_demo(settings: DemoSettings, out_dir: Path, cache_dir: Path, device: torch.device, *,
             log: Callable[[str], None] = print, show_progress: bool = True,
             command: Optional[str] = None, cpu_threads: Optional[int] = 1) -> dict:
    """Run the whole experiment and write ``results.md``, ``results.json``, ``samples_*.png`` and
    ``loss_curves.png`` into ``out_dir``. Returns the results dictionary (as written to JSON).

    ``cpu_threads``: torch's intra-op threads while the demo runs (restored afterwards; None leaves
    them alone). The networks are so small that one thread is about as fast as several on an idle
    machine, and several are 5-10x slower on a busy one (threads spin-waiting for each other)."""
    settings.validate()
    t_start = time.perf_counter()
    out_dir, cache_dir = Path(out_dir), Path(cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if cpu_threads is not None:
        torch.set_num_threads(int(cpu_threads))
    # Overconfident classifiers make float32 subnormals in the cross-entropy gradients, which are
    # 10-100x slower on x86 CPUs; flushing them to zero changes nothing measurable here.
    torch.set_flush_denormal(True)
    try:
        return _run(settings, out_dir, cache_dir, device, log, show_progress, command, t_start)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def _run(settings, out_dir, cache_dir, device, log, show_progress, command, t_start) -> dict:
    s = settings
    log(f"DOODL digits demo, preset {s.name!r}, device {device}")
    log(f"  cache: {cache_dir}\n  output: {out_dir}")
    data = load_digits_split(s.test_fraction, s.split_seed)

    log("[1/5] models (trained once, then loaded from the cache)")
    den, den_meta = train_denoiser(data, s.denoiser_settings(), cache_dir, device, log=log,
                                   show_progress=show_progress)
    guide, guide_meta = train_classifier(data, s.classifier_settings("guide"), cache_dir, device,
                                         name="guide CNN", log=log, show_progress=show_progress)
    evaluator, eval_meta = train_classifier(data, s.classifier_settings("evaluator"), cache_dir,
                                            device, name="evaluator MLP", log=log,
                                            show_progress=show_progress)
    log(f"  held-out accuracy: guide {guide_meta['test_accuracy']:.3f}, "
        f"evaluator {eval_meta['test_accuracy']:.3f}")

    sigmas = karras_sigmas(s.steps, s.sigma_min, s.sigma_max, s.rho).to(device)
    targets = [int(t) for t in s.targets]
    crops = CropConfig(s.num_crops, s.cut_power, s.crop_reduction) if s.num_crops > 0 else None

    def batch(seeds: list[int]):
        noise = initial_noise(seeds, device).repeat(len(targets), 1, 1, 1)
        target_vec = torch.tensor(targets, device=device).repeat_interleave(len(seeds))
        return noise, target_vec

    def loss_for(target_vec, use_crops: bool, seed: int) -> GuideLoss:
        return GuideLoss(guide, target_vec, crops if use_crops else None, s.crop_canvas, seed=seed)

    log(f"[2/5] sweeps on {s.val_seeds} validation seeds per target: one-step guidance scale"
        + (", DOODL learning rate" if len(s.lrs) > 1 else ""))
    val_noise, val_targets = batch(list(range(s.val_seed_offset, s.val_seed_offset + s.val_seeds)))
    sweep = []
    crop_options = [False, True] if crops is not None else [False]
    for use_crops in crop_options:
        for scale in s.guidance_scales:
            g = run_one_step(den, loss_for(val_targets, use_crops, s.doodl_seed), val_noise, sigmas,
                             scale, p=s.p, show_progress=show_progress,
                             desc=f"sweep: scale {scale:g}, {'crops' if use_crops else 'no crops'}")
            m = _evaluate(g.images, val_targets, targets, data, evaluator, guide, s.fd_ridge)
            sweep.append({"scale": float(scale), "crops": use_crops,
                          "eval_accuracy": m["eval_accuracy"], "fd_per_class": m["fd_per_class"],
                          "guide_accuracy": m["guide_accuracy"], "seconds": g.seconds,
                          "forward_per_image": g.forward_per_image,
                          "backward_per_image": g.backward_per_image})
    best = max(sweep, key=lambda r: (round(r["eval_accuracy"], 9), -r["fd_per_class"]))
    log(f"  chosen: scale {best['scale']:g}, {'with' if best['crops'] else 'without'} crops "
        f"(validation accuracy {best['eval_accuracy']:.3f})")

    doodl_sweep = []
    for lr in (s.lrs if len(s.lrs) > 1 else ()):
        g = run_doodl(den, loss_for(val_targets, crops is not None, s.doodl_seed), val_noise, sigmas,
                      _doodl_config(s, lr), show_progress=show_progress, desc=f"sweep: DOODL lr {lr:g}")
        m = _evaluate(g.images, val_targets, targets, data, evaluator, guide, s.fd_ridge)
        doodl_sweep.append({"lr": float(lr), "eval_accuracy": m["eval_accuracy"],
                            "fd_per_class": m["fd_per_class"], "guide_accuracy": m["guide_accuracy"],
                            "guide_ce_first": float(g.extra["per_image_losses"][0].mean()),
                            "guide_ce_last": float(g.extra["per_image_losses"][-1].mean()),
                            "seconds": g.seconds, "forward_per_image": g.forward_per_image,
                            "backward_per_image": g.backward_per_image})
    if doodl_sweep:
        best_lr = max(doodl_sweep, key=lambda r: (round(r["eval_accuracy"], 9), -r["fd_per_class"]))["lr"]
        log(f"  DOODL: chosen lr {best_lr:g}")
    else:
        best_lr = float(s.lrs[0])
    config = _doodl_config(s, best_lr)

    log(f"[3/5] generating {len(targets)} targets x {s.seeds} seeds with each method")
    noise, target_vec = batch(list(range(s.seeds)))
    generations = {
        "unguided": run_unguided(den, noise[: s.seeds], sigmas, p=s.p, show_progress=show_progress),
        "one_step": run_one_step(den, loss_for(target_vec, best["crops"], s.doodl_seed), noise,
                                 sigmas, best["scale"], p=s.p, show_progress=show_progress),
    }
    generations["doodl"] = run_doodl(den, loss_for(target_vec, crops is not None, s.doodl_seed),
                                     noise, sigmas, config, show_progress=show_progress)

    log("[4/5] evaluating with the held-out classifier")
    # unguided samples do not depend on the target: the same images are scored against each target
    unguided_images = generations["unguided"].images.repeat(len(targets), 1, 1, 1)
    images = {"unguided": unguided_images, "one_step": generations["one_step"].images,
              "doodl": generations["doodl"].images}
    g = torch.Generator().manual_seed(s.split_seed)
    real_rows = []
    for k in targets:
        pool = data.train_x[data.train_y == k]
        real_rows.append(pool[torch.randperm(pool.shape[0], generator=g)[: s.seeds]])
    images["real_train"] = torch.cat(real_rows).to(device)
    n_real = torch.tensor([r.shape[0] for r in real_rows])
    real_targets = torch.tensor(targets).repeat_interleave(n_real).to(device)
    metrics = {}
    for name, imgs in images.items():
        tv = real_targets if name == "real_train" else target_vec
        metrics[name] = _evaluate(imgs, tv, targets, data, evaluator, guide, s.fd_ridge,
                                  pooled=generations["unguided"].images if name == "unguided" else None)
    for name, gen in generations.items():
        metrics[name].update(_cost(gen, s.steps))
    metrics["real_train"].update({"forward_per_image": 0.0, "backward_per_image": 0.0,
                                  "cost_vs_unguided": 0.0, "seconds": 0.0})
    doodl = generations["doodl"]
    per_image = doodl.extra["per_image_losses"]  # iterations x B, plain guide CE
    curves = {str(k): per_image[:, (target_vec == k).cpu()].mean(1).tolist() for k in targets}

    log("[5/5] writing outputs")
    files = {}
    rows = [str(k) for k in targets]
    files["samples_unguided"] = sample_grid(
        generations["unguided"].images, ["-"], out_dir / "samples_unguided.png",
        title=f"unguided EDICT ({s.steps} steps), seeds 0-{s.seeds - 1}")
    files["samples_one_step"] = sample_grid(
        images["one_step"], rows, out_dir / "samples_one_step.png", correct=metrics["one_step"]["correct"],
        title=f"one-step guidance, scale {best['scale']:g}{' + crops' if best['crops'] else ''} "
              "(green: evaluator agrees)")
    files["samples_doodl"] = sample_grid(
        images["doodl"], rows, out_dir / "samples_doodl.png", correct=metrics["doodl"]["correct"],
        title=f"DOODL, {s.iterations} iterations (green: evaluator agrees)")
    real_grid = torch.cat([torch.cat([r, r.new_full((s.seeds - r.shape[0], 1, 8, 8), -1.0)])
                           for r in real_rows])
    files["samples_real"] = sample_grid(real_grid, rows, out_dir / "samples_real.png",
                                        title="real training images (reference)")
    files["loss_curves"] = loss_curves(
        curves, out_dir / "loss_curves.png",
        title="DOODL: guide cross-entropy of the current images per iteration (log scale)",
        references={"unguided (final)": metrics["unguided"]["guide_ce"],
                    "one-step (final)": metrics["one_step"]["guide_ce"],
                    "DOODL (final)": metrics["doodl"]["guide_ce"]})

    for m in metrics.values():
        m.pop("correct")
    results = {
        "command": command,
        "settings": s.to_dict(),
        "environment": _environment(device),
        "models": {"denoiser": {k: v for k, v in den_meta.items() if k != "settings"},
                   "guide": {k: v for k, v in guide_meta.items() if k != "settings"},
                   "evaluator": {k: v for k, v in eval_meta.items() if k != "settings"}},
        "sweep": sweep,
        "chosen_one_step": {"scale": best["scale"], "crops": best["crops"]},
        "doodl_sweep": doodl_sweep,
        "chosen_doodl": {"lr": best_lr},
        "doodl": {"config": asdict(config), "objective": doodl.extra["objective"],
                  "guide_ce": per_image.mean(1).tolist() if per_image.numel() else [],
                  "per_target_guide_ce": curves, "status": doodl.extra["status"],
                  "warnings": doodl.extra["warnings"]},
        "metrics": metrics,
        "files": {k: str(v) for k, v in files.items()},
        "total_seconds": time.perf_counter() - t_start,
    }
    (out_dir / "results.json").write_text(json.dumps(_jsonable(results), indent=2))
    markdown = results_markdown(results)
    (out_dir / "results.md").write_text(markdown)
    results["files"]["results_md"] = str(out_dir / "results.md")
    results["files"]["results_json"] = str(out_dir / "results.json")
    results["markdown"] = markdown
    return results


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj
