"""A learned positional bias on the projected image tokens, written as an add-on from outside llava.

``--add_position_bias True [--position_bias_std S]``: one learnable vector of LLM width per image
token, added to the projector output (post-projector stage). It imports only the add-on contract
(``llava.model.addons.base``), never ``llava.train``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from llava.model.addons.base import Addon, Geometry, Stage, StageContext, arg


class PositionBias(nn.Module):
    def __init__(self, tokens: int, width: int, std: float) -> None:
        super().__init__()
        init = torch.empty(tokens, width).normal_(0.0, std) if std > 0 else torch.zeros(tokens, width)
        self.bias = nn.Parameter(init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.to(x.dtype)


@dataclass
class PositionBiasArgs:
    add_position_bias: bool = field(default=False, metadata={"help": "Learned bias per image-token position."})
    position_bias_std: float | None = field(default=None, metadata={"help": "Init std of the bias (default 0)."})


@dataclass
class PositionBiasConfig:
    add_position_bias: bool = False
    position_bias_std: float = 0.0
    position_bias_tokens: int | None = None


class PositionBiasAddon(Addon):
    name = "position_bias"
    Args = PositionBiasArgs
    Config = PositionBiasConfig
    switch = "add_position_bias"
    stage = Stage.POST_PROJECTOR
    modules = {"mm_position_bias": True}

    @classmethod
    def from_args(cls, args: Any) -> PositionBiasConfig:
        std = arg(args, cls, "position_bias_std")
        return PositionBiasConfig(True, 0.0 if std is None else float(std))

    @classmethod
    def validate(cls, cfg: PositionBiasConfig, geo: Geometry) -> None:
        if cfg.position_bias_std < 0:
            raise ValueError(f"--position_bias_std must be >= 0, got {cfg.position_bias_std}")

    @classmethod
    def finalize(cls, cfg: PositionBiasConfig, base_model: nn.Module, geo: Geometry) -> PositionBiasConfig:
        return replace(cfg, position_bias_tokens=base_model.get_vision_tower().num_tokens)

    @classmethod
    def build(cls, cfg: PositionBiasConfig, model_config: Any) -> dict[str, nn.Module]:
        return {"mm_position_bias": PositionBias(cfg.position_bias_tokens, model_config.hidden_size,
                                                 cfg.position_bias_std)}

    @classmethod
    def apply(cls, cfg: PositionBiasConfig, x: torch.Tensor, ctx: StageContext) -> torch.Tensor:
        return ctx.modules["mm_position_bias"](x)


ADDONS = (PositionBiasAddon,)
