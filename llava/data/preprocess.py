"""Conversation -> ``(input_ids, labels)`` with upstream LLaVA's masking semantics, without global state.

The template is passed explicitly (a name from :data:`llava.conversation.conv_templates` or a
:class:`~llava.conversation.Conversation`). What is supervised:

- ``plain`` (pretraining): the prompt is the image placeholder alone; the caption and the trailing
  ``"\\n"`` are supervised.
- ``TWO`` (``v1``/``vicuna_v1``/``llava_v1``): each assistant answer and its ``</s>``.
- ``LLAMA_2``: each answer after ``[/INST]`` up to and including ``</s>``.
- ``TEMPLATE`` (tokenizer chat template, e.g. Qwen2 ChatML): each assistant content and the
  template's closing marker for that turn (``<|im_end|>``), not the whitespace after it.

How the mask is found: the whole conversation is rendered and tokenized once (that is the
``input_ids``, identical to what inference sees); each supervised character span's start and end
are turned into token positions by tokenizing the rendered prefix up to that point, and the
prefix's ids must equal the leading ids of the whole conversation. If they do not (the tokenizer
merges across a boundary, or a template is not prefix-stable), the sample is fully masked and a
warning names the sample id -- upstream behaviour, but never silent.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
)
from llava.conversation import Conversation, SeparatorStyle, get_conv_template
from llava.data.sample_check import role_problem
from llava.mm_utils import tokenizer_image_token

logger = logging.getLogger(__name__)

HUMAN, GPT = "human", "gpt"
Source = Sequence[dict[str, str]]

#: Bad-sample categories, in report order (codes are index + 1).
BAD_SAMPLE_CATEGORIES = (
    "malformed_sample",
    "bad_conversation",
    "missing_image_token",
    "too_many_image_tokens",
    "image_token_without_image",
    "missing_image",
    "image_outside_folder",
    "unreadable_image",
    "too_long",
    "image_too_large",
)


class BadSampleError(ValueError):
    """A sample that cannot be trained on. ``category`` is one of :data:`BAD_SAMPLE_CATEGORIES`."""

    def __init__(
        self,
        category: str,
        detail: str,
        sample_id: Any = None,
        data_path: str | None = None,
        index: int | None = None,
    ) -> None:
        if category not in BAD_SAMPLE_CATEGORIES:
            raise ValueError(
                f"unknown bad-sample category {category!r}; valid: {', '.join(BAD_SAMPLE_CATEGORIES)}"
            )
        self.category = category
        self.detail = detail
        self.sample_id = sample_id
        self.data_path = data_path
        self.index = index
        where = f"sample id={sample_id!r}"
        if index is not None:
            where += f" (index {index})"
        if data_path is not None:
            where += f" in {data_path}"
        super().__init__(
            f"{category}: {where}: {detail}. Pass --skip_bad_samples True to skip (and count) such samples, "
            "or fix the data file."
        )

    def located(self, sample_id: Any, data_path: str | None, index: int | None) -> BadSampleError:
        """The same error with the sample's id, data file and index filled in."""
        return BadSampleError(self.category, self.detail, sample_id, data_path, index)


def preprocess_multimodal(
    sources: Sequence[Source], is_multimodal: bool, mm_use_im_start_end: bool
) -> list[list[dict[str, str]]]:
    """Move ``<image>`` to the front of the sentence holding it, followed by ``"\\n"`` (upstream).

    With ``mm_use_im_start_end`` the placeholder becomes ``<im_start><image><im_end>``. Returns new
    lists; the inputs are not modified. Without ``is_multimodal`` the sources are returned unchanged.
    """
    out = [[dict(sentence) for sentence in source] for source in sources]
    if not is_multimodal:
        return out
    replace_token = DEFAULT_IMAGE_TOKEN
    if mm_use_im_start_end:
        replace_token = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    for source in out:
        for sentence in source:
            value = sentence["value"]
            if DEFAULT_IMAGE_TOKEN in value:
                value = value.replace(DEFAULT_IMAGE_TOKEN, "").strip()
                value = (DEFAULT_IMAGE_TOKEN + "\n" + value).strip()
            sentence["value"] = value.replace(DEFAULT_IMAGE_TOKEN, replace_token)
    return out


