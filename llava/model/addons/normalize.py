"""``--normalize_projector``: bring projected image tokens to the LLM's text-embedding norm scale.

For a projected token x:   y = g * t * x / max(||x||, eps),   then   y <- y * min(1, m / ||y||)

* t = mean L2 norm of the LLM's input-embedding rows (``mm_norm_target``),
* m = max L2 norm of those rows (``mm_norm_max``): the clip keeps a large learned gain from
  pushing tokens past the largest text-token norm,
* g = a learnable scalar gain initialised to 1 (``model.mm_projector_norm.gain``).

t and m are measured once, when the projector is first built, and stored in the config so a
checkpoint rebuilds the same module. The reference implementation hard-codes t=0.83, m=1.22.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

EPS = 1e-6


def enabled(config: Any) -> bool:
    return bool(getattr(config, "normalize_projector", False))


def embedding_norm_stats(weight: torch.Tensor) -> tuple[float, float]:
    """(mean, max) row L2 norm of an embedding matrix, gathered safely under ZeRO-3."""
    if hasattr(weight, "ds_id"):
        import deepspeed

        with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
            norms = weight.detach().float().norm(dim=-1)
            return float(norms.mean()), float(norms.max())
    norms = weight.detach().float().norm(dim=-1)
    return float(norms.mean()), float(norms.max())


class ProjectorNorm(nn.Module):
    """Rescale each token to ``gain * target`` norm, clipped at ``max_norm``."""

    def __init__(self, target: float, max_norm: float) -> None:
        super().__init__()
        if not (0 < target <= max_norm):
            raise ValueError(f"normalize_projector needs 0 < mm_norm_target <= mm_norm_max, got {target}, {max_norm}")
        self.target = target
        self.max_norm = max_norm
        self.gain = nn.Parameter(torch.ones(1))  # 1-D: DeepSpeed cannot flatten 0-dim parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = x.norm(dim=-1, keepdim=True).clamp_min(EPS)
        y = x * (self.gain * self.target / norm)
        y_norm = y.norm(dim=-1, keepdim=True).clamp_min(EPS)
        return y * (self.max_norm / y_norm).clamp(max=1.0)

    def extra_repr(self) -> str:
        return f"target={self.target:.4f}, max_norm={self.max_norm:.4f}"


def configure(config: Any, input_embeddings: torch.Tensor) -> None:
    """Record the flag and, the first time, the norm statistics of the LLM's input embeddings."""
    config.normalize_projector = True
    if getattr(config, "mm_norm_target", None) is None or getattr(config, "mm_norm_max", None) is None:
        config.mm_norm_target, config.mm_norm_max = embedding_norm_stats(input_embeddings)


def build(config: Any) -> ProjectorNorm:
    return ProjectorNorm(float(config.mm_norm_target), float(config.mm_norm_max))
