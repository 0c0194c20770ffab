"""LLaVA on Llama / Vicuna (model_type ``llava_llama``, upstream's classes)."""

from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from ..llava_arch import LlavaMetaModel
from .llava_causal_lm import LlavaCausalLMMixin, register_family


class LlavaConfig(LlamaConfig):
    model_type = "llava_llama"


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaConfig


class LlavaLlamaForCausalLM(LlavaCausalLMMixin, LlamaForCausalLM):
    config_class = LlavaConfig
    llava_model_class = LlavaLlamaModel


register_family(LlavaConfig, LlavaLlamaForCausalLM)
