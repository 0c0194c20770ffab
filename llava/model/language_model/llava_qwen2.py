"""LLaVA on Qwen2 (model_type ``llava_qwen2``)."""

from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Model

from ..llava_arch import LlavaMetaModel
from .llava_causal_lm import LlavaCausalLMMixin, register_family


class LlavaQwen2Config(Qwen2Config):
    model_type = "llava_qwen2"


class LlavaQwen2Model(LlavaMetaModel, Qwen2Model):
    config_class = LlavaQwen2Config


class LlavaQwen2ForCausalLM(LlavaCausalLMMixin, Qwen2ForCausalLM):
    config_class = LlavaQwen2Config
    llava_model_class = LlavaQwen2Model


register_family(LlavaQwen2Config, LlavaQwen2ForCausalLM)
