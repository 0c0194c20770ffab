"""Prompt building and single-turn generation shared by ``serve.cli`` and ``eval.run_llava``."""

from __future__ import annotations

from typing import Any

import torch

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_PLACEHOLDER
from llava.conversation import Conversation, SeparatorStyle, get_conv_template
from llava.mm_utils import KeywordsStoppingCriteria, tokenizer_image_token


def default_conv_mode(tokenizer: Any) -> str:
    """``chat_template`` when the tokenizer ships one (Qwen2, Llama-3 ...), else upstream's ``llava_v1``."""
    return "chat_template" if getattr(tokenizer, "chat_template", None) else "llava_v1"


def image_token_string(mm_use_im_start_end: bool) -> str:
    """The text that stands for one image in a prompt."""
    if mm_use_im_start_end:
        return DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    return DEFAULT_IMAGE_TOKEN


def with_image_tokens(query: str, n_images: int, mm_use_im_start_end: bool) -> str:
    """Put the image token(s) where the query has ``<image-placeholder>``/``<image>``, else in front."""
    token = image_token_string(mm_use_im_start_end)
    if IMAGE_PLACEHOLDER in query:
        return query.replace(IMAGE_PLACEHOLDER, token)
    if DEFAULT_IMAGE_TOKEN in query:
        return query if not mm_use_im_start_end else query.replace(DEFAULT_IMAGE_TOKEN, token)
    return "\n".join([token] * n_images + [query]) if n_images else query


def stop_string(conv: Conversation) -> str | None:
    """The separator that ends an assistant turn for ``conv``'s style."""
    if conv.sep_style == SeparatorStyle.TWO:
        return conv.sep2
    if conv.sep_style == SeparatorStyle.TEMPLATE:
        return None
    return conv.sep or None


def prompt_ids(conv: Conversation, tokenizer: Any) -> torch.Tensor:
    """(1, L) ids of ``conv``'s prompt with -200 at each image.

    A tokenizer chat template adds its own special tokens, so none are added then (as in training).
    """
    templated = conv.sep_style == SeparatorStyle.TEMPLATE
    return tokenizer_image_token(conv.get_prompt(tokenizer), tokenizer, return_tensors="pt",
                                 add_special_tokens=not templated).unsqueeze(0)


def pad_token_id(tokenizer: Any) -> int | None:
    """The tokenizer's pad id, else its eos id (generation needs one for finished rows)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def generation_kwargs(tokenizer: Any, input_ids: torch.Tensor, stop: str | None, temperature: float = 0.0,
                      top_p: float | None = None, num_beams: int = 1, max_new_tokens: int = 512,
                      **extra: Any) -> dict[str, Any]:
    """``generate`` keyword arguments: greedy at temperature 0, else sampling; stop string as a criterion."""
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, use_cache=True,
                                  pad_token_id=pad_token_id(tokenizer), **extra)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kwargs.update(do_sample=False)
    if stop and num_beams == 1:
        kwargs["stopping_criteria"] = [KeywordsStoppingCriteria([stop], tokenizer, input_ids)]
    return kwargs


def generate_reply(
    model: Any,
    tokenizer: Any,
    conv: Conversation,
    images: torch.Tensor | None,
    temperature: float = 0.0,
    top_p: float | None = None,
    num_beams: int = 1,
    max_new_tokens: int = 512,
    streamer: Any = None,
) -> str:
    """Generate the assistant's answer to ``conv`` (whose last turn is the empty assistant turn)."""
    input_ids = prompt_ids(conv, tokenizer).to(model.device)
    stop = stop_string(conv)
    kwargs = generation_kwargs(tokenizer, input_ids, stop, temperature, top_p, num_beams, max_new_tokens,
                               streamer=streamer)
    if images is not None:
        images = images.to(device=model.device, dtype=model.dtype)
    with torch.inference_mode():
        out = model.generate(input_ids, images=images, **kwargs)
    text = tokenizer.batch_decode(out, skip_special_tokens=True)[0].strip()
    if stop and text.endswith(stop):
        text = text[: -len(stop)].strip()
    return text


def new_conversation(conv_mode: str) -> Conversation:
    """A fresh conversation from the registry (clear error for an unknown ``--conv-mode``)."""
    return get_conv_template(conv_mode)
