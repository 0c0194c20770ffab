"""``learning_rate_projector`` in the logs is the rate the optimizer step applied to the projector groups, like the
Trainer's ``learning_rate`` (both read before the scheduler moves on), checked against an independent schedule."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from helpers_data import write_shapes_dataset
from transformers import get_scheduler

BASE_LR, PROJECTOR_LR, STEPS, WARMUP = 2e-4, 1e-3, 4, 2


def _applied_rates(base: float) -> list[float]:
    """The rate each of the STEPS optimizer steps uses under linear warmup/decay (torch's scheduler, by hand)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=WARMUP, num_training_steps=STEPS)
    rates = []
    for _ in range(STEPS):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_logged_projector_rate_is_the_applied_rate(tmp_path, tiny_llama, tiny_clip, monkeypatch):
    from llava.train.train import train

    data = write_shapes_dataset(tmp_path / "data", n=8, text_only=0)
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "train.py", "--model_name_or_path", tiny_llama, "--vision_tower", tiny_clip, "--version", "v1",
        "--mm_use_im_patch_token", "False", "--mm_projector_type", "mlp2x_gelu", "--data_path",
        str(data.finetune_json), "--image_folder", str(data.image_folder), "--output_dir", str(out), "--use_cpu",
        "True", "--per_device_train_batch_size", "2", "--max_steps", str(STEPS), "--save_strategy", "no",
        "--dataloader_num_workers", "0", "--model_max_length", "256", "--logging_steps", "1", "--report_to", "none",
        "--lr_scheduler_type", "linear", "--warmup_steps", str(WARMUP), "--learning_rate", str(BASE_LR),
        "--mm_projector_lr", str(PROJECTOR_LR), "--seed", "0"])
    train()
    steps = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert [e["step"] for e in steps] == list(range(1, STEPS + 1))
    assert [e["learning_rate"] for e in steps] == pytest.approx(_applied_rates(BASE_LR), rel=1e-9, abs=0)
    assert [e["learning_rate_projector"] for e in steps] == pytest.approx(_applied_rates(PROJECTOR_LR), rel=1e-9,
                                                                          abs=0)
    # warmup: step 1 applies 0, step 2 half the rate (a log one step ahead would show 1/2 and 1)
    assert (steps[0]["learning_rate_projector"], steps[1]["learning_rate_projector"]) == (0.0, PROJECTOR_LR / WARMUP)
