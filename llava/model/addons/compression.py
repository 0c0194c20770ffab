"""``--compression_after_projection --final_spatial_size N``: pool the projected token grid to N tokens.

N is a token count (1, 4, 16, 64, 144, ...): the grid of side S = sqrt(#patches) is pooled to side
s = sqrt(N). N must be a perfect square whose side divides S (equal windows), so on a 24x24 tower
the valid values are 1, 4, 9, 16, 36, 64, 144, 576. ``--mm_compression_mode`` chooses ``avg``
(default), ``max`` or ``bilinear`` (antialiased resize). The reference code treats N as a side
length; we follow its README (a count) and reject anything ambiguous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .base import Addon, Geometry, Stage, StageContext, arg

MODES = ("avg", "max", "bilinear")


def valid_sizes(grid_side: int) -> list[int]:
    """Token counts N allowed for a grid of side ``grid_side``."""
    return [d * d for d in range(1, grid_side + 1) if grid_side % d == 0]


def validate(final_spatial_size: int | None, grid_side: int, mode: str = "avg") -> int:
    """Return the pooled side; raise a message that says what N means and lists the valid values."""
    valid = valid_sizes(grid_side)
    if mode not in MODES:
        raise ValueError(f"--mm_compression_mode {mode!r} is not supported; choose one of {', '.join(MODES)}")
    if final_spatial_size is None or final_spatial_size not in valid:
        raise ValueError(
            f"--final_spatial_size {final_spatial_size} is not valid: it is the number of image tokens after "
            f"compression (a perfect square whose side divides the {grid_side}x{grid_side} patch grid). "
            f"Valid values for this vision tower: {', '.join(map(str, valid))}."
        )
    return math.isqrt(final_spatial_size)


def compress(tokens: torch.Tensor, out_side: int, mode: str = "avg") -> torch.Tensor:
    """(N, S*S, D) -> (N, s*s, D) with s = ``out_side``; row-major order is kept."""
    n, t, d = tokens.shape
    side = math.isqrt(t)
    if side * side != t:
        raise ValueError(f"compression needs a square token grid, got {t} tokens (use mm_vision_select_feature patch)")
    if out_side == side:
        return tokens
    grid = tokens.transpose(1, 2).reshape(n, d, side, side)
    if mode == "avg":
        pooled = F.adaptive_avg_pool2d(grid, out_side)
    elif mode == "max":
        pooled = F.adaptive_max_pool2d(grid, out_side)
    else:
        pooled = F.interpolate(grid.float(), size=(out_side, out_side), mode="bilinear", antialias=True,
                               align_corners=False).to(grid.dtype)
    return pooled.reshape(n, d, out_side * out_side).transpose(1, 2)


@dataclass
class CompressionArgs:
    compression_after_projection: bool = field(default=False, metadata={
        "help": "Pool the projected image-token grid down to --final_spatial_size tokens."})
    final_spatial_size: int | None = field(default=None, metadata={
        "help": "Image tokens after compression (a token count: 1, 4, 16, 64, 144, ...)."})
    mm_compression_mode: str | None = field(default=None, metadata={
        "help": "Compression: avg (default), max or bilinear."})


@dataclass
class CompressionConfig:
    compression_after_projection: bool = False
    final_spatial_size: int | None = None
    mm_compression_mode: str = "avg"


class Compression(Addon):
    """Post-normalization stage: (N, S*S, D) -> (N, s*s, D)."""

    name = "compression"
    Args = CompressionArgs
    Config = CompressionConfig
    switch = "compression_after_projection"
    stage = Stage.POST_NORM

    @classmethod
    def from_args(cls, args: Any) -> CompressionConfig:
        size = arg(args, cls, "final_spatial_size")
        return CompressionConfig(True, None if size is None else int(size),
                                 arg(args, cls, "mm_compression_mode") or "avg")

    @classmethod
    def validate(cls, cfg: CompressionConfig, geo: Geometry) -> None:
        if geo.has_cls:
            raise ValueError("--compression_after_projection needs a square patch grid: use "
                             "--mm_vision_select_feature patch (not cls_patch).")
        validate(cfg.final_spatial_size, geo.out_side, cfg.mm_compression_mode)

    @classmethod
    def grid_side(cls, cfg: CompressionConfig, side: int) -> int:
        return validate(cfg.final_spatial_size, side, cfg.mm_compression_mode)

    @classmethod
    def tokens(cls, cfg: CompressionConfig, n: int) -> int:
        return int(cfg.final_spatial_size)

    @classmethod
    def apply(cls, cfg: CompressionConfig, x: torch.Tensor, ctx: StageContext) -> torch.Tensor:
        return compress(x, cls.grid_side(cfg, ctx.side), cfg.mm_compression_mode)
