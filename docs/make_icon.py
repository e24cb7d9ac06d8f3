"""Draw the pack's icon, ``docs/icon.png`` (the Comfy Registry's ``[tool.comfy] Icon``).

    python docs/make_icon.py [--out PATH]

400 x 400 px PNG (the Registry accepts SVG/PNG/JPG/GIF up to 800 x 400): two intertwined curves
(EDICT's coupled latent pair) descending from noise to a clean point, over a dark rounded square,
with the word DOODL. Pillow only.
"""
from __future__ import annotations

import argparse
import io
import math
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "icon.png"
SIZE = 400


def _font(size: int):
    from PIL import ImageFont

    for name in ("DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    return ImageFont.load_default(size=size)


def draw_icon(size: int = SIZE) -> bytes:
    from PIL import Image, ImageDraw

    scale = 2  # draw at 2x, then downsample (smooth edges)
    s = size * scale
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([0, 0, s - 1, s - 1], radius=int(0.18 * s), fill=(24, 28, 48, 255))
    # noise speckle on the left
    rng = random.Random(7)
    for _ in range(260):
        x = rng.uniform(0.08, 0.34) * s
        y = rng.uniform(0.12, 0.66) * s
        r = rng.uniform(0.004, 0.011) * s
        g = rng.randint(90, 200)
        d.ellipse([x - r, y - r, x + r, y + r], fill=(g, g, min(255, g + 40), 255))

    # the coupled pair: two curves braiding towards one point on the right
    def curve(phase: float):
        pts = []
        for i in range(201):
            t = i / 200
            x = (0.22 + 0.62 * t) * s
            amp = 0.17 * (1 - t) ** 1.3
            y = (0.39 + amp * math.sin(2 * math.pi * (1.6 * t) + phase)) * s
            pts.append((x, y))
        return pts

    def stroke(points, color, width):
        for x, y in points:  # round brush: smooth at any angle
            d.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=color)

    stroke(curve(0.0), (90, 170, 255, 255), 0.03 * s)
    stroke(curve(math.pi), (255, 150, 80, 255), 0.03 * s)
    cx, cy, r = 0.84 * s, 0.39 * s, 0.045 * s
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(250, 250, 250, 255))
    # the word
    f = _font(int(0.2 * s))
    d.text((s / 2, 0.82 * s), "DOODL", font=f, fill=(245, 245, 250, 255), anchor="mm")
    img = img.resize((size, size), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    data = draw_icon()
    args.out.write_bytes(data)
    print(f"{args.out}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
