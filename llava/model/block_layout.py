"""Where each token of an image block sits: 2D grid coordinates and which tokens are real features.

An image block is what replaces one ``<image>`` placeholder: T feature tokens, plus coordinate
text tokens when ``--interleave`` is on. ``rows``/``cols`` give each block token's grid cell
(used by 2D RoPE), ``is_feature`` marks true image features and ``side`` is the grid side.
``extent_2d`` is how far the 2D position counter moves past the block when tokens are appended
after the grid (e.g. register tokens); by default the grid side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BlockLayout:
    rows: torch.Tensor
    cols: torch.Tensor
    is_feature: torch.Tensor
    side: int
    extent_2d: int | None = None

    @property
    def length(self) -> int:
        return int(self.rows.shape[0])

    def advance(self, two_d: bool) -> int:
        """How far the position counter moves past the block: the grid side (2D) or the block length."""
        if two_d:
            return self.side if self.extent_2d is None else self.extent_2d
        return self.length

    def position_offsets(self, two_d: bool) -> torch.Tensor:
        """(2, T') offsets from the block's start position for the row and column streams."""
        if two_d:
            return torch.stack([self.rows, self.cols])
        ar = torch.arange(self.length, device=self.rows.device)
        return torch.stack([ar, ar])


def grid_layout(side: int, has_cls: bool = False, device: torch.device | None = None) -> BlockLayout:
    """Plain image block: ``side*side`` features in row-major order (a leading CLS sits at (0, 0))."""
    idx = torch.arange(side * side, device=device)
    rows, cols = idx // side, idx % side
    if has_cls:
        rows = torch.cat([rows.new_zeros(1), rows])
        cols = torch.cat([cols.new_zeros(1), cols])
    n = rows.shape[0]
    return BlockLayout(rows=rows, cols=cols, is_feature=torch.ones(n, dtype=torch.bool, device=device), side=side)
