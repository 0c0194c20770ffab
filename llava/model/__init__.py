"""LLaVA model classes for every supported LLM family, registered with transformers' Auto classes.

Importing this package never hides an import error: a missing dependency raises at once.
"""

from types import MappingProxyType

from .language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM, LlavaLlamaModel
from .language_model.llava_mistral import LlavaMistralConfig, LlavaMistralForCausalLM, LlavaMistralModel
from .language_model.llava_qwen2 import LlavaQwen2Config, LlavaQwen2ForCausalLM, LlavaQwen2Model

LLAVA_CLASSES = MappingProxyType(
    {
        "llama": LlavaLlamaForCausalLM,
        "llava_llama": LlavaLlamaForCausalLM,
        "qwen2": LlavaQwen2ForCausalLM,
        "llava_qwen2": LlavaQwen2ForCausalLM,
        "mistral": LlavaMistralForCausalLM,
        "llava_mistral": LlavaMistralForCausalLM,
    }
)
"""LLM ``model_type`` (plain or LLaVA) -> LLaVA causal-LM class. Exact keys only."""


def llava_class_for(model_type: str) -> type:
    """The LLaVA class for an LLM's ``config.model_type``; a clear error for unsupported families."""
    try:
        return LLAVA_CLASSES[model_type]
    except KeyError:
        raise ValueError(
            f"LLM model_type {model_type!r} has no LLaVA class; supported: {', '.join(sorted(LLAVA_CLASSES))}"
        ) from None


__all__ = [
    "LLAVA_CLASSES",
    "LlavaConfig",
    "LlavaLlamaForCausalLM",
    "LlavaLlamaModel",
    "LlavaMistralConfig",
    "LlavaMistralForCausalLM",
    "LlavaMistralModel",
    "LlavaQwen2Config",
    "LlavaQwen2ForCausalLM",
    "LlavaQwen2Model",
    "llava_class_for",
]