def _turns(source: Source, sample_id: Any) -> list[tuple[str, str]]:
    """Validated ``(from, value)`` pairs, dropping a leading non-human turn as upstream does."""
    turns: list[tuple[str, str]] = []
    for j, sentence in enumerate(source):
        if not isinstance(sentence, dict) or not isinstance(sentence.get("value"), str):
            raise BadSampleError(
                "malformed_sample",
                f"conversation turn {j} is not a {{'from', 'value'}} dict with a string value",
                sample_id,
            )
        turns.append((sentence.get("from"), sentence["value"]))
    problem = role_problem([role for role, _ in turns])  # the launch check's own rule (llava.data.sample_check)
    if problem is not None:
        raise BadSampleError(*problem, sample_id)
    if turns[0][0] != HUMAN:
        turns = turns[1:]
    return turns


def _tokenize(text: str, tokenizer: Any, has_image: bool, add_special_tokens: bool) -> list[int]:
    if has_image:
        return tokenizer_image_token(text, tokenizer, add_special_tokens=add_special_tokens)
    return list(tokenizer(text, add_special_tokens=add_special_tokens).input_ids)


def _mask_spans(
    prompt: str,
    spans: list[tuple[int, int]],
    tokenizer: Any,
    has_image: bool,
    sample_id: Any,
    template_name: str,
    add_special_tokens: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Tokenize ``prompt``; supervise the tokens covering each character span. Returns ids, labels, ok."""
    input_ids = _tokenize(prompt, tokenizer, has_image, add_special_tokens)
    labels = [IGNORE_INDEX] * len(input_ids)
    ok = True
    for start, end in spans:
        bounds = []
        for char_pos in (start, end):
            if char_pos >= len(prompt):
                bounds.append(len(input_ids))
                continue
            prefix_ids = _tokenize(prompt[:char_pos], tokenizer, has_image, add_special_tokens)
            if prefix_ids != input_ids[: len(prefix_ids)]:
                ok = False
                logger.warning(
                    "tokenization mismatch in sample %r (template %r): tokenizing the conversation up to "
                    "character %d gives %d ids that are not a prefix of the whole conversation's %d ids "
                    "(boundary text %r). The whole sample is masked (no loss). Check that the tokenizer "
                    "matches the conversation template (--version).",
                    sample_id,
                    template_name,
                    char_pos,
                    len(prefix_ids),
                    len(input_ids),
                    prompt[max(0, char_pos - 20) : char_pos + 20],
                )
                break
            bounds.append(len(prefix_ids))
        if not ok:
            break
        labels[bounds[0] : bounds[1]] = input_ids[bounds[0] : bounds[1]]
    if not ok:
        labels = [IGNORE_INDEX] * len(input_ids)
    labels = [IGNORE_INDEX if tok == IMAGE_TOKEN_INDEX else lab for tok, lab in zip(input_ids, labels)]
    return torch.tensor(input_ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long), ok


def _render_with_spans(
    turns: list[tuple[str, str]], conv: Conversation, tokenizer: Any
) -> tuple[str, list[tuple[int, int]]]:
    """Render ``turns`` with ``conv``; return the prompt and the character span of each answer."""
    conv = conv.copy()
    conv.messages = []
    role_of = {HUMAN: conv.roles[0], GPT: conv.roles[1]}
    raw_spans: list[tuple[int, str, str]] = []
    for role, value in turns:
        if role == GPT:
            conv.append_message(role_of[role], None)
            before = conv.get_prompt(tokenizer)
            conv.messages[-1][1] = value
            after = conv.get_prompt(tokenizer)
            raw_spans.append((len(before), before, after))
        else:
            conv.append_message(role_of[role], value)
    prompt = conv.get_prompt(tokenizer)
    spans = []
    for start, before, after in raw_spans:
        if not (prompt.startswith(before) and prompt.startswith(after)):
            raise ValueError(
                f"conversation template {conv.version!r} is not prefix-stable (rendering fewer turns does "
                "not give a prefix of the full prompt), so answers cannot be located for masking"
            )
        end = len(after.rstrip()) if conv.sep_style == SeparatorStyle.TEMPLATE else len(after)
        spans.append((start, end))
    return prompt, spans


def _preprocess_rendered(
    sources: Sequence[Source],
    tokenizer: Any,
    conv: Conversation,
    has_image: bool,
    sample_id: Any,
    add_special_tokens: bool = True,
) -> dict[str, Any]:
    input_ids, labels, mismatched = [], [], 0
    for source in sources:
        prompt, spans = _render_with_spans(_turns(source, sample_id), conv, tokenizer)
        ids, labs, ok = _mask_spans(
            prompt,
            spans,
            tokenizer,
            has_image,
            sample_id,
            conv.version,
            add_special_tokens=add_special_tokens,
        )
        input_ids.append(ids)
        labels.append(labs)
        mismatched += int(not ok)
    return dict(input_ids=input_ids, labels=labels, num_mismatched=mismatched)


def _resolve(conv: Conversation | str) -> Conversation:
    return get_conv_template(conv) if isinstance(conv, str) else conv


def _require_style(conv: Conversation, style: SeparatorStyle, fn: str) -> None:
    if conv.sep_style != style:
        raise ValueError(f"{fn} needs a {style.name} template; {conv.version!r} is {conv.sep_style.name}")


def preprocess_plain(
    sources: Sequence[Source], tokenizer: Any, conv: Conversation | str = "plain", sample_id: Any = None
) -> dict[str, Any]:
    """Pretraining: ``<image>`` + caption + ``sep``; only the caption and ``sep`` are supervised."""
    conv = _resolve(conv)
    input_ids, labels, mismatched = [], [], 0
    for source in sources:
        prompt = _plain_prompt(_turns(source, sample_id), conv, sample_id)
        ids, labs, ok = _mask_spans(
            prompt, [(len(DEFAULT_IMAGE_TOKEN), len(prompt))], tokenizer, True, sample_id, conv.version
        )
        input_ids.append(ids)
        labels.append(labs)
        mismatched += int(not ok)
    return dict(input_ids=input_ids, labels=labels, num_mismatched=mismatched)


def _plain_prompt(turns: list[tuple[str, str]], conv: Conversation, sample_id: Any) -> str:
    """The 'plain' template's prompt: ``<image>`` + the caption + ``sep`` (one human turn with ``<image>``, one
    gpt caption, else :class:`BadSampleError`)."""
    if len(turns) != 2 or DEFAULT_IMAGE_TOKEN not in turns[0][1]:
        raise BadSampleError(
            "bad_conversation",
            "the 'plain' template (pretraining) needs exactly one human turn containing "
            f"<image> and one gpt caption; got {len(turns)} turns",
            sample_id,
        )
    return DEFAULT_IMAGE_TOKEN + turns[1][1] + conv.sep


def _check_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the 'chat_template' conversation template needs a tokenizer with `chat_template` set"
        )


def preprocess_v1(
    sources: Sequence[Source],
    tokenizer: Any,
    conv: Conversation | str = "vicuna_v1",
    has_image: bool = False,
    sample_id: Any = None,
) -> dict[str, Any]:
    """Vicuna/LLaVA v1 (``TWO`` style): only assistant answers and their ``</s>`` are supervised."""
    conv = _resolve(conv)
    _require_style(conv, SeparatorStyle.TWO, "preprocess_v1")
    return _preprocess_rendered(sources, tokenizer, conv, has_image, sample_id)


def preprocess_llama_2(
    sources: Sequence[Source],
    tokenizer: Any,
    conv: Conversation | str = "llava_llama_2",
    has_image: bool = False,
    sample_id: Any = None,
) -> dict[str, Any]:
    """Llama-2 chat (``[INST]``): answers after ``[/INST]`` through ``</s>`` are supervised."""
    conv = _resolve(conv)
    _require_style(conv, SeparatorStyle.LLAMA_2, "preprocess_llama_2")
    return _preprocess_rendered(sources, tokenizer, conv, has_image, sample_id)


def preprocess_chat_template(
    sources: Sequence[Source],
    tokenizer: Any,
    conv: Conversation | str = "chat_template",
    has_image: bool = False,
    sample_id: Any = None,
) -> dict[str, Any]:
    """Tokenizer chat template (Qwen2 ChatML etc.): assistant contents plus their end marker are supervised.

    Tokenized with ``add_special_tokens=False``: the template itself writes every special token, so
    inference must tokenize the rendered prompt the same way.
    """
    conv = _resolve(conv)
    _require_style(conv, SeparatorStyle.TEMPLATE, "preprocess_chat_template")
    _check_chat_template(tokenizer)
    return _preprocess_rendered(sources, tokenizer, conv, has_image, sample_id, add_special_tokens=False)


def prompt_token_ids(
    sources: Sequence[Source],
    tokenizer: Any,
    conv_template_name_or_conv: Conversation | str,
    has_image: bool = False,
    sample_id: Any = None,
) -> list[list[int]]:
    """The ``input_ids`` :func:`preprocess` gives each source, without its labels: the same checks, rendering
    and one tokenization of the whole prompt (the masking's prefix tokenizations, quadratic in the turns, are
    what this skips). For packing's token counts."""
    conv = _resolve(conv_template_name_or_conv)
    out = []
    for source in copy.deepcopy(list(sources)):
        turns = _turns(source, sample_id)
        if conv.sep_style == SeparatorStyle.PLAIN:
            out.append(_tokenize(_plain_prompt(turns, conv, sample_id), tokenizer, True, True))
            continue
        if conv.sep_style not in (SeparatorStyle.TWO, SeparatorStyle.LLAMA_2, SeparatorStyle.TEMPLATE):
            raise ValueError(f"no preprocessor for separator style {conv.sep_style!r} (template {conv.version!r})")
        template = conv.sep_style == SeparatorStyle.TEMPLATE
        if template:
            _check_chat_template(tokenizer)
        prompt, _ = _render_with_spans(turns, conv, tokenizer)
        out.append(_tokenize(prompt, tokenizer, has_image, add_special_tokens=not template))
    return out


