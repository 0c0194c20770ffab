"""``--add_spatial_coordinates``: append each patch's normalized (x, y) in [-1, 1] to its feature.

x grows left to right, y top to bottom; the projector input widens by 2. A CLS token (with
``mm_vision_select_feature cls_patch``) gets (0, 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .base import Addon, Stage, StageContext


def grid_coordinates(side: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(side*side, 2) of (x, y) in [-1, 1], row-major; a 1x1 grid is at (0, 0)."""
    axis = torch.linspace(-1.0, 1.0, side, device=device, dtype=dtype) if side > 1 else torch.zeros(
        1, device=device, dtype=dtype)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)


def append(features: torch.Tensor, side: int, has_cls: bool) -> torch.Tensor:
    """(N, T, C) -> (N, T, C + 2)."""
    coords = grid_coordinates(side, features.device, features.dtype)
    if has_cls:
        coords = torch.cat([coords.new_zeros(1, 2), coords], dim=0)
    if coords.shape[0] != features.shape[1]:
        raise ValueError(f"add_spatial_coordinates: {features.shape[1]} tokens do not form a {side}x{side} grid")
    return torch.cat([features, coords.unsqueeze(0).expand(features.shape[0], -1, -1)], dim=-1)


@dataclass
class CoordinatesArgs:
    add_spatial_coordinates: bool = field(default=False, metadata={
        "help": "Append each patch's normalized (x, y) to its vision feature before the projector (+2 width)."})


@dataclass
class CoordinatesConfig:
    add_spatial_coordinates: bool = False


class Coordinates(Addon):
    """Pre-projector stage: (N, T, C) -> (N, T, C + 2)."""

    name = "coordinates"
    Args = CoordinatesArgs
    Config = CoordinatesConfig
    switch = "add_spatial_coordinates"
    stage = Stage.PRE_PROJECTOR

    @classmethod
    def from_args(cls, args: Any) -> CoordinatesConfig:
        return CoordinatesConfig(True)

    @classmethod
    def input_width(cls, cfg: CoordinatesConfig, width: int) -> int:
        return width + 2

    @classmethod
    def apply(cls, cfg: CoordinatesConfig, x: torch.Tensor, ctx: StageContext) -> torch.Tensor:
        return append(x, ctx.side, ctx.has_cls)
