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

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .base import Addon, Stage, StageContext, read_config

EPS = 1e-6


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


@dataclass
class NormalizeArgs:
    normalize_projector: bool = field(default=False, metadata={
        "help": "Rescale projected image tokens to the LLM's text-embedding norm (learnable gain, clipped)."})


@dataclass
class NormalizeConfig:
    normalize_projector: bool = False
    mm_norm_target: float | None = None
    mm_norm_max: float | None = None


class Normalize(Addon):
    """Post-projector stage: ``model.mm_projector_norm`` (travels with the projector)."""

    name = "normalize"
    Args = NormalizeArgs
    Config = NormalizeConfig
    switch = "normalize_projector"
    stage = Stage.POST_PROJECTOR
    modules = {"mm_projector_norm": True}

    @classmethod
    def from_args(cls, args: Any) -> NormalizeConfig:
        return NormalizeConfig(True)

    @classmethod
    def finalize(cls, cfg: NormalizeConfig, base_model: nn.Module) -> NormalizeConfig:
        """Keep statistics a loaded config already has; else measure the LLM's input embeddings."""
        old = read_config(base_model.config, cls)
        if old.mm_norm_target is not None and old.mm_norm_max is not None:
            return replace(cfg, mm_norm_target=old.mm_norm_target, mm_norm_max=old.mm_norm_max)
        target, max_norm = embedding_norm_stats(base_model.embed_tokens.weight)
        return replace(cfg, mm_norm_target=target, mm_norm_max=max_norm)

    @classmethod
    def build(cls, cfg: NormalizeConfig, model_config: Any) -> dict[str, nn.Module]:
        return {"mm_projector_norm": ProjectorNorm(float(cfg.mm_norm_target), float(cfg.mm_norm_max))}

    @classmethod
    def apply(cls, cfg: NormalizeConfig, x: torch.Tensor, ctx: StageContext) -> torch.Tensor:
        return ctx.modules["mm_projector_norm"](x)
