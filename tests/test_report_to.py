"""``--report_to tensorboard``: the auxiliary losses, every learning-rate group, the throughput fields and
the validation metrics land in the event file (read back with TensorBoard's own reader)."""

from __future__ import annotations

import sys

import pytest
from helpers_data import write_shapes_dataset

pytest.importorskip("tensorboard")


def _scalars(logdir) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(logdir.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {logdir}"
    out: dict[str, list[float]] = {}
    for f in files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return out


def test_tensorboard_event_file_has_aux_losses_lr_groups_and_throughput(tmp_path, tiny_llama, tiny_clip,
                                                                        monkeypatch):
    from llava.train.train import train

    data = write_shapes_dataset(tmp_path / "data", n=8, text_only=2)
    logdir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logdir))  # transformers 5: the event files' folder
    monkeypatch.setattr(sys, "argv", [
        "train.py", "--model_name_or_path", tiny_llama, "--vision_tower", tiny_clip, "--version", "v1",
        "--mm_use_im_patch_token", "False", "--data_path", str(data.finetune_json), "--image_folder",
        str(data.image_folder), "--output_dir", str(tmp_path / "out"), "--use_cpu", "True",
        "--per_device_train_batch_size", "2", "--save_strategy", "no", "--dataloader_num_workers", "0",
        "--model_max_length", "256", "--logging_steps", "1", "--report_to", "tensorboard",
        "--mm_cosine_loss", "constrain", "--mm_projector_lr", "1e-3", "--learning_rate", "2e-4",
        "--eval_data_path", str(data.finetune_json), "--eval_strategy", "steps", "--eval_steps", "2"])
    train()
    scalars = _scalars(logdir)
    for tag in ("train/loss", "train/loss_tp", "train/loss_cos", "train/loss_cos_weighted", "train/mm_cosine_lambda",
                "train/learning_rate", "train/learning_rate_projector", "train/tokens_per_second",
                "train/samples_per_second", "train/padding_fraction", "train/image_token_share", "train/accuracy",
                "eval/loss", "eval/accuracy", "eval/loss_cos", "eval/loss_cos_weighted", "eval/tokens"):
        assert tag in scalars and scalars[tag], (tag, sorted(scalars))
    assert max(scalars["train/learning_rate_projector"]) > max(scalars["train/learning_rate"])  # 1e-3 vs 2e-4
    assert all(0 <= v < 1 for v in scalars["train/padding_fraction"])
