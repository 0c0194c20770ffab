"""Assemble a tiny LLaVA model (tiny LLM + tiny CLIP tower + projector) the way training does."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from llava.model import llava_class_for


def tiny_model_args(clip_path: str, projector_type: str = "mlp2x_gelu", **overrides: Any) -> SimpleNamespace:
    """ModelArguments-like namespace with upstream v1.5 vision settings."""
    base = dict(vision_tower=clip_path, mm_vision_select_layer=-2, mm_projector_type=projector_type,
                mm_vision_select_feature="patch", mm_patch_merge_type="flat", pretrain_mm_mlp_adapter=None,
                mm_use_im_start_end=False, mm_use_im_patch_token=False)
    base.update(overrides)
    return SimpleNamespace(**base)


def build_tiny_llava(llm_path: str, clip_path: str, projector_type: str = "mlp2x_gelu", seed: int = 0,
                     attn_implementation: str | None = None, **overrides: Any) -> torch.nn.Module:
    """Load the LLM as its LLaVA class (``attn_implementation``: transformers' default when None), attach
    tower + projector (seeded), fp32, eval mode."""
    from transformers import AutoConfig

    llm_config = AutoConfig.from_pretrained(llm_path)
    cls = llava_class_for(llm_config.model_type)
    attn = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    model = cls.from_pretrained(llm_path, config=cls.config_from_llm(llm_config), dtype=torch.float32, **attn)
    torch.manual_seed(seed)
    model.get_model().initialize_vision_modules(tiny_model_args(clip_path, projector_type, **overrides))
    model.config.image_aspect_ratio = "pad"
    model.config.tokenizer_padding_side = "right"
    model.config.tokenizer_model_max_length = 2048
    model.config.tune_mm_mlp_adapter = False
    model.config.freeze_mm_mlp_adapter = False
    model.config.mm_use_im_start_end = False
    model.config.mm_use_im_patch_token = False
    model.config.mm_projector_lr = None
    return model.eval()
