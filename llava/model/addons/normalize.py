"""``--normalize_projector``: bring projected image tokens to the LLM's text-embedding norm scale.

Two styles (``--mm_norm_style``), both stored in ``config.json`` so a checkpoint rebuilds the same module:

* ``scalar`` (default; a config without ``mm_norm_style`` is scalar): for a projected token x,
  ``y = g * t * x / max(||x||, eps)``, then ``y <- y * min(1, m / ||y||)``, with g a learnable scalar
  gain (init 1, ``model.mm_projector_norm.gain``): every token has norm g*t, never above m.
  t / m default to the mean / max row L2 norm of the LLM's input embeddings, measured once.
* ``reference`` (the Beyond Semantics code, ``NormalizedProjector`` + ``RMSNorm``): RMSNorm with a
  learnable per-channel weight w (LLM width, init 1, eps 1e-6, computed in fp32):
  ``r = w * (x / sqrt(mean(x^2) + 1e-6))``, then clip each token's norm at m, then multiply by t:
  ``y = t * r * min(1, m / ||r||)``. At init every token has norm t*m = 0.83 * 1.22 = 1.0126
  (``model.mm_projector_norm.weight``); the learned weight can change directions. t / m default
  to the reference's constants 0.83 / 1.22 (``--mm_norm_measure True`` measures them instead).

``--mm_norm_target`` / ``--mm_norm_max`` override t / m for either style.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .base import Addon, Geometry, Stage, StageContext, arg, read_config

EPS = 1e-6
STYLES = ("scalar", "reference")
REFERENCE_TARGET = 0.83
REFERENCE_MAX = 1.22
REFERENCE_RMS_EPS = 1e-6


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


class ReferenceProjectorNorm(nn.Module):
    """The reference's RMSNorm (per-channel weight) -> clip the norm at ``max_norm`` -> times ``target``."""

    def __init__(self, width: int, target: float, max_norm: float, eps: float = REFERENCE_RMS_EPS) -> None:
        super().__init__()
        self.target, self.max_norm, self.eps = target, max_norm, eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        r = self.weight * h.to(dtype)
        norms = torch.norm(r, dim=-1, keepdim=True)
        r = r * torch.minimum(self.max_norm / norms, torch.ones_like(norms))
        return r * self.target

    def extra_repr(self) -> str:
        return f"width={self.weight.shape[0]}, target={self.target:.4f}, max_norm={self.max_norm:.4f}"


@dataclass
class NormalizeArgs:
    normalize_projector: bool = field(default=False, metadata={
        "help": "Bring projected image tokens to the LLM's text-embedding norm (see --mm_norm_style)."})
    mm_norm_style: str | None = field(default=None, metadata={
        "help": "scalar (default: one learnable gain, target = measured mean embedding norm) or reference "
                "(the paper's code: per-channel RMSNorm, clip at 1.22, times 0.83)."})
    mm_norm_target: float | None = field(default=None, metadata={
        "help": "Override the target norm t (scalar: measured mean; reference: 0.83)."})
    mm_norm_max: float | None = field(default=None, metadata={
        "help": "Override the clip norm m (scalar: measured max; reference: 1.22)."})
    mm_norm_measure: bool = field(default=False, metadata={
        "help": "reference style: measure t and m from the LLM's input embeddings instead of 0.83 / 1.22."})


@dataclass
class NormalizeConfig:
    normalize_projector: bool = False
    mm_norm_target: float | None = None
    mm_norm_max: float | None = None
    mm_norm_style: str | None = None
    """None (absent) is the scalar style: configs written before the styles existed."""


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
        style = arg(args, cls, "mm_norm_style") or "scalar"
        if style not in STYLES:
            raise ValueError(f"--mm_norm_style {style!r} is not supported; choose one of {', '.join(STYLES)}")
        target, max_norm = arg(args, cls, "mm_norm_target"), arg(args, cls, "mm_norm_max")
        if style == "reference" and not arg(args, cls, "mm_norm_measure"):
            target = REFERENCE_TARGET if target is None else target
            max_norm = REFERENCE_MAX if max_norm is None else max_norm
        if style == "scalar" and arg(args, cls, "mm_norm_measure"):
            raise ValueError("--mm_norm_measure is for --mm_norm_style reference (the scalar style always "
                             "measures unless --mm_norm_target/--mm_norm_max are given); drop it.")
        return NormalizeConfig(True, target, max_norm, None if style == "scalar" else style)

    @classmethod
    def validate(cls, cfg: NormalizeConfig, geo: Geometry) -> None:
        for flag, value in (("mm_norm_target", cfg.mm_norm_target), ("mm_norm_max", cfg.mm_norm_max)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{flag} must be a finite number > 0, got {value}")
        if cfg.mm_norm_style is None and None not in (cfg.mm_norm_target, cfg.mm_norm_max) \
                and cfg.mm_norm_target > cfg.mm_norm_max:
            raise ValueError(f"--mm_norm_target {cfg.mm_norm_target} is above --mm_norm_max {cfg.mm_norm_max}: "
                             "the scalar style needs target <= max.")

    @classmethod
    def finalize(cls, cfg: NormalizeConfig, base_model: nn.Module, geo: Geometry) -> NormalizeConfig:
        """Keep statistics a loaded config already has; else measure what is still missing."""
        old = read_config(base_model.config, cls)
        target = cfg.mm_norm_target if cfg.mm_norm_target is not None else old.mm_norm_target
        max_norm = cfg.mm_norm_max if cfg.mm_norm_max is not None else old.mm_norm_max
        if target is None or max_norm is None:
            mean, top = embedding_norm_stats(base_model.embed_tokens.weight)
            target = mean if target is None else target
            max_norm = top if max_norm is None else max_norm
        return replace(cfg, mm_norm_target=target, mm_norm_max=max_norm)

    @classmethod
    def build(cls, cfg: NormalizeConfig, model_config: Any) -> dict[str, nn.Module]:
        if cfg.mm_norm_style == "reference":
            module = ReferenceProjectorNorm(model_config.hidden_size, float(cfg.mm_norm_target),
                                            float(cfg.mm_norm_max))
        else:
            module = ProjectorNorm(float(cfg.mm_norm_target), float(cfg.mm_norm_max))
        return {"mm_projector_norm": module}

    @classmethod
    def apply(cls, cfg: NormalizeConfig, x: torch.Tensor, ctx: StageContext) -> torch.Tensor:
        return ctx.modules["mm_projector_norm"](x)
