"""``--mm_cosine_loss``: cosine regularizers on the projection, L = L_TP + lambda * L_cos.

Computed per image token on the projector's own input x (vision features, with coordinates if
``--add_spatial_coordinates``) and raw output P1(x) — before normalization and compression — for
real images only (never the blank image a text-only batch runs, never padding).

* ``constrain`` (``--mm_cosine_constrain_mode embed``, default): when the projector input and the
  LLM have the same width (multiNorm on 7B: 4 x 1024 = 4096) it is the seed's formula,
  L_cos = mean(1 - cos(x, P1(x))) (``mm_cosine_embed: identity`` in the config). When the widths
  differ, L_cos = mean(1 - cos(E x, P1(x))), where E is a fixed, seeded matrix with orthonormal
  columns mapping the tower width into the LLM width, so ``||E x|| = ||x||`` and angles between
  vision features are kept. E is a persistent buffer, so the loss is reproducible from a
  checkpoint. (Configs written before the identity case existed have no ``mm_cosine_embed`` and
  keep E whatever the widths, so their checkpoints load unchanged.)
* ``constrain`` with ``--mm_cosine_constrain_mode gram``: width-free; per image, G(x) and G(P1(x))
  are the token-token cosine-similarity matrices and L_cos = mean over images of
  1 - cos(vec G(x), vec G(P1(x))).
* ``self_distill``: a second projector P2 (LLM width -> LLM width, same MLP rule as
  ``mm_projector_type``) and L_cos = mean(1 - cos(P1(x), P2(P1(x)))). ``--mm_cosine_stop_grad``
  detaches the target P1(x) (SimSiam), which rules out the trivial P2 = identity solution
  driving P1. P2 trains with the projector, is saved in ``mm_projector.bin`` under
  ``model.mm_projector_cos.`` and is never used at inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..multimodal_projector.builder import make_projector
from .base import Addon, Geometry, StageContext, arg

LOSSES = ("none", "constrain", "self_distill")
CONSTRAIN_MODES = ("embed", "gram")
DEFAULT_LAMBDA = 0.1
EMBED_SEED = 1234


def validate(loss: str, lam: float | None, mode: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"--mm_cosine_loss {loss!r} is not supported; choose one of {', '.join(LOSSES)}")
    if mode not in CONSTRAIN_MODES:
        raise ValueError(f"--mm_cosine_constrain_mode {mode!r} is not supported; choose one of "
                         f"{', '.join(CONSTRAIN_MODES)}")
    if lam is not None and (not math.isfinite(float(lam)) or float(lam) < 0):
        raise ValueError(f"--mm_cosine_lambda must be a finite number >= 0, got {lam}")


def orthonormal_embedding(d_in: int, d_out: int, seed: int = EMBED_SEED) -> torch.Tensor:
    """(d_out, d_in) matrix with orthonormal columns, deterministic for ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d_out, d_in, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # unique QR: positive diagonal
    return q.float()


def one_minus_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)


def gram(t: torch.Tensor) -> torch.Tensor:
    t = F.normalize(t.float(), dim=-1, eps=1e-8)
    return t @ t.transpose(-1, -2)


class CosineLoss(nn.Module):
    """Holds the fixed embedding (constrain/embed) or P2 (self_distill) and computes L_cos."""

    def __init__(self, loss: str, mode: str, stop_grad: bool, mm_hidden_size: int, hidden_size: int,
                 projector_type: str, identity: bool = False) -> None:
        super().__init__()
        self.loss, self.mode, self.stop_grad, self.identity = loss, mode, bool(stop_grad), bool(identity)
        if self.identity and mm_hidden_size != hidden_size:
            raise ValueError(f"mm_cosine_embed identity needs equal widths, got {mm_hidden_size} and {hidden_size}")
        if self.loss == "constrain" and self.mode == "embed" and not self.identity:
            self.register_buffer("embed", orthonormal_embedding(mm_hidden_size, hidden_size))
        if self.loss == "self_distill":
            self.p2 = make_projector(projector_type, hidden_size, hidden_size)

    def forward(self, x: torch.Tensor, p1: torch.Tensor) -> torch.Tensor:
        """x: (N, T, mm_hidden) projector input; p1: (N, T, hidden) projector output -> scalar L_cos."""
        if self.loss == "self_distill":
            target = p1.detach() if self.stop_grad else p1
            return one_minus_cos(target, self.p2(p1)).mean()
        if self.mode == "gram":
            gx, gp = gram(x), gram(p1)
            return one_minus_cos(gx.flatten(1), gp.flatten(1)).mean()
        if self.identity:
            return one_minus_cos(x, p1).mean()
        ex = x.to(self.embed.dtype) @ self.embed.T
        return one_minus_cos(ex, p1).mean()


