"""Seeded training of the demo's networks, cached on disk.

Weights are saved with ``torch.save(state_dict)`` and read back with ``torch.load(weights_only=True)``
(no pickled code) under ``cache_dir``, in files named by a hash of everything that determines them
(architecture, training settings, seed, data split), so a changed setting trains a new model and an
unchanged one is reused. A JSON file beside each weight file records how it was trained.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .data import Digits
from .models import DigitDenoiser, build_classifier
from .progress import progress

__all__ = ["train_denoiser", "train_classifier", "cache_key", "FORMAT_VERSION"]

FORMAT_VERSION = 1


def cache_key(kind: str, settings: dict) -> str:
    blob = json.dumps({"kind": kind, "format": FORMAT_VERSION, **settings}, sort_keys=True)
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _load_or_none(model: torch.nn.Module, path: Path, log) -> Optional[dict]:
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        meta = json.loads(meta_path.read_text())
    except Exception as exc:  # a corrupt or stale cache file: retrain rather than fail
        log(f"  cache file {path} unusable ({exc}); retraining")
        return None
    log(f"  loaded {path}")
    return meta


def _save(model: torch.nn.Module, path: Path, meta: dict, log) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    log(f"  saved {path}")


def train_denoiser(data: Digits, settings: dict, cache_dir: Path, device: torch.device, *,
                   log=print, show_progress: bool = True) -> tuple[DigitDenoiser, dict]:
    """Train (or load) the unconditional denoiser on the training images (labels never used).

    ``settings``: width, depth, steps, batch, lr, ema, p_mean, p_std, seed, split_seed.
    EDM training: ``ln sigma ~ N(p_mean, p_std^2)``, loss weighted to predict the EDM target.
    """
    sigma_data = float(data.train_x.std())
    model = DigitDenoiser(settings["width"], settings["depth"], sigma_data=sigma_data)
    path = Path(cache_dir) / (cache_key("denoiser", settings) + ".pt")
    meta = _load_or_none(model, path, log)
    if meta is not None:
        return model.to(device).eval().requires_grad_(False), meta

    torch.manual_seed(settings["seed"])
    model = DigitDenoiser(settings["width"], settings["depth"], sigma_data=sigma_data).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    steps, batch = settings["steps"], settings["batch"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 200) * 0.5 * (1 + math.cos(math.pi * i / steps)))
    g = torch.Generator(device="cpu").manual_seed(settings["seed"])
    x_all = data.train_x.to(device)
    sd = model.sigma_data
    t0 = time.perf_counter()
    running = None
    with progress(steps, "train denoiser", disable=not show_progress) as bar:
        for i in range(steps):
            idx = torch.randint(0, x_all.shape[0], (batch,), generator=g)
            x0 = x_all[idx.to(device)]
            # random horizontal shifts are not label-preserving for digits; use the data as is
            ln_sigma = torch.randn(batch, generator=g) * settings["p_std"] + settings["p_mean"]
            sigma = ln_sigma.exp().to(device)
            noise = torch.randn(x0.shape, generator=g).to(device)
            z = x0 + sigma[:, None, None, None] * noise
            s = sigma[:, None, None, None]
            c_skip = sd ** 2 / (s ** 2 + sd ** 2)
            c_out = s * sd / (s ** 2 + sd ** 2).sqrt()
            c_in = 1 / (s ** 2 + sd ** 2).sqrt()
            target = (x0 - c_skip * z) / c_out
            pred = model.net(c_in * z, sigma.log() / 4)
            loss = F.mse_loss(pred, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            decay = min(settings["ema"], (1 + i) / (10 + i))  # EMA warm-up
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - decay)
            lv = float(loss.detach())
            running = lv if running is None else 0.98 * running + 0.02 * lv
            bar.update(1)
            if i % 50 == 0 or i == steps - 1:
                bar.set_postfix_str(f"loss {running:.4f}")
    meta = {"settings": settings, "sigma_data": sigma_data, "final_loss": running,
            "seconds": round(time.perf_counter() - t0, 1), "device": str(device)}
    _save(ema, path, meta, log)
    return ema.eval().requires_grad_(False), meta


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Translate each image by up to one pixel (independently), filling with background (-1)."""
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    choice = torch.randint(0, 9, (x.shape[0],), generator=g).to(x.device)
    out = torch.empty_like(x)
    for k in range(9):
        dy, dx = divmod(k, 3)
        sel = choice == k
        out[sel] = padded[sel][:, :, dy:dy + 8, dx:dx + 8]
    return out


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def train_classifier(data: Digits, settings: dict, cache_dir: Path, device: torch.device, *,
                     name: str, log=print, show_progress: bool = True
                     ) -> tuple[torch.nn.Module, dict]:
    """Train (or load) a digit classifier on the training images; report held-out accuracy.

    ``settings``: kind ("cnn" or "mlp"), width, feature_dim, epochs, batch, lr, seed, split_seed.
    """
    def build():
        return build_classifier(settings["kind"], settings["width"], settings["feature_dim"])

    model = build()
    path = Path(cache_dir) / (cache_key(f"classifier-{settings['kind']}", settings) + ".pt")
    meta = _load_or_none(model, path, log)
    if meta is not None:
        return model.to(device).eval().requires_grad_(False), meta

    torch.manual_seed(settings["seed"])
    model = build().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=1e-4)
    g = torch.Generator(device="cpu").manual_seed(settings["seed"])
    x_all, y_all = data.train_x.to(device), data.train_y.to(device)
    n, batch = x_all.shape[0], settings["batch"]
    per_epoch = math.ceil(n / batch)
    total = settings["epochs"] * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings["lr"], total_steps=total)
    t0 = time.perf_counter()
    with progress(total, f"train {name}", disable=not show_progress) as bar:
        for _ in range(settings["epochs"]):
            perm = torch.randperm(n, generator=g).to(device)
            model.train()
            for b in range(per_epoch):
                idx = perm[b * batch:(b + 1) * batch]
                loss = F.cross_entropy(model(_shift(x_all[idx], g)), y_all[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
            model.eval()
            bar.set_postfix_str(f"loss {float(loss.detach()):.3f}")
    model.eval().requires_grad_(False)
    meta = {"settings": settings, "name": name,
            "train_accuracy": accuracy(model, x_all, y_all),
            "test_accuracy": accuracy(model, data.test_x.to(device), data.test_y.to(device)),
            "seconds": round(time.perf_counter() - t0, 1), "device": str(device)}
    _save(model, path, meta, log)
    return model, meta
