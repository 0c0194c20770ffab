"""Build a vision tower from a config, chosen by the tower checkpoint's ``model_type`` (exact keys)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from transformers import CLIPVisionConfig, PretrainedConfig

from .clip_encoder import CLIPVisionTower

VISION_TOWERS: Mapping[str, type] = MappingProxyType({
    "clip": CLIPVisionTower,
    "clip_vision_model": CLIPVisionTower,
})


def vision_tower_model_type(name_or_path: str) -> str:
    """Read ``model_type`` from the tower's config.json (local dir or hub id)."""
    cfg_dict, _ = PretrainedConfig.get_config_dict(name_or_path)
    return cfg_dict.get("model_type", "")


def vision_tower_geometry(name_or_path: str) -> tuple[int, int, int]:
    """(number of layers, patch-grid side, width) read from the tower's config.json, without weights."""
    model_type = vision_tower_model_type(name_or_path)
    if model_type not in VISION_TOWERS:
        raise ValueError(
            f"Vision tower {name_or_path!r} has model_type {model_type!r}, which is not supported; "
            f"supported model types: {', '.join(sorted(VISION_TOWERS))}"
        )
    cfg = CLIPVisionConfig.from_pretrained(name_or_path)
    return cfg.num_hidden_layers, cfg.image_size // cfg.patch_size, cfg.hidden_size


def build_vision_tower(vision_tower_cfg: Any, **kwargs: Any) -> CLIPVisionTower:
    """Instantiate the tower named by ``mm_vision_tower`` (or ``vision_tower``) in ``vision_tower_cfg``."""
    name = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    if not name:
        raise ValueError("No vision tower configured: set --vision_tower (config field mm_vision_tower).")
    model_type = vision_tower_model_type(name)
    if model_type not in VISION_TOWERS:
        raise ValueError(
            f"Vision tower {name!r} has model_type {model_type!r}, which is not supported; "
            f"supported model types: {', '.join(sorted(VISION_TOWERS))}"
        )
    return VISION_TOWERS[model_type](name, args=vision_tower_cfg, **kwargs)