@dataclass
class CosineArgs:
    mm_cosine_loss: str = field(default="none", metadata={
        "help": "Cosine regularizer added to the LM loss: none, constrain or self_distill."})
    mm_cosine_lambda: float | None = field(default=None, metadata={
        "help": f"Weight lambda of L_cos (default {DEFAULT_LAMBDA} when a loss is chosen)."})
    mm_cosine_constrain_mode: str | None = field(default=None, metadata={
        "help": "constrain: 'embed' (default; fixed orthonormal embedding of x) or 'gram' (token-token "
                "similarity)."})
    mm_cosine_stop_grad: bool = field(default=False, metadata={
        "help": "self_distill: detach the target P1(x) (SimSiam-style stop-gradient)."})


@dataclass
class CosineConfig:
    mm_cosine_loss: str = "none"
    mm_cosine_lambda: float | None = None
    mm_cosine_constrain_mode: str = "embed"
    mm_cosine_stop_grad: bool = False
    mm_cosine_embed: str | None = None
    """``identity`` (equal widths: the seed's formula) or absent (the orthonormal E)."""


class CosineRegularizer(Addon):
    """Auxiliary loss ``cos`` (weight ``mm_cosine_lambda``); ``model.mm_projector_cos`` travels with the projector."""

    name = "cosine"
    Args = CosineArgs
    Config = CosineConfig
    switch = "mm_cosine_loss"
    modules = {"mm_projector_cos": True}
    aux_name = "cos"
    aux_weight_key = "mm_cosine_lambda"

    @classmethod
    def args_on(cls, args: Any) -> bool:
        return arg(args, cls, "mm_cosine_loss") not in (None, "none")

    @classmethod
    def switch_hint(cls) -> str:
        return "--mm_cosine_loss constrain or self_distill"

    @classmethod
    def enabled(cls, cfg: CosineConfig) -> bool:
        return cfg.mm_cosine_loss not in (None, "none")

    @classmethod
    def from_args(cls, args: Any) -> CosineConfig:
        loss, lam = arg(args, cls, "mm_cosine_loss"), arg(args, cls, "mm_cosine_lambda")
        mode = arg(args, cls, "mm_cosine_constrain_mode") or "embed"
        validate(loss, lam, mode)
        return CosineConfig(loss, DEFAULT_LAMBDA if lam is None else float(lam), mode,
                            bool(arg(args, cls, "mm_cosine_stop_grad")))

    @classmethod
    def validate(cls, cfg: CosineConfig, geo: Geometry) -> None:
        wide = geo.llm_width is not None and geo.mm_hidden_size > geo.llm_width
        if cfg.mm_cosine_loss == "constrain" and cfg.mm_cosine_constrain_mode == "embed" and wide:
            raise ValueError(
                f"--mm_cosine_loss constrain embeds the {geo.mm_hidden_size}-wide vision features isometrically "
                f"into the {geo.llm_width}-wide LLM space, which needs mm_hidden_size <= hidden_size; use "
                "--mm_cosine_constrain_mode gram instead."
            )

    @classmethod
    def finalize(cls, cfg: CosineConfig, base_model: nn.Module, geo: Geometry) -> CosineConfig:
        same = geo.llm_width is not None and geo.mm_hidden_size == geo.llm_width
        if cfg.mm_cosine_loss == "constrain" and cfg.mm_cosine_constrain_mode == "embed" and same:
            return replace(cfg, mm_cosine_embed="identity")
        return cfg

    @classmethod
    def build(cls, cfg: CosineConfig, model_config: Any) -> dict[str, nn.Module]:
        return {"mm_projector_cos": CosineLoss(cfg.mm_cosine_loss, cfg.mm_cosine_constrain_mode,
                                               cfg.mm_cosine_stop_grad, model_config.mm_hidden_size,
                                               model_config.hidden_size, model_config.mm_projector_type,
                                               identity=cfg.mm_cosine_embed == "identity")}

    @classmethod
    def aux_loss(cls, cfg: CosineConfig, ctx: StageContext, vision_x: torch.Tensor,
                 projected: torch.Tensor) -> torch.Tensor:
        return ctx.modules["mm_projector_cos"](vision_x, projected)
