"""``--use_multilayer_features``: concatenate several CLIP hidden-state layers along channels.

``--mm_multilayer_select 12,16,20,24`` picks ``hidden_states[i]`` (index 0 is the embedding
output, so a 24-layer tower has indices -25..24). The projector input becomes
``len(layers) * tower width``. ``--mm_multilayer_post_norm`` applies the tower's post-layernorm
to each selected layer first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

DEFAULT_LAYERS = "12,16,20,24"


def enabled(config: Any) -> bool:
    return bool(getattr(config, "use_multilayer_features", False))


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


def configure(config: Any, layers: Sequence[int], post_norm: bool, num_layers: int) -> None:
    validate_layers(layers, num_layers)
    config.use_multilayer_features = True
    config.mm_multilayer_select = list(layers)
    config.mm_multilayer_post_norm = bool(post_norm)


def select(hidden_states: Sequence[torch.Tensor], layers: Sequence[int],
           post_layernorm: torch.nn.Module | None) -> torch.Tensor:
    """Concatenate the chosen layers along the channel axis (optionally post-layernormed)."""
    feats = [hidden_states[i] for i in layers]
    if post_layernorm is not None:
        feats = [post_layernorm(f) for f in feats]
    return torch.cat(feats, dim=-1)
