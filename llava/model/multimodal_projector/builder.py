"""Projector registry: ``linear``, ``mlp{N}x_gelu`` and ``identity`` with upstream's module layout.

``mlp2x_gelu`` is ``Sequential(Linear, GELU, Linear)`` so its checkpoint keys are
``model.mm_projector.0.*`` and ``model.mm_projector.2.*`` exactly like upstream.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

_MLP_GELU = re.compile(r"mlp(\d+)x_gelu")


class IdentityMap(nn.Module):
    """Projector that returns its input unchanged (mm_hidden_size must equal hidden_size)."""

    def forward(self, x, *args, **kwargs):
        return x


def _linear(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Linear(in_dim, out_dim)


def _identity(in_dim: int, out_dim: int) -> nn.Module:
    if in_dim != out_dim:
        raise ValueError(
            f"mm_projector_type='identity' needs the vision feature width ({in_dim}) to equal the LLM "
            f"hidden size ({out_dim}); choose 'linear' or 'mlp2x_gelu' instead."
        )
    return IdentityMap()


def build_mlp_gelu(in_dim: int, out_dim: int, depth: int) -> nn.Sequential:
    """Linear(in, out) followed by (GELU, Linear(out, out)) * (depth - 1)."""
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(1, depth):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


PROJECTORS: Mapping[str, Callable[[int, int], nn.Module]] = MappingProxyType({
    "linear": _linear,
    "identity": _identity,
})
VALID_PROJECTOR_TYPES = ("linear", "identity", "mlp{N}x_gelu (e.g. mlp2x_gelu)")


def make_projector(projector_type: str, in_dim: int, out_dim: int) -> nn.Module:
    """Build a projector by exact key; ``mlp{N}x_gelu`` must match the whole key with N >= 1."""
    if projector_type in PROJECTORS:
        return PROJECTORS[projector_type](in_dim, out_dim)
    match = _MLP_GELU.fullmatch(projector_type)
    if match and int(match.group(1)) >= 1:
        return build_mlp_gelu(in_dim, out_dim, int(match.group(1)))
    raise ValueError(
        f"Unknown mm_projector_type {projector_type!r}; valid types: {', '.join(VALID_PROJECTOR_TYPES)}"
    )


def build_vision_projector(config: Any, delay_load: bool = False, **kwargs: Any) -> nn.Module:
    """Projector from ``config.mm_projector_type`` mapping ``mm_hidden_size`` to ``hidden_size``."""
    projector_type = getattr(config, "mm_projector_type", "linear")
    return make_projector(projector_type, config.mm_hidden_size, config.hidden_size)
