"""Alignment metrics: cosine, MSE, alignment variance, and the seed's targets.

Definitions (one "row" is one embedding pair: a token with ``--pooling none``, an image with ``mean``):

* cosine: mean over rows of ``cos(MLP(x), y)``;
* MSE: mean over rows and dimensions of ``(MLP(x) - y)**2``;
* alignment variance: population variance (ddof 0), across the image categories present, of each
  category's mean cosine. Every category counts once, whatever its size; a single category gives 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Targets:
    """The seed's targets: cosine > 0.9, MSE < 0.01, alignment variance < 0.05."""

    cosine_min: float = 0.9
    mse_max: float = 0.01
    variance_max: float = 0.05


def cosine_rows(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two ``(rows, d)`` tensors."""
    return F.cosine_similarity(pred, target, dim=-1)


def alignment_variance(category_cosines: Sequence[float]) -> float:
    """Population variance of per-category mean cosines (0.0 for zero or one category)."""
    vals = np.asarray(list(category_cosines), dtype=np.float64)
    return float(vals.var()) if vals.size > 1 else 0.0


class MetricAccumulator:
    """Accumulate per-category sums of cosine and squared error over batches (float64)."""

    def __init__(self, categories: Sequence[str]) -> None:
        self.categories = list(categories)
        k = len(self.categories)
        self.cos_sum = np.zeros(k)
        self.sq_sum = np.zeros(k)
        self.rows = np.zeros(k, dtype=np.int64)
        self.dim = 0
        self.loss_sum = 0.0

    def update(self, pred: torch.Tensor, target: torch.Tensor, category_ids: np.ndarray | torch.Tensor) -> None:
        """Add a batch: ``pred``/``target`` are ``(rows, d)``, ``category_ids`` ``(rows,)`` indices."""
        pred, target = pred.detach().double().cpu(), target.detach().double().cpu()
        cats = torch.as_tensor(np.asarray(category_ids), dtype=torch.long)
        k = len(self.categories)
        cos = cosine_rows(pred, target)
        sq = ((pred - target) ** 2).sum(dim=-1)
        self.cos_sum += torch.bincount(cats, weights=cos, minlength=k).numpy()
        self.sq_sum += torch.bincount(cats, weights=sq, minlength=k).numpy()
        self.rows += torch.bincount(cats, minlength=k).numpy()
        self.dim = pred.shape[-1]

    def compute(self) -> dict[str, Any]:
        """``{cosine, mse, alignment_variance, rows, per_category: {name: {cosine, mse, rows}}}``."""
        total = int(self.rows.sum())
        if total == 0:
            raise ValueError("no rows were accumulated: the split is empty")
        present = self.rows > 0
        per_cat_cos = self.cos_sum[present] / self.rows[present]
        per_category = {
            name: {"cosine": float(self.cos_sum[i] / self.rows[i]),
                   "mse": float(self.sq_sum[i] / (self.rows[i] * self.dim)), "rows": int(self.rows[i])}
            for i, name in enumerate(self.categories) if self.rows[i] > 0
        }
        return {"cosine": float(self.cos_sum.sum() / total), "mse": float(self.sq_sum.sum() / (total * self.dim)),
                "alignment_variance": alignment_variance(per_cat_cos), "rows": total, "per_category": per_category}


def check_targets(metrics: dict[str, Any], targets: Targets | None = None) -> dict[str, dict[str, Any]]:
    """Pass/fail of ``metrics`` against ``targets`` (the seed's by default)."""
    t = targets or Targets()
    checks = (("cosine", ">", t.cosine_min), ("mse", "<", t.mse_max), ("alignment_variance", "<", t.variance_max))
    out = {}
    for name, op, bound in checks:
        value = float(metrics[name])
        ok = value > bound if op == ">" else value < bound
        out[name] = {"value": value, "target": f"{op} {bound}", "pass": bool(ok)}
    return out
