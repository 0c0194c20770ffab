"""LLaVA on Mistral (model_type ``llava_mistral``)."""

from transformers import MistralConfig, MistralForCausalLM, MistralModel

from ..llava_arch import LlavaMetaModel
from .llava_causal_lm import LlavaCausalLMMixin, register_family


class LlavaMistralConfig(MistralConfig):
    model_type = "llava_mistral"


class LlavaMistralModel(LlavaMetaModel, MistralModel):
    config_class = LlavaMistralConfig


class LlavaMistralForCausalLM(LlavaCausalLMMixin, MistralForCausalLM):
    config_class = LlavaMistralConfig
    llava_model_class = LlavaMistralModel


register_family(LlavaMistralConfig, LlavaMistralForCausalLM)