def preprocess(
    sources: Sequence[Source],
    tokenizer: Any,
    conv_template_name_or_conv: Conversation | str,
    has_image: bool = False,
    sample_id: Any = None,
) -> dict[str, Any]:
    """Dispatch on the template's separator style.

    Returns ``dict(input_ids=[LongTensor, ...], labels=[LongTensor, ...], num_mismatched=int)`` with one
    1-D tensor per source; ``num_mismatched`` counts sources fully masked after a tokenization mismatch.
    Raises :class:`BadSampleError` for conversations that cannot be rendered (bad roles, no answer).
    """
    conv = _resolve(conv_template_name_or_conv)
    sources = copy.deepcopy(list(sources))
    if conv.sep_style == SeparatorStyle.PLAIN:
        return preprocess_plain(sources, tokenizer, conv, sample_id=sample_id)
    if conv.sep_style == SeparatorStyle.TWO:
        return preprocess_v1(sources, tokenizer, conv, has_image, sample_id)
    if conv.sep_style == SeparatorStyle.LLAMA_2:
        return preprocess_llama_2(sources, tokenizer, conv, has_image, sample_id)
    if conv.sep_style == SeparatorStyle.TEMPLATE:
        return preprocess_chat_template(sources, tokenizer, conv, has_image, sample_id)
    raise ValueError(f"no preprocessor for separator style {conv.sep_style!r} (template {conv.version!r})")
