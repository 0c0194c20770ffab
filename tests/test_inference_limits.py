"""Inference never cuts a prompt silently: an over-long prompt is an error naming the lengths."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.builder import context_length
from llava.testing.tiny_llava import build_tiny_llava


@pytest.fixture()
def model(tiny_llama, tiny_clip):
    return build_tiny_llava(tiny_llama, tiny_clip)


def _prompt(n_text: int) -> torch.Tensor:
    return torch.tensor([[1, IMAGE_TOKEN_INDEX, *range(5, 5 + n_text)]])


def test_over_long_prompt_raises(model) -> None:
    model.config.tokenizer_model_max_length = 24  # 16 image tokens + 1 BOS + 8 text = 25 positions
    images = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match=r"the prompt takes 25 positions \(16 per image included\) but the "
                                         r"model's limit is 24 \(tokenizer_model_max_length\)"):
        model.generate(_prompt(8), images=images, max_new_tokens=2, do_sample=False)
    out = model.generate(_prompt(7), images=images, max_new_tokens=2, do_sample=False)  # exactly 24: fine
    assert out.shape == (1, 2)


def test_training_forward_still_truncates(model) -> None:
    model.config.tokenizer_model_max_length = 24
    ids = _prompt(12)
    out = model(input_ids=ids, labels=ids.clamp(min=0), images=torch.zeros(1, 3, 32, 32))
    assert out.logits.shape[1] == 24  # upstream's training behaviour: cut to the limit


def test_context_length_is_the_models_limit() -> None:
    assert context_length(SimpleNamespace(tokenizer_model_max_length=512, max_position_embeddings=4096)) == 512
    assert context_length(SimpleNamespace(max_sequence_length=None, max_position_embeddings=4096)) == 4096
    assert context_length(SimpleNamespace()) == 2048
