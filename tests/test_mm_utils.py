"""mm_utils: square padding, image preprocessing, local image loading, image-token tokenization, stopping."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    expand2square,
    get_model_name_from_path,
    load_image,
    process_images,
    tokenizer_image_token,
)


@pytest.fixture(scope="module")
def clip_processor(tiny_clip):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil.from_pretrained(tiny_clip)


def test_expand2square_wide_and_tall() -> None:
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    out = expand2square(wide, (1, 2, 3))
    assert out.size == (40, 40)
    assert out.getpixel((0, 0)) == (1, 2, 3) and out.getpixel((0, 39)) == (1, 2, 3)
    assert out.getpixel((0, 10)) == (255, 0, 0) and out.getpixel((39, 29)) == (255, 0, 0)
    tall = Image.new("RGB", (10, 30), (0, 255, 0))
    out = expand2square(tall, (9, 9, 9))
    assert out.size == (30, 30) and out.getpixel((5, 0)) == (9, 9, 9) and out.getpixel((10, 0)) == (0, 255, 0)
    square = Image.new("RGB", (8, 8))
    assert expand2square(square, (0, 0, 0)) is square


def test_process_images_pad_vs_square(clip_processor) -> None:
    wide = Image.new("RGB", (64, 16), (255, 0, 0))
    mean = torch.tensor(clip_processor.image_mean)
    std = torch.tensor(clip_processor.image_std)
    padded = process_images([wide, wide], clip_processor, SimpleNamespace(image_aspect_ratio="pad"))
    plain = process_images([wide], clip_processor, SimpleNamespace(image_aspect_ratio="square"))
    assert padded.shape == (2, 3, 32, 32) and plain.shape == (1, 3, 32, 32)
    # pad: the top row is the processor's mean colour, which normalizes to ~0
    assert padded[0, :, 0, 0].abs().max() < 0.02
    # square: resize + centre crop keeps only red pixels
    red = (torch.tensor([1.0, 0.0, 0.0]) - mean) / std
    assert torch.allclose(plain[0, :, 0, 0], red, atol=0.02)
    assert torch.allclose(padded[0, :, 16, 16], red, atol=0.02)
    no_cfg = process_images([wide], clip_processor, SimpleNamespace())
    assert torch.equal(no_cfg, plain)


def test_process_images_rejects_unknown_aspect_ratio(clip_processor) -> None:
    with pytest.raises(
        ValueError, match="image_aspect_ratio 'anyres' is not supported; valid values: 'square', 'pad'"
    ):
        process_images(
            [Image.new("RGB", (4, 4))], clip_processor, SimpleNamespace(image_aspect_ratio="anyres")
        )


def test_load_image(tmp_path) -> None:
    path = tmp_path / "grey.png"
    Image.new("L", (5, 7), 128).save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (5, 7)
    with pytest.raises(FileNotFoundError, match="image file not found: .*nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ValueError, match="only reads local files"):
        load_image("https://example.com/a.png")
    big = tmp_path / "big.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(big)
    data = big.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="truncated"):
        load_image(truncated)


def test_load_image_catches_truncation_even_with_pil_flag(tmp_path, monkeypatch) -> None:
    from PIL import ImageFile

    big = tmp_path / "big.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(big)
    data = big.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(OSError, match="Truncated"):
        load_image(truncated)


def test_tokenizer_image_token_llama(llama_tokenizer) -> None:
    tok = llama_tokenizer
    bos = tok.bos_token_id
    enc = tok("\nwhat is it?").input_ids
    assert enc[0] == bos
    ids = tokenizer_image_token("<image>\nwhat is it?", tok)
    assert ids == [bos, IMAGE_TOKEN_INDEX] + enc[1:]
    two = tokenizer_image_token("USER: <image> and <image> ok", tok)
    assert two == (
        [bos]
        + tok("USER: ").input_ids[1:]
        + [IMAGE_TOKEN_INDEX]
        + tok(" and ").input_ids[1:]
        + [IMAGE_TOKEN_INDEX]
        + tok(" ok").input_ids[1:]
    )
    assert tokenizer_image_token("no image here", tok) == tok("no image here").input_ids
    tensor = tokenizer_image_token("<image>", tok, return_tensors="pt")
    assert isinstance(tensor, torch.Tensor) and tensor.tolist() == [bos, IMAGE_TOKEN_INDEX]
    assert tokenizer_image_token("<image>x", tok, image_token_index=-7)[1] == -7
    with pytest.raises(ValueError, match="unsupported return_tensors 'np'"):
        tokenizer_image_token("x", tok, return_tensors="np")


def test_tokenizer_image_token_without_special_tokens(qwen2_tokenizer) -> None:
    tok = qwen2_tokenizer
    ids = tokenizer_image_token("<|im_start|>user\n<image>hi", tok, add_special_tokens=False)
    assert ids == (
        tok("<|im_start|>user\n", add_special_tokens=False).input_ids
        + [IMAGE_TOKEN_INDEX]
        + tok("hi", add_special_tokens=False).input_ids
    )


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/models/llava-v1.5-7b", "llava-v1.5-7b"),
        ("/models/llava-v1.5-7b/", "llava-v1.5-7b"),
        ("runs/llava-lora/checkpoint-500", "llava-lora_checkpoint-500"),
        ("liuhaotian/llava-v1.5-13b", "llava-v1.5-13b"),
        ("checkpoint-3", "checkpoint-3"),
    ],
)
def test_get_model_name_from_path(path: str, name: str) -> None:
    assert get_model_name_from_path(path) == name


def test_keywords_stopping_criteria(llama_tokenizer) -> None:
    tok = llama_tokenizer
    prompt = torch.tensor([tok("USER: say ### ASSISTANT:").input_ids] * 2)
    stop = KeywordsStoppingCriteria(["</s>", "###"], tok, prompt)
    # first step: one new token each, nothing stops although the prompt contains "###"
    step1 = torch.cat([prompt, torch.tensor([[tok.convert_tokens_to_ids("▁a")]] * 2)], dim=1)
    out = stop(step1, None)
    assert out.dtype == torch.bool and out.tolist() == [False, False]
    hashes = tok("###", add_special_tokens=False).input_ids
    row1 = step1[1].tolist() + hashes
    row0 = step1[0].tolist() + [tok.convert_tokens_to_ids("▁b")] * (len(hashes) - 1) + [tok.eos_token_id]
    out = stop(torch.tensor([row0, row1]), None)
    assert out.tolist() == [True, True]
    still = step1[0].tolist() + [tok.convert_tokens_to_ids("▁b")] * len(hashes)
    assert stop(torch.tensor([still, still]), None).tolist() == [False, False]


def test_keywords_stopping_criteria_on_new_tokens_only(llama_tokenizer) -> None:
    """Generating from inputs_embeds: the ids hold only new tokens; the criteria must still work."""
    tok = llama_tokenizer
    stop = KeywordsStoppingCriteria(["</s>"], tok, torch.zeros(1, 50, dtype=torch.long))
    assert stop(torch.tensor([[tok.convert_tokens_to_ids("▁a")]]), None).tolist() == [False]
    assert stop(torch.tensor([[tok.convert_tokens_to_ids("▁a"), tok.eos_token_id]]), None).tolist() == [True]


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_load_image_scales_wide_modes_instead_of_clipping(tmp_path, mode):
    import numpy as np

    grey16 = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    if mode == "I;16":
        img, expect = Image.fromarray(grey16), grey16 / 257
    elif mode == "I":
        img, expect = Image.fromarray(grey16.astype(np.int32)), grey16 / 257
    else:
        img, expect = Image.fromarray((grey16 / 65535).astype(np.float32)), grey16 / 65535 * 255
    path = tmp_path / ("g.png" if mode == "I;16" else "g.tif")
    img.save(path)
    assert Image.open(path).mode == mode
    rgb = np.asarray(load_image(path))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb[..., 0].astype(float) - expect).max() <= 0.51  # scaled (the clip gave 99.6% white)
    assert (rgb == 255).mean() < 0.01
