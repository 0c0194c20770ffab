"""Turn the add-on training flags into config fields (validated) and build the add-on modules.

``ADDON_DEFAULTS`` lists every add-on ModelArguments field with its default; a config field is
written only when its flag is on, so vanilla configs are byte-identical to upstream's.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import torch

from . import compression, coordinates, cosine_reg, interleave, multilayer, normalize, rope2d

ADDON_DEFAULTS = MappingProxyType({
    "normalize_projector": False,
    "use_multilayer_features": False,
    "mm_multilayer_select": multilayer.DEFAULT_LAYERS,
    "mm_multilayer_post_norm": False,
    "compression_after_projection": False,
    "final_spatial_size": None,
    "mm_compression_mode": "avg",
    "twoD_vision_embedding": False,
    "interleave": False,
    "interleave_sparsity": 1,
    "add_spatial_coordinates": False,
    "mm_cosine_loss": "none",
    "mm_cosine_lambda": None,
    "mm_cosine_constrain_mode": "embed",
    "mm_cosine_stop_grad": False,
})


def _layers(args: Any) -> list[int]:
    return multilayer.parse_layers(getattr(args, "mm_multilayer_select", multilayer.DEFAULT_LAYERS))


def validate_addon_args(args: Any, tower_layers: int, grid_side: int, has_cls: bool) -> None:
    """Check flag values against the tower's depth and grid before any model is loaded."""
    if getattr(args, "use_multilayer_features", False):
        multilayer.validate_layers(_layers(args), tower_layers)
    if getattr(args, "compression_after_projection", False):
        if has_cls:
            raise ValueError("--compression_after_projection needs a square patch grid: use "
                             "--mm_vision_select_feature patch (not cls_patch).")
        compression.validate(getattr(args, "final_spatial_size", None), grid_side,
                             getattr(args, "mm_compression_mode", "avg"))
    if getattr(args, "interleave", False):
        interleave.validate_sparsity(getattr(args, "interleave_sparsity", None))
    cosine_reg.validate(getattr(args, "mm_cosine_loss", "none"), getattr(args, "mm_cosine_lambda", None),
                        getattr(args, "mm_cosine_constrain_mode", "embed"))
    if (getattr(args, "twoD_vision_embedding", False) or getattr(args, "interleave", False)) and has_cls:
        raise ValueError("--twoD_vision_embedding/--interleave need a square patch grid: use "
                         "--mm_vision_select_feature patch (not cls_patch).")


def configure_addons(config: Any, args: Any, tower: Any, input_embeddings: torch.Tensor) -> None:
    """Write the add-on config fields for the flags set in ``args`` (training arguments)."""
    has_cls = getattr(args, "mm_vision_select_feature", "patch") == "cls_patch"
    validate_addon_args(args, tower.num_layers, tower.num_patches_per_side, has_cls)
    if getattr(args, "use_multilayer_features", False):
        multilayer.configure(config, _layers(args),
                             getattr(args, "mm_multilayer_post_norm", False), tower.num_layers)
    if getattr(args, "add_spatial_coordinates", False):
        config.add_spatial_coordinates = True
    if getattr(args, "normalize_projector", False):
        normalize.configure(config, input_embeddings)
    if getattr(args, "compression_after_projection", False):
        compression.configure(config, args.final_spatial_size, getattr(args, "mm_compression_mode", "avg"),
                              tower.num_patches_per_side)
    if getattr(args, "twoD_vision_embedding", False):
        config.twoD_vision_embedding = True
    if getattr(args, "interleave", False):
        interleave.configure(config, args.interleave_sparsity)


def configure_regularizers(config: Any, args: Any) -> None:
    """Record the cosine-regularizer flags (needs mm_hidden_size and hidden_size in the config)."""
    cosine_reg.configure(
        config, getattr(args, "mm_cosine_loss", "none"), getattr(args, "mm_cosine_lambda", None),
        getattr(args, "mm_cosine_constrain_mode", "embed"), getattr(args, "mm_cosine_stop_grad", False))


def projector_input_width(config: Any, tower_width: int) -> int:
    """mm_hidden_size: tower width x selected layers, + 2 with spatial coordinates."""
    width = tower_width
    if multilayer.enabled(config):
        width *= len(config.mm_multilayer_select)
    if coordinates.enabled(config):
        width += 2
    return width


def tokens_per_image(config: Any, tower_tokens: int) -> int:
    """Sequence positions one image occupies: its tokens (after compression) + interleaved coordinates."""
    n = int(config.final_spatial_size) if compression.enabled(config) else tower_tokens
    coord_ids = getattr(config, "mm_interleave_coord_ids", None)
    if interleave.enabled(config) and coord_ids:
        k = int(config.interleave_sparsity)
        n += sum(len(coord_ids[j]) for j in range(len(coord_ids)) if (j + 1) % k == 0)
    return n


def output_side(config: Any, grid_side: int) -> int:
    """Grid side of the tokens that reach the LLM."""
    if compression.enabled(config):
        return compression.validate(config.final_spatial_size, grid_side, config.mm_compression_mode)
    return grid_side


def install_modules(base_model: Any) -> None:
    """Create the add-on modules a config asks for on a LLaVA base model (idempotent)."""
    config = base_model.config
    if normalize.enabled(config) and getattr(base_model, "mm_projector_norm", None) is None:
        base_model.mm_projector_norm = normalize.build(config)
    if cosine_reg.enabled(config) and getattr(base_model, "mm_projector_cos", None) is None:
        base_model.mm_projector_cos = cosine_reg.build(config)
    if rope2d.enabled(config):
        rope2d.install(base_model)
