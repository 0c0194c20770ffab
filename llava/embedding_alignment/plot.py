"""Training curves: ``metrics.csv`` and a PNG with three panels (cosine, MSE, alignment variance).

Drawn with Pillow (already a dependency), so no plotting library is needed: per panel, train in blue,
validation in orange, the seed's target as a grey horizontal line, epochs on the x axis.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw

from llava.utils.atomic import atomic_path

from .metrics import Targets

PANELS = (("cosine", "cosine (higher is better)"), ("mse", "MSE (lower is better)"),
          ("alignment_variance", "alignment variance (lower)"))
SERIES = (("train", (31, 119, 180)), ("val", (255, 127, 14)))


def write_curves_csv(history: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """One row per epoch with every scalar in ``history`` (nested dicts are left out)."""
    if not history:
        return
    fields = [k for k, v in history[0].items() if not isinstance(v, dict)]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def _target_of(metric: str, targets: Targets) -> float:
    return {"cosine": targets.cosine_min, "mse": targets.mse_max, "alignment_variance": targets.variance_max}[metric]


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, epochs: list[float],
           series: list[tuple[list[float], tuple[int, int, int]]], target: float) -> None:
    left, top, right, bottom = box
    px0, py0, px1, py1 = left + 62, top + 24, right - 10, bottom - 28
    draw.text((left + 8, top + 4), title, fill="black")
    values = [v for vals, _ in series for v in vals if math.isfinite(v)] + [target]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad
    e0, e1 = min(epochs), max(epochs) if len(epochs) > 1 else min(epochs) + 1

    def xy(e: float, v: float) -> tuple[float, float]:
        return px0 + (e - e0) / (e1 - e0) * (px1 - px0), py1 - (v - lo) / (hi - lo) * (py1 - py0)

    draw.rectangle((px0, py0, px1, py1), outline="black")
    for frac in (0.0, 0.5, 1.0):
        v = lo + frac * (hi - lo)
        y = xy(e0, v)[1]
        draw.line((px0 - 4, y, px0, y), fill="black")
        draw.text((left + 4, y - 6), f"{v:.3g}", fill="black")
    draw.text((px0, py1 + 6), f"epoch {e0:g}", fill="black")
    draw.text((px1 - 60, py1 + 6), f"epoch {e1:g}", fill="black")
    ty = xy(e0, target)[1]
    for x in range(int(px0), int(px1), 8):
        draw.line((x, ty, min(x + 4, px1), ty), fill=(150, 150, 150))
    for vals, colour in series:
        pts = [xy(e, v) for e, v in zip(epochs, vals) if math.isfinite(v)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        for x, y in pts[-1:] if len(pts) > 1 else pts:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike, targets: Targets | None = None) -> None:
    """Save the three-panel PNG for ``history`` (rows with ``epoch``, ``train_<m>``, ``val_<m>``)."""
    if not history:
        return
    targets = targets or Targets()
    w, h = 420, 300
    img = Image.new("RGB", (w * len(PANELS), h + 24), "white")
    draw = ImageDraw.Draw(img)
    epochs = [float(row["epoch"]) for row in history]
    for i, (metric, title) in enumerate(PANELS):
        series = [([float(row.get(f"{split}_{metric}", math.nan)) for row in history], colour)
                  for split, colour in SERIES]
        _panel(draw, (i * w, 0, (i + 1) * w, h), title, epochs, series, _target_of(metric, targets))
    x = 10
    for (split, colour) in (*SERIES, ("target", (150, 150, 150))):
        draw.rectangle((x, h + 8, x + 14, h + 18), fill=colour)
        draw.text((x + 18, h + 6), split, fill="black")
        x += 90
    with atomic_path(path, suffix=".tmp.png") as tmp:
        img.save(tmp)
