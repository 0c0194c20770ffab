"""``--use_multilayer_features``: concatenate several CLIP hidden-state layers along channels.

``--mm_multilayer_select 12,16,20,24`` picks ``hidden_states[i]`` (index 0 is the embedding
output, so a 24-layer tower has indices -25..24). The projector input becomes
``len(layers) * tower width``. ``--mm_multilayer_post_norm`` applies the tower's post-layernorm
to each selected layer first, as the reference implementation does (CLS dropped afterwards).
Negative indices need the ``=`` form on the command line: ``--mm_multilayer_select=-25,24``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .base import Addon, Geometry, Stage, StageContext, arg

DEFAULT_LAYERS = "12,16,20,24"


def parse_layers(spec: str | Sequence[int]) -> list[int]:
    """``"12,16,20,24"`` -> ``[12, 16, 20, 24]``; a clear error for anything else."""
    if isinstance(spec, str):
        try:
            layers = [int(s) for s in spec.replace(" ", "").split(",") if s]
        except ValueError:
            raise ValueError(
                f"--mm_multilayer_select {spec!r} must be comma-separated integers, e.g. 12,16,20,24"
            ) from None
    else:
        layers = [int(i) for i in spec]
    if not layers:
        raise ValueError("--mm_multilayer_select is empty; give at least one layer index, e.g. 12,16,20,24")
    return layers


def validate_layers(layers: Sequence[int], num_layers: int) -> None:
    """Every index must address ``hidden_states`` of a tower with ``num_layers`` layers."""
    bad = [i for i in layers if not -(num_layers + 1) <= i <= num_layers]
    if bad:
        raise ValueError(
            f"--mm_multilayer_select has layer(s) {bad} but the vision tower has {num_layers} layers: valid "
            f"indices are 0..{num_layers} (0 = embeddings) or -{num_layers + 1}..-1."
        )


def select(hidden_states: Sequence[torch.Tensor], layers: Sequence[int],
           post_layernorm: torch.nn.Module | None) -> torch.Tensor:
    """Concatenate the chosen layers along the channel axis (optionally post-layernormed)."""
    feats = [hidden_states[i] for i in layers]
    if post_layernorm is not None:
        feats = [post_layernorm(f) for f in feats]
    return torch.cat(feats, dim=-1)


@dataclass
class MultilayerArgs:
    use_multilayer_features: bool = field(default=False, metadata={
        "help": "Concatenate several CLIP layers along channels (see --mm_multilayer_select)."})
    mm_multilayer_select: str | None = field(default=None, metadata={
        "help": f"Comma-separated CLIP hidden-state indices for --use_multilayer_features (0 = embeddings; "
                f"default {DEFAULT_LAYERS}). Negative lists need the = form: --mm_multilayer_select=-25,24."})
    mm_multilayer_post_norm: bool = field(default=False, metadata={
        "help": "Apply the tower's post-layernorm to each selected layer (as the reference implementation)."})


@dataclass
class MultilayerConfig:
    use_multilayer_features: bool = False
    mm_multilayer_select: list[int] | None = None
    mm_multilayer_post_norm: bool = False


class Multilayer(Addon):
    """Tower stage: the projector input is the concatenation of the chosen hidden states."""

    name = "multilayer"
    Args = MultilayerArgs
    Config = MultilayerConfig
    switch = "use_multilayer_features"
    stage = Stage.TOWER

    @classmethod
    def from_args(cls, args: Any) -> MultilayerConfig:
        spec = arg(args, cls, "mm_multilayer_select")
        return MultilayerConfig(True, parse_layers(DEFAULT_LAYERS if spec is None else spec),
                                bool(arg(args, cls, "mm_multilayer_post_norm")))

    @classmethod
    def validate(cls, cfg: MultilayerConfig, geo: Geometry) -> None:
        validate_layers(cfg.mm_multilayer_select, geo.tower_layers)

    @classmethod
    def tower_layers(cls, cfg: MultilayerConfig, layers: list[int]) -> list[int]:
        return list(cfg.mm_multilayer_select)

    @classmethod
    def input_width(cls, cfg: MultilayerConfig, width: int) -> int:
        return width * len(cfg.mm_multilayer_select)

    @classmethod
    def apply(cls, cfg: MultilayerConfig, x: Sequence[torch.Tensor], ctx: StageContext) -> torch.Tensor:
        post = ctx.base_model.get_vision_tower().post_layernorm if cfg.mm_multilayer_post_norm else None
        return select(x, cfg.mm_multilayer_select, post)
