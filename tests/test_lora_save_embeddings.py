"""LoRA saves decide PEFT's ``save_embedding_layers`` from the base config's vocabulary, without PEFT's "auto"."""

from __future__ import annotations

from types import SimpleNamespace

from transformers import LlamaConfig

from llava.train.trainer import embeddings_resized


def _peft_like(base: str, vocab: int) -> SimpleNamespace:
    return SimpleNamespace(peft_config={"default": SimpleNamespace(base_model_name_or_path=base)},
                           active_adapter="default", config=SimpleNamespace(vocab_size=vocab))


def test_resized_only_when_the_vocabulary_differs_from_the_base(tmp_path):
    LlamaConfig(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(tmp_path)
    assert not embeddings_resized(_peft_like(str(tmp_path), 100))
    assert embeddings_resized(_peft_like(str(tmp_path), 101))
    assert not embeddings_resized(_peft_like(str(tmp_path / "missing"), 101))  # nothing fetched from a hub
    assert not embeddings_resized(_peft_like("", 101))
