"""``--twoD_vision_embedding``: axial 2D rotary position embedding for image tokens.

Position ids become two streams, shape (2, B, L): (row stream, column stream). A text token at
1D position p has (p, p); an image block that starts at p0 gives its token in grid cell (r, c)
the positions (p0 + r, p0 + c), and the text after it continues at p0 + side. Rotary frequency
pairs alternate between the streams (even pairs rotate by row, odd pairs by column), so each
axis gets the full frequency range. With equal streams this is exactly 1D RoPE, so text-only
sequences are unchanged. The module wraps the LLM's own rotary embedding (same ``inv_freq`` and
scaling), and transformers' generation extends (2, B, L) position ids itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .base import Addon, Geometry


class AxialRotaryEmbedding(nn.Module):
    """Wrap a transformers rotary module; accept (B, L) or (2, B, L) position ids."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if position_ids.ndim == 2:
            return self.base(x, position_ids)
        cos_r, sin_r = self.base(x, position_ids[0])
        cos_c, sin_c = self.base(x, position_ids[1])
        dim = cos_r.shape[-1]
        pair = torch.arange(dim, device=cos_r.device) % (dim // 2)
        use_col = (pair % 2 == 1).view(*([1] * (cos_r.ndim - 1)), dim)
        return torch.where(use_col, cos_c, cos_r), torch.where(use_col, sin_c, sin_r)


@dataclass
class Rope2DArgs:
    twoD_vision_embedding: bool = field(default=False, metadata={
        "help": "Axial 2D RoPE for image tokens (row/column); text keeps 1D positions."})


@dataclass
class Rope2DConfig:
    twoD_vision_embedding: bool = False


class Rope2D(Addon):
    """Wraps the LLM's rotary embedding; image blocks get (row, column) position streams."""

    name = "rope2d"
    Args = Rope2DArgs
    Config = Rope2DConfig
    switch = "twoD_vision_embedding"
    uses_2d_positions = True

    @classmethod
    def from_args(cls, args: Any) -> Rope2DConfig:
        return Rope2DConfig(True)

    @classmethod
    def validate(cls, cfg: Rope2DConfig, geo: Geometry) -> None:
        if geo.has_cls:
            raise ValueError("--twoD_vision_embedding needs a square patch grid: use "
                             "--mm_vision_select_feature patch (not cls_patch).")

    @classmethod
    def install(cls, cfg: Rope2DConfig, base_model: nn.Module) -> None:
        """Replace ``base_model.rotary_emb`` by its axial wrapper (idempotent)."""
        if not isinstance(base_model.rotary_emb, AxialRotaryEmbedding):
            base_model.rotary_emb = AxialRotaryEmbedding(base_model.rotary_emb)
