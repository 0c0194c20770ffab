"""The chat CLI answers scripted stdin turns; run_llava answers a one-shot query; both match in-process generation."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

from llava.mm_utils import load_image, process_images
from llava.model.builder import load_pretrained_model
from llava.serve.inference import generate_reply, new_conversation, with_image_tokens
from llava.testing.tiny_llava import build_tiny_llava


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tiny_llama, tiny_clip, llama_tokenizer):
    out = tmp_path_factory.mktemp("llava_full")
    model = build_tiny_llava(tiny_llama, tiny_clip, seed=11)
    model.save_pretrained(out)
    llama_tokenizer.save_pretrained(out)
    img = out / "red.png"
    Image.new("RGB", (40, 24), (200, 30, 30)).save(img)
    return out, img


def _expected_answer(model_dir, img, query):
    tok, model, proc, _ = load_pretrained_model(str(model_dir), None, device="cpu")
    conv = new_conversation("llava_v1")
    conv.append_message(conv.roles[0], with_image_tokens(query, 1, False))
    conv.append_message(conv.roles[1], None)
    images = process_images([load_image(img)], proc, model.config)
    return generate_reply(model, tok, conv, images, temperature=0.0, max_new_tokens=6)


def test_cli_answers_scripted_prompt(saved_model):
    model_dir, img = saved_model
    proc = subprocess.run(
        [sys.executable, "-m", "llava.serve.cli", "--model-path", str(model_dir), "--image-file", str(img),
         "--temperature", "0", "--max-new-tokens", "6", "--no-stream", "--device", "cpu"],
        input="What color is the shape?\nWhere is it?\n", capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.split("USER: ") if ln]
    assert len(lines) == 2, proc.stdout
    assert all(ln.startswith("ASSISTANT: ") for ln in lines)
    first = lines[0].removeprefix("ASSISTANT: ").strip()
    assert first == _expected_answer(model_dir, img, "What color is the shape?")


def test_run_llava_one_shot(saved_model, capsys):
    from llava.eval.run_llava import main

    model_dir, img = saved_model
    main(["--model-path", str(model_dir), "--image-file", str(img), "--query", "What color is the shape?",
          "--temperature", "0", "--max_new_tokens", "6", "--device", "cpu", "--conv-mode", "llava_v1"])
    printed = capsys.readouterr().out.rstrip("\n").split("\n")[-1]
    expected = _expected_answer(model_dir, img, "What color is the shape?")
    assert expected and printed.strip() == expected


def test_unknown_conv_mode_is_clear():
    with pytest.raises(ValueError, match="unknown conversation template 'vicuna_v9'; valid names: "):
        new_conversation("vicuna_v9")
