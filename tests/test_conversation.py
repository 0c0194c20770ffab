"""Conversation templates: registry, copies, and exact prompt rendering for each style."""

from __future__ import annotations

import pytest

from llava.conversation import SeparatorStyle, conv_templates, get_conv_template

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def test_registry_keys_are_exact() -> None:
    assert set(conv_templates) == {
        "plain",
        "v1",
        "vicuna_v1",
        "llava_v1",
        "llama_2",
        "llava_llama_2",
        "chat_template",
    }
    with pytest.raises(TypeError):
        conv_templates["new"] = get_conv_template("v1")  # type: ignore[index]


def test_unknown_template_lists_valid_names() -> None:
    with pytest.raises(
        ValueError,
        match=r"unknown conversation template 'vicuna'; valid names: chat_template, "
        r"llama_2, llava_llama_2, llava_v1, plain, v1, vicuna_v1",
    ):
        get_conv_template("vicuna")
    with pytest.raises(ValueError):
        get_conv_template("V1")  # exact keys only


def test_get_conv_template_returns_independent_copy() -> None:
    conv = get_conv_template("v1")
    conv.append_message("USER", "hi")
    conv.system = "changed"
    fresh = get_conv_template("v1")
    assert fresh.messages == [] and fresh.system == VICUNA_SYSTEM
    assert conv_templates["v1"].messages == []
    copy = conv.copy()
    copy.messages[0][1] = "bye"
    assert conv.messages[0][1] == "hi"


def test_v1_rendering_multi_turn_and_generation_prompt() -> None:
    conv = get_conv_template("vicuna_v1")
    assert conv.sep_style == SeparatorStyle.TWO and (conv.sep, conv.sep2) == (" ", "</s>")
    conv.append_message("USER", "<image>\nWhat?")
    conv.append_message("ASSISTANT", "A cat.")
    conv.append_message("USER", "Colour?")
    conv.append_message("ASSISTANT", None)
    assert conv.get_prompt() == (
        VICUNA_SYSTEM + " USER: <image>\nWhat? ASSISTANT: A cat.</s>USER: Colour? ASSISTANT:"
    )


def test_llava_v1_uses_human_system_text() -> None:
    conv = get_conv_template("llava_v1")
    assert "curious human" in conv.system and "human's questions" in conv.system
    assert conv.roles == ("USER", "ASSISTANT") and conv.sep_style == SeparatorStyle.TWO


def test_plain_rendering() -> None:
    conv = get_conv_template("plain")
    conv.append_message("", "<image>")
    conv.append_message("", "a red circle")
    assert conv.get_prompt() == "<image>\na red circle\n"
    conv = get_conv_template("plain")
    conv.append_message("", "<image>")
    conv.append_message("", None)
    assert conv.get_prompt() == "<image>\n"


def test_llama_2_rendering() -> None:
    conv = get_conv_template("llava_llama_2")
    conv.append_message("USER", "Q1")
    conv.append_message("ASSISTANT", "A1")
    conv.append_message("USER", "Q2")
    conv.append_message("ASSISTANT", None)
    system = conv.system
    assert conv.get_prompt() == (
        f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST]"
    )
    with pytest.raises(ValueError, match="must start with a non-empty message from 'USER'"):
        bad = get_conv_template("llama_2")
        bad.append_message("ASSISTANT", "x")
        bad.get_prompt()


def test_chat_template_renders_with_tokenizer(qwen2_tokenizer) -> None:
    conv = get_conv_template("chat_template")
    conv.append_message(conv.roles[0], "hi")
    conv.append_message(conv.roles[1], "yes")
    assert (
        conv.get_prompt(qwen2_tokenizer)
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyes<|im_end|>\n"
    )
    conv.append_message(conv.roles[0], "more")
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt(qwen2_tokenizer).endswith(
        "<|im_start|>user\nmore<|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(ValueError, match=r"call get_prompt\(tokenizer\)"):
        conv.get_prompt()


def test_chat_template_system_message(qwen2_tokenizer) -> None:
    conv = get_conv_template("chat_template")
    conv.system = "Be brief."
    conv.append_message("user", "hi")
    conv.append_message("assistant", None)
    assert conv.get_prompt(qwen2_tokenizer) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
