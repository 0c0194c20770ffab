"""Throughput logging (issue 17 point 4): token counts, the FLOP formula, and the fields of a real run.

Counts are checked against hand counts on padded (with images, with truncation) and packed batches;
the FLOP fields against a hand computation (the formula itself: tests/test_flops.py); a tiny CPU
training run, padded and packed, must write the per-step and end-of-run fields to
``trainer_state.json`` with the same totals of real tokens and samples (the same data, packed or not).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers_data import write_shapes_dataset

from llava.constants import IMAGE_TOKEN_INDEX as IMG
from llava.train.flops import Dense
from llava.train.throughput import (
    COUNT_FIELDS,
    ModelShape,
    batch_counts,
    component_mfu,
    model_shape,
    peak_flops_for,
    resolve_peak_flops,
    throughput_fields,
)


def _counts(inputs, **kw) -> dict[str, float]:
    return dict(zip(COUNT_FIELDS, batch_counts(inputs, **kw).tolist()))


def _padded() -> dict[str, torch.Tensor]:
    return dict(input_ids=torch.tensor([[1, IMG, 5, 6], [1, 7, 0, 0]]),
                attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool),
                images=torch.zeros(1, 3, 8, 8))


def test_counts_padded_batch_with_an_image() -> None:
    # row 0: 3 text + 4 image positions = 7; row 1: 2 tokens; padded to 2 x 7
    assert _counts(_padded(), tokens_per_image=4) == dict(
        real_tokens=9, processed_positions=14, image_tokens=4, samples=2, sum_sq_lengths=49 + 4, vision_images=1)


@pytest.mark.parametrize("max_length, row0, image", [(5, 5, 4), (3, 3, 2), (7, 7, 4)])
def test_counts_follow_the_models_truncation(max_length: int, row0: int, image: int) -> None:
    got = _counts(_padded(), tokens_per_image=4, max_length=max_length)
    assert got["real_tokens"] == row0 + 2 and got["processed_positions"] == 2 * row0
    assert got["image_tokens"] == image and got["sum_sq_lengths"] == row0 ** 2 + 4


def test_counts_packed_rows_per_sample() -> None:
    seg = torch.tensor([[1, 1, 2, 2, 2, 0], [1, 1, 1, 0, 0, 0]])
    batch = dict(input_ids=torch.tensor([[1, IMG, 3, 4, 5, 0], [6, 7, 8, 0, 0, 0]]), attention_mask=seg > 0,
                 packed_seq_ids=seg, images=torch.zeros(1, 3, 8, 8))
    # row 0: sample 1 = 1 + 4 positions, sample 2 = 3; row 1: one sample of 3; longest row 8
    assert _counts(batch, tokens_per_image=4) == dict(
        real_tokens=11, processed_positions=16, image_tokens=4, samples=3, sum_sq_lengths=25 + 9 + 9,
        vision_images=1)


def test_counts_text_only_batch_and_blank_image() -> None:
    batch = dict(input_ids=torch.tensor([[1, 2, 3], [4, 0, 0]]),
                 attention_mask=torch.tensor([[1, 1, 1], [1, 0, 0]]))
    got = _counts(batch, tokens_per_image=16, blank_image=True)
    assert got == dict(real_tokens=4, processed_positions=6, image_tokens=0, samples=2, sum_sq_lengths=10,
                       vision_images=1)
    assert _counts(batch)["vision_images"] == 0


def test_flop_fields_by_hand() -> None:
    shape = ModelShape(llm=Dense(100, 100, 10), layers=2, attn_width=8, tokens_per_image=4, vision=Dense(50),
                       vision_patch=Dense(6), vision_layers=1, vision_width=4, vision_seq=5, vision_patches=4,
                       projector=Dense(20, 5, 20), projector_tokens=4)
    # LLM: (2 + 2) x 100 + 2 x 10 per token; attention 12 x 2 layers x 8 x sum(s^2)
    assert shape.llm_flops(11, 43) == 11 * 420 + 12 * 2 * 8 * 43
    # frozen tower, forward only: 2 x 50 x 10 positions + 2 x 6 x 8 patches + 4 x 1 x 4 x 2 x 5^2;
    # projector 2 x 20 x 8 forward + 2 x (5 + 20) x 8 backward
    assert shape.vision_flops(2) == 2 * 50 * 10 + 2 * 6 * 8 + 4 * 4 * 2 * 25 + 2 * 20 * 8 + 2 * 25 * 8
    fields = throughput_fields([11, 16, 4, 3, 43, 2], seconds=2.0, shape=shape, peak_flops=1000.0, devices=2)
    assert fields == dict(tokens_per_second=5.5, samples_per_second=1.5, padding_fraction=round(5 / 16, 6),
                          image_token_share=round(4 / 11, 6), mfu=round(12876 / 4000, 6),
                          mfu_vision=round(2616 / 4000, 6))
    parts = component_mfu(shape, [11, 16, 4, 3, 43, 2], seconds=2.0, peak_flops=1000.0, devices=2)
    assert parts == dict(llm=12876 / 4000, vision=1896 / 4000, projector=720 / 4000)
    assert "mfu" not in throughput_fields([11, 16, 4, 3, 43, 2], 2.0, shape, peak_flops=None)
    assert throughput_fields([0, 0, 0, 0, 0, 0], 2.0) == {}


def test_peak_table_and_override() -> None:
    assert peak_flops_for("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_for("NVIDIA A10") == 125e12
    assert peak_flops_for("NVIDIA A10G") is None
    assert peak_flops_for("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_for("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for("NVIDIA GeForce RTX 4090") == 165e12
    assert resolve_peak_flops(torch.device("cpu"), None)[0] is None
    assert resolve_peak_flops(torch.device("cpu"), 2.0) == (2e12, "--peak_tflops")
    with pytest.raises(ValueError, match="--peak_tflops must be positive"):
        resolve_peak_flops(torch.device("cpu"), 0.0)


def test_model_shape_of_tiny_llava(tiny_llama, tiny_clip) -> None:
    from llava.testing.tiny_llava import build_tiny_llava

    model = build_tiny_llava(tiny_llama, tiny_clip)
    model.get_model().mm_projector.requires_grad_(False)
    shape = model_shape(model)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    parts = ("model.vision_tower.", "model.mm_projector.")
    llm = sum(m.weight.numel() for n, m in linears.items() if not n.startswith(parts))  # lm_head in, lookup out
    assert "lm_head" in linears and not any("embed_tokens" in n for n in linears)
    # everything trains but the frozen projector: the LLM's inputs (trainable embeddings) need gradients
    assert shape.llm == Dense(llm, llm, llm)
    assert shape.vision.weights == sum(m.weight.numel() for n, m in linears.items() if n.startswith(parts[0]))
    assert shape.vision.weight_grads == 0 and shape.projector.weight_grads == shape.projector.input_grads == 0
    assert shape.tokens_per_image == 16 and shape.vision_seq == 17 and shape.vision_patches == 16
    assert shape.max_length == 2048 and shape.layers == model.config.num_hidden_layers


# ---- acceptance: the fields of an ordinary tiny training run ----

def _train(tmp_path: Path, out: str, data, tiny_llama: str, tiny_clip: str, monkeypatch, *extra: str) -> dict:
    from llava.train.train import train

    monkeypatch.setattr(sys, "argv", [
        "train.py", "--model_name_or_path", tiny_llama, "--vision_tower", tiny_clip, "--version", "v1",
        "--mm_use_im_patch_token", "False", "--data_path", data.finetune_json, "--image_folder", data.image_folder,
        "--output_dir", str(tmp_path / out), "--use_cpu", "True", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no",
        "--logging_steps", "1", "--model_max_length", "128", "--dataloader_num_workers", "0", *extra])
    train()
    return json.loads((tmp_path / out / "trainer_state.json").read_text())


def test_throughput_fields_in_trainer_state_padded_and_packed(tiny_llama, tiny_clip, tmp_path, monkeypatch,
                                                               capsys) -> None:
    data = write_shapes_dataset(tmp_path / "data", n=8)
    n_samples = len(json.loads(Path(data.finetune_json).read_text()))
    runs = {"padded": _train(tmp_path, "padded", data, tiny_llama, tiny_clip, monkeypatch),
            "packed": _train(tmp_path, "packed", data, tiny_llama, tiny_clip, monkeypatch,
                             "--packing", "True", "--peak_tflops", "1")}
    finals = {}
    for name, state in runs.items():
        steps = [h for h in state["log_history"] if "loss" in h]
        assert steps and all(h["tokens_per_second"] > 0 and h["samples_per_second"] > 0 for h in steps)
        assert all(0 <= h["padding_fraction"] < 1 and 0 <= h["image_token_share"] < 1 for h in steps)
        assert all(("mfu" in h and "mfu_vision" in h) == (name == "packed") for h in steps)
        finals[name] = next(h for h in state["log_history"] if "train_runtime" in h)
        assert finals[name]["throughput_samples"] == n_samples
        assert 0 <= finals[name]["throughput_padding_fraction"] < 1
    assert "throughput_mfu" in finals["packed"] and "throughput_mfu" not in finals["padded"]
    # the same samples, packed or not: the same real and image tokens
    assert finals["packed"]["throughput_real_tokens"] == finals["padded"]["throughput_real_tokens"]
    assert finals["packed"]["throughput_image_token_share"] == finals["padded"]["throughput_image_token_share"]
    # seeded order and packs: deterministic; packs of several samples waste fewer positions
    assert finals["packed"]["throughput_padding_fraction"] <= finals["padded"]["throughput_padding_fraction"]
    assert sum(line.startswith("[throughput] ") for line in capsys.readouterr().out.splitlines()) == 2
