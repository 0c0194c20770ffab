"""Command-line flags of the "Beyond Semantics" add-ons (a ModelArguments mixin) and their checks.

The checks run in ``validate_args`` right after parsing: they read only the vision tower's
``config.json`` (depth and patch grid), never model weights, so a bad value fails in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llava.model.addons import cosine_reg, interleave, multilayer
from llava.model.addons.setup import validate_addon_args


@dataclass
class AddonModelArguments:
    """Opt-in add-on flags; omitting all of them trains vanilla LLaVA-1.5."""

    normalize_projector: bool = field(default=False, metadata={
        "help": "Rescale projected image tokens to the LLM's text-embedding norm (learnable gain, clipped)."})
    use_multilayer_features: bool = field(default=False, metadata={
        "help": "Concatenate several CLIP layers along channels (see --mm_multilayer_select)."})
    mm_multilayer_select: str = field(default=multilayer.DEFAULT_LAYERS, metadata={
        "help": "Comma-separated CLIP hidden-state indices for --use_multilayer_features (0 = embeddings)."})
    mm_multilayer_post_norm: bool = field(default=False, metadata={
        "help": "Apply the tower's post-layernorm to each selected layer."})
    compression_after_projection: bool = field(default=False, metadata={
        "help": "Pool the projected image-token grid down to --final_spatial_size tokens."})
    final_spatial_size: int | None = field(default=None, metadata={
        "help": "Image tokens after compression (a token count: 1, 4, 16, 64, 144, ...)."})
    mm_compression_mode: str = field(default="avg", metadata={"help": "Compression: avg, max or bilinear."})
    twoD_vision_embedding: bool = field(default=False, metadata={
        "help": "Axial 2D RoPE for image tokens (row/column); text keeps 1D positions."})
    interleave: bool = field(default=False, metadata={
        "help": "Insert 'row,col' coordinate tokens among the image tokens (see --interleave_sparsity)."})
    interleave_sparsity: int = field(default=1, metadata={
        "help": "Insert a coordinate string after every k-th image token (k >= 1)."})
    add_spatial_coordinates: bool = field(default=False, metadata={
        "help": "Append each patch's normalized (x, y) to its vision feature before the projector (+2 width)."})

    mm_cosine_loss: str = field(default="none", metadata={
        "help": "Cosine regularizer added to the LM loss: none, constrain or self_distill."})
    mm_cosine_lambda: float | None = field(default=None, metadata={
        "help": "Weight lambda of L_cos (default 0.1 when a loss is chosen)."})
    mm_cosine_constrain_mode: str = field(default="embed", metadata={
        "help": "constrain: 'embed' (fixed orthonormal embedding of x) or 'gram' (token-token similarity)."})
    mm_cosine_stop_grad: bool = field(default=False, metadata={
        "help": "self_distill: detach the target P1(x) (SimSiam-style stop-gradient)."})

    @staticmethod
    def check(model_args: Any, data_args: Any, training_args: Any) -> None:
        """Validate add-on values against the vision tower's geometry (config.json only)."""
        from llava.model.multimodal_encoder.builder import vision_tower_geometry

        if getattr(model_args, "interleave", False):
            interleave.validate_sparsity(model_args.interleave_sparsity)
        cosine_reg.validate(model_args.mm_cosine_loss, model_args.mm_cosine_lambda, model_args.mm_cosine_constrain_mode)
        if model_args.mm_cosine_loss != "none" and model_args.vision_tower is None:
            raise ValueError("--mm_cosine_loss regularizes the projector and needs --vision_tower.")
        if not any(getattr(model_args, name, False) for name in ADDON_SWITCHES):
            return
        if model_args.vision_tower is None:
            raise ValueError("The add-on flags act on image tokens and need --vision_tower.")
        layers, side = vision_tower_geometry(model_args.vision_tower)
        has_cls = getattr(model_args, "mm_vision_select_feature", "patch") == "cls_patch"
        validate_addon_args(model_args, tower_layers=layers, grid_side=side, has_cls=has_cls)


ADDON_SWITCHES = (
    "normalize_projector", "use_multilayer_features", "compression_after_projection", "twoD_vision_embedding",
    "interleave", "add_spatial_coordinates",
)
"""The boolean flags that switch an add-on on."""
