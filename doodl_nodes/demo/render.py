"""PNG output drawn with PIL only (no matplotlib): sample grids and DOODL's loss curves."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["sample_grid", "loss_curves"]

GOOD = (40, 170, 60)
BAD = (210, 50, 40)
NEUTRAL = (120, 120, 120)
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _font():
    return ImageFont.load_default()


def sample_grid(images: torch.Tensor, rows: Sequence[str], path: Path, *, title: str,
                correct: Optional[torch.Tensor] = None, cell: int = 32, gap: int = 4) -> Path:
    """Save ``images`` ``(R*C, 1, 8, 8)`` in [-1, 1] (row-major) as a grid with one labelled row per
    entry of ``rows``. ``correct`` ``(R*C,)`` colours each frame green (the held-out evaluator agrees
    with the row's target) or red; without it frames are grey."""
    r = len(rows)
    c = images.shape[0] // r
    pix = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pix = pix.reshape(r, c, 8, 8).numpy()
    label_w, top = 28, 22
    w = label_w + c * (cell + gap) + gap
    h = top + r * (cell + gap) + gap
    im = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    font = _font()
    draw.text((4, 4), title, fill=(0, 0, 0), font=font)
    for i in range(r):
        y = top + gap + i * (cell + gap)
        draw.text((6, y + cell // 2 - 6), str(rows[i]), fill=(0, 0, 0), font=font)
        for j in range(c):
            x = label_w + gap + j * (cell + gap)
            colour = NEUTRAL
            if correct is not None:
                colour = GOOD if bool(correct[i * c + j]) else BAD
            draw.rectangle([x - 2, y - 2, x + cell + 1, y + cell + 1], fill=colour)
            tile = Image.fromarray(np.ascontiguousarray(pix[i, j])).resize((cell, cell), Image.NEAREST)
            im.paste(tile.convert("RGB"), (x, y))
    path = Path(path)
    im.save(path)
    return path


def loss_curves(per_target: dict, path: Path, *, title: str, references: Optional[dict] = None,
                width: int = 720, height: int = 420) -> Path:
    """Plot one curve per target (``{label: [loss per iteration]}``) plus their mean (black), on a
    log-scaled y axis, with optional horizontal reference lines ``{label: value}`` (dashed)."""
    references = references or {}
    curves = {k: [float(v) for v in vals] for k, vals in per_target.items() if len(vals)}
    if not curves:
        raise ValueError("no loss curves to draw")
    n = max(len(v) for v in curves.values())
    mean = [float(np.mean([v[i] for v in curves.values() if i < len(v)])) for i in range(n)]
    values = [x for v in curves.values() for x in v] + mean + list(references.values())
    floor = 1e-3
    lo = math.log10(max(min(values), floor))
    hi = math.log10(max(max(values), floor * 10))
    if hi - lo < 1e-6:
        hi = lo + 1
    left, right, top, bottom = 60, 150, 30, 40
    im = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    font = _font()
    pw, ph = width - left - right, height - top - bottom

    def xy(i, v):
        x = left + (pw * i / max(n - 1, 1))
        y = top + ph * (hi - math.log10(max(v, floor))) / (hi - lo)
        return x, y

    draw.rectangle([left, top, left + pw, top + ph], outline=(0, 0, 0))
    for e in range(math.floor(lo), math.ceil(hi) + 1):
        if lo - 1e-9 <= e <= hi + 1e-9:
            _, y = xy(0, 10 ** e)
            draw.line([left, y, left + pw, y], fill=(225, 225, 225))
            draw.text((8, y - 6), f"1e{e}", fill=(0, 0, 0), font=font)
    for t in range(0, n, max(1, n // 10)):
        x, _ = xy(t, 1)
        draw.text((x - 6, top + ph + 6), str(t), fill=(0, 0, 0), font=font)
    draw.text((left + pw // 2 - 30, height - 18), "iteration", fill=(0, 0, 0), font=font)
    draw.text((left, 8), title, fill=(0, 0, 0), font=font)
    legend_y = top
    for idx, (label, vals) in enumerate(curves.items()):
        colour = PALETTE[idx % len(PALETTE)]
        pts = [xy(i, v) for i, v in enumerate(vals)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=1)
        draw.text((left + pw + 10, legend_y), f"target {label}", fill=colour, font=font)
        legend_y += 14
    draw.line([xy(i, v) for i, v in enumerate(mean)] if n > 1 else [xy(0, mean[0])] * 2,
              fill=(0, 0, 0), width=3)
    draw.text((left + pw + 10, legend_y), "mean", fill=(0, 0, 0), font=font)
    legend_y += 20
    for idx, (label, value) in enumerate(references.items()):
        colour = [(60, 60, 60), (200, 0, 200), (0, 110, 0)][idx % 3]
        _, y = xy(0, value)
        for x0 in range(left, left + pw, 12):
            draw.line([x0, y, min(x0 + 6, left + pw), y], fill=colour, width=2)
        draw.text((left + pw + 10, legend_y), f"{label}: {value:.3g}", fill=colour, font=font)
        legend_y += 14
    path = Path(path)
    im.save(path)
    return path
