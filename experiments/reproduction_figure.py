"""Draw docs/reproduction_digits.png from the JSONL event files of the digits runs in docs/reproduction.md.

    python -m experiments.reproduction_figure RUNS_DIR [OUT.png]

RUNS_DIR holds NAME-SEED.jsonl files (`codash train --out`). Two panels: the live PGD-10 accuracy on 256 test
images and cos(grad at x, grad at x + eta), each averaged over the seeds of a method, against the iteration.
Pillow only (no plotting library is a dependency), so the picture is plain on purpose.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

METHODS = {  # file prefix -> legend, colour
    "fgsm": ("FGSM", (214, 39, 40)),
    "fgsmrs": ("FGSM-RS (α=1.25ε)", (255, 127, 14)),
    "ga4": ("FGSM + GradAlign λ=4", (31, 119, 180)),
    "pgd5": ("PGD-5 (α=ε/2)", (44, 160, 44)),
    "nfgsm": ("N-FGSM (k=2, α=ε)", (148, 103, 189)),
    "free4": ("Free AT (m=4)", (140, 86, 75)),
    "pgdcorner": ("PGD-5-corner", (227, 119, 194)),
    "randcorner": ("Random-corner", (127, 127, 127)),
}
W, H, PANEL_H, LEFT, TOP = 1100, 760, 300, 70, 40


def mean_curves(runs_dir: Path, key: str) -> dict[str, list[tuple[int, float]]]:
    by_method: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(runs_dir.glob("*.jsonl")):
        name = path.stem.rsplit("-", 1)[0]
        for line in path.open():
            event = json.loads(line)
            if event["type"] == "eval" and event.get(key) is not None:
                by_method[name][event["iteration"]].append(event[key])
    return {name: [(it, sum(v) / len(v)) for it, v in sorted(pts.items())] for name, pts in by_method.items()}


def draw_panel(draw, font, top, curves, title, y_range, max_iter):
    low, high = y_range
    right, bottom = W - 260, top + PANEL_H

    def xy(iteration, value):
        x = LEFT + (right - LEFT) * iteration / max_iter
        return x, bottom - (bottom - top) * (value - low) / (high - low)

    draw.text((LEFT, top - 28), title, fill="black", font=font)
    for step in range(5):
        value = low + (high - low) * step / 4
        y = xy(0, value)[1]
        draw.line([(LEFT, y), (right, y)], fill=(225, 225, 225))
        draw.text((LEFT - 45, y - 8), f"{value:.2f}", fill="black", font=font)
    for iteration in range(0, max_iter + 1, 100):
        x = xy(iteration, low)[0]
        draw.text((x - 12, bottom + 4), str(iteration), fill="black", font=font)
    draw.rectangle([LEFT, top, right, bottom], outline="black")
    for name, (_, colour) in METHODS.items():
        if name in curves and len(curves[name]) > 1:
            draw.line([xy(it, v) for it, v in curves[name]], fill=colour, width=3)


def main(argv: list[str]) -> None:
    runs_dir = Path(argv[0])
    default = Path(__file__).resolve().parent.parent / "docs" / "reproduction_digits.png"
    out = Path(argv[1]) if len(argv) > 1 else default
    image = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(image)
    try:  # DejaVu has the Greek letters and ∇; Pillow's built-in font does not
        font = ImageFont.truetype("DejaVuSans.ttf", 14)
    except OSError:
        font = ImageFont.load_default(size=15)
    pgd, cos = mean_curves(runs_dir, "pgd_acc"), mean_curves(runs_dir, "cos_grad_random")
    max_iter = max(it for curve in pgd.values() for it, _ in curve)
    title = "PGD-10 accuracy on 256 test digits (mean over seeds)"
    draw_panel(draw, font, TOP, pgd, title, (0, 0.6), max_iter)
    draw_panel(
        draw, font, TOP + PANEL_H + 80, cos, "cos(∇ℓ(x), ∇ℓ(x+η)): gradient alignment", (0, 1), max_iter
    )
    draw.text((W // 2 - 120, H - 24), "iteration (digits, 1-layer CNN, ε = 0.175)", fill="black", font=font)
    y = TOP
    for name, (label, colour) in METHODS.items():
        if name in pgd:
            seeds = len(list(runs_dir.glob(f"{name}-*.jsonl")))
            draw.line([(W - 245, y + 9), (W - 215, y + 9)], fill=colour, width=4)
            draw.text((W - 208, y), f"{label} ×{seeds}", fill="black", font=font)
            y += 24
    image.save(out)
    print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
