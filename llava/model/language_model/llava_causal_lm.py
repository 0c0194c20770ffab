"""The one generic mechanism every LLaVA LLM family uses.

A family file declares three small classes: a config subclass with a ``llava_*`` model_type, a
base-model subclass with :class:`~llava.model.llava_arch.LlavaMetaModel` in front, and a causal-LM
subclass with :class:`LlavaCausalLMMixin` in front; then calls :func:`register_family`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin

from ..llava_arch import LlavaMetaForCausalLM
from ..packing import mask_first_labels, packed_attention, segment_positions


class LlavaCausalLMMixin(LlavaMetaForCausalLM):
    """``forward`` and ``generate`` that accept ``images`` and ``image_sizes`` like upstream LLaVA.

    Subclasses set ``llava_model_class`` (the LLaVA base model) and inherit from the family's
    causal-LM class right after this mixin.
    """

    llava_model_class: type[nn.Module]
    _keys_to_ignore_on_load_unexpected = [r"model\.vision_tower\."]

    def __init__(self, config: Any, addon_modules: Any = None) -> None:
        # Skip the family's own causal-LM __init__ (it would build a text-only base model) and
        # build the same parts around the LLaVA base model instead.
        if "model_type" in vars(config):
            # Loading a base LLM's config.json into a LLaVA config class leaves its plain
            # model_type ('llama') on the instance; the class's 'llava_*' type must win.
            del config.model_type
        family_causal_lm = self._family_causal_lm_class()
        super(family_causal_lm, self).__init__(config)
        self.model = self.llava_model_class(config, addon_modules=addon_modules)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def config_from_llm(cls, llm_config: Any) -> Any:
        """This family's LLaVA config holding a base LLM's config (e.g. ``LlamaConfig`` -> ``llava_llama``), so that
        ``from_pretrained(llm_path, config=...)`` loads typed, not a ``llama`` config.json into ``llava_llama``."""
        if isinstance(llm_config, cls.config_class):
            return llm_config
        fields = {k: v for k, v in llm_config.to_dict().items() if k not in ("model_type", "transformers_version")}
        return cls.config_class.from_dict(fields)

    @classmethod
    def _cache_argument(cls) -> str:
        """The family forward's name for the KV cache: ``cache`` (transformers >= 5.24), else ``past_key_values``."""
        import inspect

        params = inspect.signature(cls._family_causal_lm_class().forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    @classmethod
    def _family_causal_lm_class(cls) -> type:
        """The family's own causal-LM class (e.g. ``LlamaForCausalLM``): first generating class in the MRO."""
        return next(
            c for c in cls.__mro__ if issubclass(c, GenerationMixin) and not issubclass(c, LlavaMetaForCausalLM)
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        images: torch.Tensor | list[torch.Tensor] | None = None,
        image_sizes: Any = None,
        packed_seq_ids: torch.LongTensor | None = None,
        return_labels: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Upstream's forward; ``packed_seq_ids`` (B, L) marks the samples of a packed batch
        (:mod:`llava.model.packing`: 0 on padding, k on the k-th sample of a row). ``return_labels``:
        the output also carries ``llava_labels``, the labels aligned with the logits (images spliced in,
        packing boundaries masked), from which answer-token accuracy is counted."""
        aux: dict[str, torch.Tensor] = {}
        tower = self.get_vision_tower() if inputs_embeds is None and input_ids is not None else None
        # A text-only batch with labels (training, or validation) runs one blank image through the same
        # path as an image batch (zero weight), so every rank builds the same graph: required by ZeRO-3
        # (its parameter gathers are collective) and DDP.
        blank_image_pass = (images is None and tower is not None and tower.is_loaded
                            and (self.training or labels is not None))
        if tower is not None and (images is not None or blank_image_pass):
            res = self.prepare_multimodal_splice(
                input_ids, attention_mask, labels,
                self.blank_images(input_ids.device) if blank_image_pass else images, image_sizes,
                unused_images=blank_image_pass, segments=packed_seq_ids)
            input_ids, inputs_embeds = None, res.inputs_embeds
            attention_mask, position_ids, labels = res.attention_mask, res.position_ids, res.labels
            packed_seq_ids = res.segments
            if labels is not None:
                aux = self.auxiliary_losses(res)
        if packed_seq_ids is not None:
            attention_mask, position_ids, labels, extra = self._packed_inputs(
                packed_seq_ids, position_ids, labels, inputs_embeds)
            kwargs.update(extra)
        if past_key_values is not None:
            kwargs[self._cache_argument()] = past_key_values
        out = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            **kwargs,
        )
        if aux and out.loss is not None:
            # out.loss stays L_TP; the trainer forms L_TP + sum(lambda_i * L_i) (one owner of the
            # weighting). Text-only training batches carry the same terms at weight 0 (same graph on
            # every rank); aux_from_images tells the trainer not to log them.
            out["aux_losses"] = aux
            out["aux_from_images"] = not blank_image_pass
        if return_labels:
            out["llava_labels"] = labels
        return out

    def _packed_inputs(self, segments: torch.Tensor, position_ids: torch.Tensor | None, labels: torch.Tensor | None,
                       inputs_embeds: torch.Tensor | None) -> tuple[Any, ...]:
        """Block-diagonal attention, per-sample positions and boundary-safe labels of a packed batch."""
        if position_ids is None:
            position_ids = segment_positions(segments)
        if labels is not None:
            labels = mask_first_labels(labels, segments)
        dtype = inputs_embeds.dtype if inputs_embeds is not None else self.get_input_embeddings().weight.dtype
        mask, extra = packed_attention(self.config._attn_implementation, segments, dtype)
        return mask, position_ids, labels, extra

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        images: torch.Tensor | list[torch.Tensor] | None = None,
        image_sizes: Any = None,
        **kwargs: Any,
    ) -> torch.LongTensor:
        """Upstream's call: ``generate(input_ids, images=..., image_sizes=..., **generation_kwargs)``.

        The prompt (with images spliced in, left-padded) goes to transformers' own ``generate`` as
        ``inputs_embeds``, so the result holds only the newly generated tokens, as upstream.
        """
        if "inputs_embeds" in kwargs:
            raise ValueError("Pass input_ids (with -200 image placeholders) and images, not inputs_embeds.")
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
        if inputs is None:
            raise ValueError("generate() needs input_ids.")
        position_ids = kwargs.pop("position_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        if images is not None and self.get_vision_tower() is not None:
            res = self.prepare_multimodal_splice(inputs, attention_mask, None, images, image_sizes,
                                                 padding_side="left", truncate=False)  # never a cut prompt
            inputs_embeds, attention_mask, position_ids = res.inputs_embeds, res.attention_mask, res.position_ids
        else:
            inputs_embeds = self.get_model().embed_tokens(inputs)
        return super().generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )


def register_family(config_class: type, causal_lm_class: type) -> None:
    """Register a LLaVA family with ``AutoConfig`` / ``AutoModelForCausalLM`` (idempotent)."""
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModelForCausalLM.register(config_class, causal_lm_class, exist_ok=True)
