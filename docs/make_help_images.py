"""Build the pictures of the node help pages (``js/docs/images/*.png``).

    python docs/make_help_images.py            # writes js/docs/images/
    python docs/make_help_images.py --out DIR  # somewhere else (the test does this)

* ``edict_pair.png``: one EDICT step, the two coupled latents and the four lines that update them.
* ``doodl_loop.png``: one DOODL iteration (forward chain, decode, crops, scorer; gradient back to the
  noise; the update).
* ``doodl_loss_curve.png``: the ``loss_plot`` image DOODL Optimize outputs (drawn by the node's own
  ``doodl_nodes.bridge.render.loss_plot``), for a real run of the pack's optimizer
  (``doodl_nodes.core.optimize.doodl_optimize``, the paper's settings) on a toy diffusion model whose
  denoiser is exact in closed form: data from a two-component Gaussian mixture in a 4x8x8 "latent",
  a scorer that wants one component's detail pattern. CPU, a few seconds, deterministic.

Only torch and Pillow are needed (no ComfyUI). The diagrams use DejaVu Sans when it is installed,
else Pillow's built-in font, so their pixels may differ between machines; their content does not.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from doodl_nodes.bridge.render import loss_plot  # noqa: E402  (pure torch + PIL; no ComfyUI)
from doodl_nodes.core.optimize import DoodlConfig, doodl_optimize  # noqa: E402

OUT_DIR = REPO / "js" / "docs" / "images"
INK = (30, 30, 30)
BLUE = (30, 90, 200)
RED = (200, 50, 50)
GREEN = (40, 130, 70)
BOX = (236, 242, 252)
PAPER = (252, 252, 252)


# ----------------------------------------------------------------------------------- drawing


def _font(size: int):
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    return ImageFont.load_default(size=size)


def _box(draw, xy, text, font, fill=BOX, outline=INK):
    x0, y0, x1, y1 = xy
    draw.rounded_rectangle(xy, radius=8, fill=fill, outline=outline, width=2)
    lines = text.split("\n")
    heights = [draw.textbbox((0, 0), ln, font=font)[3] for ln in lines]
    y = (y0 + y1) / 2 - (sum(heights) + 4 * (len(lines) - 1)) / 2
    for ln, h in zip(lines, heights):
        w = draw.textlength(ln, font=font)
        draw.text(((x0 + x1) / 2 - w / 2, y), ln, fill=INK, font=font)
        y += h + 4


def _arrow(draw, a, b, color=INK, width=3, head=11):
    draw.line([a, b], fill=color, width=width)
    ang = math.atan2(b[1] - a[1], b[0] - a[0])
    left = (b[0] - head * math.cos(ang - 0.45), b[1] - head * math.sin(ang - 0.45))
    right = (b[0] - head * math.cos(ang + 0.45), b[1] - head * math.sin(ang + 0.45))
    draw.polygon([b, left, right], fill=color)


def _label(draw, xy, text, font, color=INK, anchor="mm"):
    draw.text(xy, text, fill=color, font=font, anchor=anchor)


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.quantize(colors=64, method=2).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def edict_pair_diagram() -> bytes:
    """One EDICT step: x and y, two model calls, two mixing steps (exactly invertible)."""
    from PIL import Image, ImageDraw

    w, h = 980, 400
    img = Image.new("RGB", (w, h), PAPER)
    d = ImageDraw.Draw(img)
    f, small, title = _font(17), _font(14), _font(19)
    _label(d, (w / 2, 22), "One EDICT step: two coupled latents, two model calls, exactly invertible", title)
    rows = {"x": 110, "y": 290}
    cols = [70, 330, 640, 900]
    names = {"x": ["x_t", "x_inter", "x_t-1"], "y": ["y_t", "y_inter", "y_t-1"]}
    for r, yy in rows.items():
        for c, name in zip((cols[0], cols[1], cols[3]), names[r]):
            _box(d, (c - 55, yy - 26, c + 55, yy + 26), name, f)
    # call 1: x_inter = x_t stepped with the model's prediction at y_t
    _arrow(d, (cols[0] + 55, rows["x"]), (cols[1] - 55, rows["x"]), BLUE)
    _arrow(d, (cols[0] + 40, rows["y"] - 26), (cols[1] - 70, rows["x"] + 14), BLUE, width=2)
    _label(d, ((cols[0] + cols[1]) / 2, rows["x"] - 44), "1. model call on y_t,", small, BLUE)
    _label(d, ((cols[0] + cols[1]) / 2, rows["x"] - 26), "one denoising step of x", small, BLUE)
    # call 2: y_inter = y_t stepped with the model's prediction at x_inter
    _arrow(d, (cols[0] + 55, rows["y"]), (cols[1] - 55, rows["y"]), BLUE)
    _arrow(d, (cols[1], rows["x"] + 26), (cols[1] - 20, rows["y"] - 28), BLUE, width=2)
    _label(d, ((cols[0] + cols[1]) / 2 - 10, rows["y"] + 44), "2. model call on x_inter,", small, BLUE)
    _label(d, ((cols[0] + cols[1]) / 2 - 10, rows["y"] + 62), "one denoising step of y", small, BLUE)
    # mixing
    _box(d, (cols[2] - 95, rows["x"] - 26, cols[2] + 95, rows["x"] + 26), "p·x_inter + (1−p)·y_inter", small,
         fill=(240, 250, 243), outline=GREEN)
    _box(d, (cols[2] - 95, rows["y"] - 26, cols[2] + 95, rows["y"] + 26), "p·y_inter + (1−p)·x_t-1", small,
         fill=(240, 250, 243), outline=GREEN)
    _arrow(d, (cols[1] + 55, rows["x"]), (cols[2] - 95, rows["x"]), GREEN)
    _arrow(d, (cols[1] + 55, rows["y"]), (cols[2] - 95, rows["y"]), GREEN)
    _arrow(d, (cols[1] + 50, rows["y"] - 26), (cols[2] - 80, rows["x"] + 26), GREEN, width=2)
    _arrow(d, (cols[3] - 40, rows["x"] + 26), (cols[2] + 60, rows["y"] - 26), GREEN, width=2)
    _arrow(d, (cols[2] + 95, rows["x"]), (cols[3] - 55, rows["x"]), GREEN)
    _arrow(d, (cols[2] + 95, rows["y"]), (cols[3] - 55, rows["y"]), GREEN)
    _label(d, (cols[2], rows["x"] - 44), "3. mix (p = 0.93)", small, GREEN)
    _label(d, (cols[2], rows["y"] + 44), "4. mix", small, GREEN)
    _label(d, (w / 2, h - 22), "Each line can be solved for its input, so inversion runs the four lines backwards "
           "and lands on the same noise (float64 state).", small)
    return _png(img)


def doodl_loop_diagram() -> bytes:
    """One DOODL iteration: forward through the chain to a loss, gradient back to the noise, update."""
    from PIL import Image, ImageDraw

    w, h = 1000, 330
    img = Image.new("RGB", (w, h), PAPER)
    d = ImageDraw.Draw(img)
    f, small, title = _font(16), _font(14), _font(19)
    _label(d, (w / 2, 22), "One DOODL iteration", title)
    y0, y1 = 70, 150
    boxes = [("starting noise\n(x_T = y_T)", 20, 160), ("EDICT chain, T steps\n2 model calls each", 195, 385),
             ("VAE decode\nx_0 and y_0", 420, 565), ("16 random\ncrops", 600, 720),
             ("scorer\n→ loss", 760, 870)]
    for text, a, b in boxes:
        _box(d, (a, y0, b, y1), text, f)
    for (_, _, b), (_, a, _) in zip(boxes, boxes[1:]):
        _arrow(d, (b, (y0 + y1) / 2), (a, (y0 + y1) / 2), BLUE)
    _label(d, (500, y0 - 14), "forward: generate the image, no gradients kept", small, BLUE)
    # backward
    yb = 205
    d.line([(815, y1), (815, yb)], fill=RED, width=3)
    d.line([(815, yb), (90, yb)], fill=RED, width=3)
    _arrow(d, (90, yb), (90, y1 + 2), RED)
    _label(d, (450, yb + 18), "backward: the gradient of the loss through the scorer, the decoder and every "
           "sampling step,", small, RED)
    _label(d, (450, yb + 38), "each step recomputed on its own, so memory does not grow with T", small, RED)
    _box(d, (20, 262, 540, 314), "update the noise: clip each element, momentum 0.9, small perturbation,\n"
         "tie x = y, keep the starting norm", small, fill=(240, 250, 243), outline=GREEN)
    _label(d, (770, 288), "repeat for 'iterations';\nthe best iterate is kept", small, INK)
    return _png(img)


# ------------------------------------------------------------------------ the toy DOODL run


class MixtureDenoiser:
    """Exact x0 prediction ``E[x0 | z]`` for data from ``0.5·N(+m, s²I) + 0.5·N(−m, s²I)`` observed as
    ``z = x0 + sigma·eps`` (ComfyUI's convention for EPS models)."""

    def __init__(self, mean: torch.Tensor, std: float):
        self.means = torch.stack([mean, -mean])  # (2, C, H, W)
        self.var = std ** 2

    def __call__(self, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=z.dtype)
        total = self.var + sigma ** 2
        diff = z.unsqueeze(1) - self.means.to(z)                         # (B, 2, C, H, W)
        logw = -(diff ** 2).flatten(2).sum(-1) / (2 * total)            # (B, 2)
        w = torch.softmax(logw, dim=1)[..., None, None, None]
        post = self.means.to(z) + (self.var / total) * diff             # E[x0 | z, k]
        return (w * post).sum(1)


def toy_doodl_run(iterations: int = 40, steps: int = 20, seed: int = 3) -> dict:
    """DOODL with the paper's settings on the closed-form toy; returns losses and best iteration."""
    from doodl_nodes.demo.methods import karras_sigmas

    g = torch.Generator().manual_seed(0)
    shape = (1, 4, 8, 8)
    mean = torch.randn(shape[1:], generator=g, dtype=torch.float64)
    detail = torch.randn(shape[1:], generator=g, dtype=torch.float64)
    denoise = MixtureDenoiser(mean, std=0.5)
    target = mean + 0.5 * detail  # the "scorer" wants component +m with a particular detail

    def objective(x0, y0):
        return 0.5 * (((x0 - target) ** 2).mean() + ((y0 - target) ** 2).mean())

    sigmas = karras_sigmas(steps, 0.03, 14.6)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    config = DoodlConfig(iterations=iterations, seed=0)  # paper defaults: lr 1, clip 1e-3, momentum 0.9
    result = doodl_optimize(denoise, objective, noise * float(sigmas[0]), sigmas, config,
                            noise_scale=float(sigmas[0]))
    losses = list(result.losses) + ([result.final_loss] if result.final_loss is not None else [])
    best = min(range(len(losses)), key=losses.__getitem__)
    return {"losses": losses, "best_iteration": best, "iterations": iterations, "steps": steps,
            "settings": {"lr": config.lr, "clip": config.clip, "momentum": config.momentum,
                         "perturbation": config.perturbation}}


def loss_curve_png(run: dict) -> bytes:
    from PIL import Image

    t = loss_plot(run["losses"], run["best_iteration"], width=512, height=256,
                  title="DOODL loss (toy model, paper settings)")
    arr = (t[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return _png(Image.fromarray(arr))


def build(out_dir: Path = OUT_DIR) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    run = toy_doodl_run()
    files = {"edict_pair.png": edict_pair_diagram(), "doodl_loop.png": doodl_loop_diagram(),
             "doodl_loss_curve.png": loss_curve_png(run)}
    for name, data in files.items():
        (out_dir / name).write_bytes(data)
    return {"files": {k: len(v) for k, v in files.items()}, "run": run}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: js/docs/images)")
    args = ap.parse_args(argv)
    info = build(args.out)
    run = info["run"]
    print(json.dumps({"files": info["files"], "first_loss": run["losses"][0],
                      "best_loss": run["losses"][run["best_iteration"]],
                      "best_iteration": run["best_iteration"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
