"""Conversation templates: how a list of (role, message) turns is rendered into a prompt string.

Upstream LLaVA keeps a mutable module-level ``default_conversation`` that ``train.py`` rewrites.
Here the registry :data:`conv_templates` is built once and never mutated; callers ask for a fresh,
independent copy with :func:`get_conv_template` and pass it around explicitly.

Styles (upstream's rendering, in our words):

- ``PLAIN``: no system text, no roles; each message is followed by ``sep`` (``sep2`` for the
  assistant, falling back to ``sep``).
- ``TWO`` (vicuna v1 / llava v1): ``system + sep``, then ``ROLE: message`` followed by ``sep`` after
  human turns and ``sep2`` (``</s>``) after assistant turns; a ``None`` message renders ``ROLE:``
  (the generation prompt).
- ``LLAMA_2``: ``[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{q1} [/INST] {a1} </s><s>[INST] {q2} [/INST] ...``.
- ``TEMPLATE``: rendered by the tokenizer's own ``apply_chat_template`` (Qwen2-style ChatML and
  friends); ``get_prompt(tokenizer)`` needs the tokenizer.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, auto
from types import MappingProxyType
from typing import Any


class SeparatorStyle(Enum):
    """How turns are joined into a prompt."""

    TWO = auto()
    PLAIN = auto()
    LLAMA_2 = auto()
    TEMPLATE = auto()


# Role names used with tokenizer chat templates (TEMPLATE style).
CHAT_TEMPLATE_ROLES = ("user", "assistant")


@dataclass
class Conversation:
    """A conversation template plus the turns appended so far."""

    system: str
    roles: tuple[str, str]
    messages: list[list[Any]] = field(default_factory=list)
    offset: int = 0
    sep_style: SeparatorStyle = SeparatorStyle.TWO
    sep: str = "###"
    sep2: str | None = None
    version: str = "unknown"

    def append_message(self, role: str, message: str | tuple | None) -> None:
        """Append one turn; ``message=None`` marks the turn the model should generate."""
        self.messages.append([role, message])

    def copy(self) -> Conversation:
        """An independent copy (messages are copied, so appending to it never touches the original)."""
        return Conversation(
            system=self.system,
            roles=tuple(self.roles),
            messages=copy.deepcopy(self.messages),
            offset=self.offset,
            sep_style=self.sep_style,
            sep=self.sep,
            sep2=self.sep2,
            version=self.version,
        )

    def _text_messages(self) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        for role, message in self.messages[self.offset :]:
            if isinstance(message, tuple):  # upstream stores (text, image, mode) for the web demo
                message = message[0]
            out.append((role, message))
        return out

    def get_prompt(self, tokenizer: Any = None) -> str:
        """Render the conversation. ``tokenizer`` is required for the ``TEMPLATE`` style only."""
        messages = self._text_messages()
        if self.sep_style == SeparatorStyle.TWO:
            seps = (self.sep, self.sep2 if self.sep2 is not None else self.sep)
            ret = self.system + seps[0]
            for i, (role, message) in enumerate(messages):
                ret += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
            return ret
        if self.sep_style == SeparatorStyle.PLAIN:
            seps = (self.sep, self.sep2 if self.sep2 is not None else self.sep)
            ret = self.system
            for i, (_, message) in enumerate(messages):
                if message:
                    ret += message + seps[i % 2]
            return ret
        if self.sep_style == SeparatorStyle.LLAMA_2:
            return self._llama_2_prompt(messages)
        if self.sep_style == SeparatorStyle.TEMPLATE:
            return self._chat_template_prompt(messages, tokenizer)
        raise ValueError(f"unsupported separator style {self.sep_style!r}")

    def _llama_2_prompt(self, messages: list[tuple[str, str | None]]) -> str:
        if messages and (not messages[0][1] or messages[0][0] != self.roles[0]):
            raise ValueError(
                "LLAMA_2 conversations must start with a non-empty message from "
                f"{self.roles[0]!r}; got {messages[0]!r}"
            )
        ret = ""
        for i, (_, message) in enumerate(messages):
            if not message:
                continue
            if i == 0 and self.system:
                message = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{message}"
            if i % 2 == 0:
                ret += f"{self.sep}[INST] {message} [/INST]"
            else:
                ret += f" {message} {self.sep2}"
        # The first turn carries no leading "<s>": the tokenizer adds BOS itself.
        return ret[len(self.sep) :] if ret.startswith(self.sep) else ret

    def to_chat_messages(self) -> list[dict[str, str]]:
        """Turns as ``[{"role", "content"}]`` for ``apply_chat_template`` (the trailing ``None`` dropped)."""
        role_map = {self.roles[0]: CHAT_TEMPLATE_ROLES[0], self.roles[1]: CHAT_TEMPLATE_ROLES[1]}
        chat = [{"role": "system", "content": self.system}] if self.system else []
        for role, message in self._text_messages():
            if message is None:
                continue
            chat.append({"role": role_map.get(role, role), "content": message})
        return chat

    def _chat_template_prompt(self, messages: list[tuple[str, str | None]], tokenizer: Any) -> str:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"conversation template {self.version!r} renders with the tokenizer's chat template: call "
                "get_prompt(tokenizer) with a tokenizer that has `chat_template` set."
            )
        add_generation_prompt = bool(messages) and messages[-1][1] is None
        return tokenizer.apply_chat_template(
            self.to_chat_messages(), tokenize=False, add_generation_prompt=add_generation_prompt
        )


_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
_LLAMA_2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being "
    "safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or "
    "illegal content. Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering "
    "something not correct. If you don't know the answer to a question, please don't share false information."
)
_LLAVA_LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)


def _build_templates() -> Mapping[str, Conversation]:
    vicuna_v1 = Conversation(
        system=_VICUNA_SYSTEM,
        roles=("USER", "ASSISTANT"),
        sep_style=SeparatorStyle.TWO,
        sep=" ",
        sep2="</s>",
        version="v1",
    )
    llava_v1 = Conversation(
        system=_LLAVA_V1_SYSTEM,
        roles=("USER", "ASSISTANT"),
        sep_style=SeparatorStyle.TWO,
        sep=" ",
        sep2="</s>",
        version="v1",
    )
    llama_2 = Conversation(
        system=_LLAMA_2_SYSTEM,
        roles=("USER", "ASSISTANT"),
        sep_style=SeparatorStyle.LLAMA_2,
        sep="<s>",
        sep2="</s>",
        version="llama_v2",
    )
    llava_llama_2 = Conversation(
        system=_LLAVA_LLAMA_2_SYSTEM,
        roles=("USER", "ASSISTANT"),
        sep_style=SeparatorStyle.LLAMA_2,
        sep="<s>",
        sep2="</s>",
        version="llama_v2",
    )
    plain = Conversation(
        system="", roles=("", ""), sep_style=SeparatorStyle.PLAIN, sep="\n", sep2="\n", version="plain"
    )
    chat_template = Conversation(
        system="",
        roles=CHAT_TEMPLATE_ROLES,
        sep_style=SeparatorStyle.TEMPLATE,
        sep="",
        sep2=None,
        version="chat_template",
    )
    return MappingProxyType(
        {
            "plain": plain,
            "v1": vicuna_v1,
            "vicuna_v1": vicuna_v1,
            "llava_v1": llava_v1,
            "llama_2": llama_2,
            "llava_llama_2": llava_llama_2,
            "chat_template": chat_template,
        }
    )


#: Exact-key registry of templates (read-only). Use :func:`get_conv_template` to get a copy to fill in.
conv_templates: Mapping[str, Conversation] = _build_templates()

#: Name of upstream's default template for LLaVA-1.5 finetuning; a name, not a shared object.
default_conversation_name = "vicuna_v1"


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of the template registered under exactly ``name``.

    Raises ``ValueError`` listing the valid names when ``name`` is unknown.
    """
    try:
        template = conv_templates[name]
    except KeyError:
        raise ValueError(
            f"unknown conversation template {name!r}; valid names: {', '.join(sorted(conv_templates))} "
            "(pass one of them as --version / --conv-mode)"
        ) from None
    return template.copy()
