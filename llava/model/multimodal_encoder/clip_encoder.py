"""Frozen CLIP vision tower with upstream LLaVA's layer/feature selection and delayed loading.

The tower usually comes from a full CLIP checkpoint (``openai/clip-vit-large-patch14-336`` holds the
text half too): :class:`CLIPVisionTowerModel` declares those keys as expected leftovers, so loading
prints no report of them while a missing or unexpected *vision* key is still reported. Images are
preprocessed by ``CLIPImageProcessorPil`` (the PIL backend upstream LLaVA used), the same with or
without torchvision installed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

from llava.constants import DEFAULT_SELECT_LAYER, VALID_SELECT_FEATURES

LayerSelector = Callable[[Sequence[torch.Tensor]], torch.Tensor]


class CLIPVisionTowerModel(CLIPVisionModel):
    """``CLIPVisionModel`` that knows a full CLIP checkpoint's text half and projections are not for it."""

    _keys_to_ignore_on_load_unexpected = [r"^text_model\.", r"^text_projection\.", r"^visual_projection\.",
                                          r"^logit_scale$"]


def _register_tower_conversion() -> None:
    """Give the subclass ``CLIPVisionModel``'s checkpoint key mapping (transformers looks it up by class name)."""
    name = CLIPVisionTowerModel.__name__
    if get_checkpoint_conversion_mapping(name) is None:
        register_checkpoint_conversion_mapping(name, get_checkpoint_conversion_mapping(CLIPVisionModel.__name__) or [])


_register_tower_conversion()


class CLIPVisionTower(nn.Module):
    """Wrap a ``CLIPVisionModel``; output the hidden states of ``select_layer``.

    With ``delay_load=True`` only the config is read; :meth:`load_model` loads the weights later
    (that is how upstream rebuilds a LLaVA checkpoint: the tower comes from its own checkpoint).
    """

    def __init__(self, vision_tower: str, args: Any, delay_load: bool = False) -> None:
        super().__init__()
        self.is_loaded = False
        self.vision_tower_name = vision_tower
        self.select_layer: int = getattr(args, "mm_vision_select_layer", DEFAULT_SELECT_LAYER)
        self.select_feature: str = getattr(args, "mm_vision_select_feature", "patch")
        if self.select_feature not in VALID_SELECT_FEATURES:
            raise ValueError(
                f"mm_vision_select_feature={self.select_feature!r} is not supported; "
                f"valid values: {', '.join(VALID_SELECT_FEATURES)}"
            )
        if not delay_load:
            self.load_model()
        else:
            self.cfg_only = CLIPVisionConfig.from_pretrained(self.vision_tower_name)

    def load_model(self, device_map: Any = None) -> None:
        """Load processor and weights (once); the tower is frozen."""
        if self.is_loaded:
            return
        self.image_processor = CLIPImageProcessorPil.from_pretrained(self.vision_tower_name)
        self.vision_tower = CLIPVisionTowerModel.from_pretrained(self.vision_tower_name, device_map=device_map)
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def feature_select(self, hidden_states: Sequence[torch.Tensor],
                       select: LayerSelector | None = None) -> torch.Tensor:
        """Pick ``select_layer`` (or what ``select`` makes of the hidden states); drop CLS unless ``cls_patch``."""
        feats = select(hidden_states) if select is not None else hidden_states[self.select_layer]
        if self.select_feature == "patch":
            feats = feats[:, 1:]
        return feats

    def forward(self, images: torch.Tensor, select: LayerSelector | None = None) -> torch.Tensor:
        """(N, 3, H, W) -> (N, T, C) features; ``select`` replaces the single-layer pick (multi-layer add-on)."""
        out = self.vision_tower(
            images.to(device=self.device, dtype=self.dtype), output_hidden_states=True
        )
        return self.feature_select(out.hidden_states, select).to(images.dtype)

    @property
    def post_layernorm(self) -> nn.Module:
        """The tower's final layer norm (``CLIPVisionModel.post_layernorm`` in transformers 5)."""
        inner = getattr(self.vision_tower, "vision_model", self.vision_tower)
        return inner.post_layernorm

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.dtype if self.is_loaded else torch.float32

    @property
    def device(self) -> torch.device:
        return self.vision_tower.device if self.is_loaded else torch.device("cpu")

    @property
    def config(self) -> CLIPVisionConfig:
        return self.vision_tower.config if self.is_loaded else self.cfg_only

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2

    @property
    def num_tokens(self) -> int:
        """Tokens per image this tower emits (patches, plus CLS for ``cls_patch``)."""
        return self.num_patches + (1 if self.select_feature == "cls_patch" else 0)
