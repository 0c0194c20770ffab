"""Parity from text: a converted model's ``LlavaProcessor`` gives, for the same prompt string, the ids that
``run_llava`` (and training) give, and the llava-hf model's greedy answers equal ours.

The prompt is built with our conversation templates (single and multi-turn, image first, mid-text and last) and
tokenized our way (:func:`llava.serve.inference.prompt_ids`); the converted folder is loaded from disk and fed the
same TEXT through ``processor(text=..., images=...)``. Both the tiny model and a from-scratch llava-hf model
(converted to ours, then back) are checked.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import AddedToken
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import SeparatorStyle, get_conv_template
from llava.mm_utils import process_images
from llava.model.builder import load_pretrained_model
from llava.model.hf_interop import convert_from_hf, convert_to_hf, vicuna_chat_template
from llava.serve.inference import prompt_ids
from llava.testing.tiny_llava import build_tiny_llava

CHATS = {  # name -> human/gpt turns (the trailing None: the turn to answer)
    "image_first": ["<image>\nWhat is red?", None],
    "image_mid": ["Look at <image> and say what is red.", None],
    "image_last": ["What is red?\n<image>", None],
    "multi_turn": ["<image>\nWhat is red?", "A red circle.", "And what is blue?", None],
    "multi_turn_image_later": ["Hello there.", "Hello.", "<image>\nWhat is at the top left?", None],
}
LLAMA_TEMPLATES = ("vicuna_v1", "llava_v1", "llama_2", "llava_llama_2", "plain")
MAX_NEW = 8


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 48, 3), dtype=np.uint8))


def _conversation(template: str, turns: list[str | None]):
    conv = get_conv_template(template)
    if conv.sep_style == SeparatorStyle.PLAIN:  # pretraining's format: one turn with the image
        turns = [next(t for t in turns if t and "<image>" in t), None]
    for i, text in enumerate(turns):
        conv.append_message(conv.roles[i % 2], text)
    return conv


def _collapse(ids: list[int], image_id: int) -> list[int]:
    """The processor's ids with each run of image tokens as our one placeholder (-200)."""
    out = [t for i, t in enumerate(ids) if t != image_id or i == 0 or ids[i - 1] != image_id]
    return [IMAGE_TOKEN_INDEX if t == image_id else t for t in out]


def _check_text_parity(hf_dir, ours_dir, templates) -> int:
    """For every template x chat: processor ids from text == ours; greedy answers equal. Returns the cases run."""
    processor = AutoProcessor.from_pretrained(hf_dir)
    assert isinstance(processor, LlavaProcessor)
    hf_model = LlavaForConditionalGeneration.from_pretrained(hf_dir).eval()
    tokenizer, ours, image_processor, _ = load_pretrained_model(str(ours_dir), None, device="cpu")
    image_id = hf_model.config.image_token_id
    image = _image()
    pixels = process_images([image], image_processor, ours.config)
    cases = 0
    for template in templates:
        for name, turns in CHATS.items():
            conv = _conversation(template, turns)
            prompt = conv.get_prompt(tokenizer)
            templated = conv.sep_style == SeparatorStyle.TEMPLATE
            mine = prompt_ids(conv, tokenizer)  # what run_llava feeds the model
            inputs = processor(text=prompt, images=image, return_tensors="pt", add_special_tokens=not templated)
            assert int((inputs.input_ids == image_id).sum()) == hf_model.config.image_seq_length, (template, name)
            assert _collapse(inputs.input_ids[0].tolist(), image_id) == mine[0].tolist(), (template, name, prompt)
            torch.testing.assert_close(inputs.pixel_values, pixels, atol=0, rtol=0)
            with torch.no_grad():
                theirs = hf_model.generate(**inputs, max_new_tokens=MAX_NEW, do_sample=False)
                answer = ours.generate(mine, images=pixels, max_new_tokens=MAX_NEW, do_sample=False)
            assert theirs[0, inputs.input_ids.shape[1]:].tolist() == answer[0].tolist(), (template, name)
            cases += 1
    return cases


def _exported_template_renders_ours(hf_dir) -> None:
    """The exported vicuna_v1 chat template renders the prompt string our template builds."""
    processor = AutoProcessor.from_pretrained(hf_dir)
    assert processor.chat_template == vicuna_chat_template()
    for turns in CHATS.values():
        messages = [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns) if t]
        rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert rendered == _conversation("vicuna_v1", turns).get_prompt()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_processor_from_text_equals_ours(family, request, tiny_clip, tmp_path):
    llm = request.getfixturevalue(f"tiny_{family}")
    build_tiny_llava(llm, tiny_clip).save_pretrained(tmp_path / "ours")
    AutoTokenizer.from_pretrained(llm).save_pretrained(tmp_path / "ours")
    result = convert_to_hf(str(tmp_path / "ours"), str(tmp_path / "hf"))
    aligned = any("inserts a space after <image>" in n for n in result.notes)
    assert aligned == (family == "llama")  # sentencepiece needs it, byte-level BPE does not
    templates = LLAMA_TEMPLATES if family == "llama" else ("chat_template", "vicuna_v1")
    assert _check_text_parity(tmp_path / "hf", tmp_path / "ours", templates) == len(templates) * len(CHATS)
    if family == "llama":
        _exported_template_renders_ours(tmp_path / "hf")


def _from_scratch_hf(path, tiny_llama: str, tiny_clip: str) -> LlavaForConditionalGeneration:
    """A llava-hf model built the HF way: random weights, the tokenizer with ``<image>`` added as users add it."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    text = LlamaConfig.from_pretrained(tiny_llama)
    text.vocab_size = len(tokenizer)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig.from_pretrained(tiny_clip), text_config=text,
                      image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=16)
    torch.manual_seed(1)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.save_pretrained(path)
    LlavaProcessor(image_processor=CLIPImageProcessorPil.from_pretrained(tiny_clip), tokenizer=tokenizer,
                   patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=vicuna_chat_template()).save_pretrained(path)
    return model


def test_from_scratch_hf_model_converted_back(tiny_llama, tiny_clip, tmp_path):
    original = _from_scratch_hf(tmp_path / "scratch", tiny_llama, tiny_clip)
    result = convert_from_hf(str(tmp_path / "scratch"), str(tmp_path / "ours"))
    # its processor was not exported by us: the conversion says where it tokenizes differently from our tools
    assert any("tokenize text next to <image> differently" in n for n in result.notes)
    convert_to_hf(str(tmp_path / "ours"), str(tmp_path / "hf"))
    again = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf")
    assert original.state_dict().keys() == again.state_dict().keys()
    image_id = original.config.image_token_id  # the last row: dropped by convert_from_hf, the mean row again
    for key, value in original.state_dict().items():
        other = again.state_dict()[key]
        if key.endswith(("embed_tokens.weight", "lm_head.weight")):
            assert image_id == value.shape[0] - 1 and torch.equal(value[:-1], other[:-1]), key
            torch.testing.assert_close(other[-1], value[:-1].mean(dim=0))
        else:
            assert torch.equal(value, other), key
    assert _check_text_parity(tmp_path / "hf", tmp_path / "ours", ("vicuna_v1", "llava_v1")) == 2 * len(CHATS)
    _exported_template_renders_ours(tmp_path / "hf")
