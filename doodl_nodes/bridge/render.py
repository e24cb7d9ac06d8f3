"""Small image builders for node outputs: an iterate strip and a loss plot, as ComfyUI IMAGEs
(float32 ``(B, H, W, 3)`` in [0, 1])."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["image_strip", "loss_plot", "bchw_to_image"]


def bchw_to_image(images: torch.Tensor) -> torch.Tensor:
    return images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().contiguous()


def image_strip(frames: Sequence[torch.Tensor], height: int = 256) -> torch.Tensor:
    """Concatenate ``(3, H, W)`` frames side by side, each resized to ``height`` px tall."""
    if not frames:
        return torch.zeros(1, height, height, 3)
    tiles = []
    for f in frames:
        f = f.detach().float().cpu().unsqueeze(0)
        w = max(1, round(f.shape[-1] * height / f.shape[-2]))
        tiles.append(F.interpolate(f, size=(height, w), mode="bilinear", align_corners=False,
                                   antialias=True)[0])
    return bchw_to_image(torch.cat(tiles, dim=-1).unsqueeze(0))


def loss_plot(losses: Sequence[float], best_iteration: int | None = None, width: int = 512,
              height: int = 256, title: str = "DOODL loss") -> torch.Tensor:
    """A line plot of ``losses`` per iteration (best iterate marked) as a (1, H, W, 3) IMAGE."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 48, width - 12, 22, height - 24
    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    draw.text((left, 4), title, fill=(20, 20, 20))
    vals = [v for v in losses if math.isfinite(v)]
    if vals:
        lo, hi = min(vals), max(vals)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        n = max(1, len(losses) - 1)

        def xy(i, v):
            return (left + (right - left) * i / n, bottom - (bottom - top) * (v - lo) / (hi - lo))

        pts = [xy(i, v) for i, v in enumerate(losses) if math.isfinite(v)]
        if len(pts) > 1:
            draw.line(pts, fill=(30, 90, 200), width=2)
        for p in pts:
            draw.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=(30, 90, 200))
        if best_iteration is not None and 0 <= best_iteration < len(losses):
            bx, by = xy(best_iteration, losses[best_iteration])
            draw.ellipse([bx - 5, by - 5, bx + 5, by + 5], outline=(220, 50, 50), width=2)
        draw.text((4, top), f"{hi:.4g}", fill=(60, 60, 60))
        draw.text((4, bottom - 10), f"{lo:.4g}", fill=(60, 60, 60))
        draw.text((left, bottom + 6), "0", fill=(60, 60, 60))
        draw.text((right - 24, bottom + 6), str(len(losses) - 1), fill=(60, 60, 60))
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(height, width, 3)
    return (t.float() / 255).unsqueeze(0)
