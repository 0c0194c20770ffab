"""``--add_registers --num_registers N``: N learnable register tokens appended after each image block.

The tokens (``model.mm_registers.tokens``, shape (N, LLM width), initialised N(0, 0.02) like the
reference implementation) follow every image's block — after any compression and interleaved
coordinates — train and save with the projector (``mm_projector.bin``), and count toward the
sequence length. They are not image features (no label, not in the image mask). Under 2D RoPE
register i sits at (p0 + E + i, p0 + E + i), E being the block's 2D extent (the grid side), and
the text after the block continues at p0 + E + N. The reference implementation built the
registers but sliced them off before the LLM; here they reach it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..block_layout import BlockLayout
from .base import Addon, Stage, StageContext, arg

DEFAULT_NUM_REGISTERS = 4
INIT_STD = 0.02


class RegisterTokens(nn.Module):
    """The learnable tokens; called as a module so ZeRO-3 gathers them for the forward."""

    def __init__(self, num: int, width: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(num, width).normal_(0.0, INIT_STD))

    def forward(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        return self.tokens.to(dtype).unsqueeze(0).expand(batch, -1, -1)


def append_registers(tokens: torch.Tensor, layout: BlockLayout, registers: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                   BlockLayout]:
    """(N, T', D) blocks + (N, R, D) registers -> (N, T' + R, D) and the extended layout."""
    r = registers.shape[1]
    extent = layout.advance(two_d=True)
    pos = extent + torch.arange(r, device=layout.rows.device)
    grown = BlockLayout(rows=torch.cat([layout.rows, pos]), cols=torch.cat([layout.cols, pos]),
                        is_feature=torch.cat([layout.is_feature, layout.is_feature.new_zeros(r)]),
                        side=layout.side, extent_2d=extent + r)
    return torch.cat([tokens, registers], dim=1), grown


@dataclass
class RegistersArgs:
    add_registers: bool = field(default=False, metadata={
        "help": "Append --num_registers learnable tokens after each image's tokens (trained with the projector)."})
    num_registers: int | None = field(default=None, metadata={
        "help": f"Register tokens per image for --add_registers (default {DEFAULT_NUM_REGISTERS})."})


@dataclass
class RegistersConfig:
    add_registers: bool = False
    num_registers: int = DEFAULT_NUM_REGISTERS


class Registers(Addon):
    """Block stage: ``model.mm_registers`` (travels with the projector)."""

    name = "registers"
    Args = RegistersArgs
    Config = RegistersConfig
    switch = "add_registers"
    stage = Stage.BLOCK
    modules = {"mm_registers": True}

    @classmethod
    def from_args(cls, args: Any) -> RegistersConfig:
        n = arg(args, cls, "num_registers")
        n = DEFAULT_NUM_REGISTERS if n is None else n
        if int(n) != n or int(n) < 1:
            raise ValueError(f"--num_registers {n} is not valid: give an integer >= 1.")
        return RegistersConfig(True, int(n))

    @classmethod
    def tokens(cls, cfg: RegistersConfig, n: int) -> int:
        return n + int(cfg.num_registers)

    @classmethod
    def build(cls, cfg: RegistersConfig, model_config: Any) -> dict[str, nn.Module]:
        return {"mm_registers": RegisterTokens(int(cfg.num_registers), model_config.hidden_size)}

    @classmethod
    def apply(cls, cfg: RegistersConfig, x: Any, ctx: StageContext) -> Any:
        tokens, layout = x
        return append_registers(tokens, layout, ctx.modules["mm_registers"](tokens.shape[0], tokens.dtype))
