"""``--report_to wandb`` in offline mode (``WANDB_MODE=offline``, never any network): the run written to disk has
the same scalar tags as TensorBoard's event file of the same run. Skipped where ``wandb`` is not installed."""

from __future__ import annotations

import json
import struct
import sys

import pytest
from helpers_data import write_shapes_dataset
from test_report_to import _scalars

wandb = pytest.importorskip("wandb")
pytest.importorskip("tensorboard")


HEADER = b":W&B\xe1\xbe\x00"  # the transaction log's identity, magic and version
BLOCK, CHUNK_HEADER = 32768, 7  # leveldb-style log: 32 KiB blocks; chunk = crc32, length (u16), type (u8)


def _records(path) -> list[bytes]:
    """The protobuf records of a ``.wandb`` transaction log (written offline), chunks joined."""
    raw = path.read_bytes()
    assert raw.startswith(HEADER), raw[:8]
    records, pending, pos = [], b"", len(HEADER)
    while pos + CHUNK_HEADER <= len(raw):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # block padding
            pos += left
            continue
        length, kind = struct.unpack_from("<HB", raw, pos + 4)
        chunk = raw[pos + CHUNK_HEADER: pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        pending = chunk if kind in (1, 2) else pending + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            records.append(pending)
    return records


def _wandb_run(run_dir) -> tuple[dict[str, list[float]], set[str]]:
    """The offline run's numeric history values and its summary keys (its ``.wandb`` log, parsed with wandb's own
    protobuf)."""
    from wandb.proto import wandb_internal_pb2

    files = sorted(run_dir.rglob("*.wandb"))
    assert len(files) == 1, files
    out: dict[str, list[float]] = {}
    summary: set[str] = set()
    for data in _records(files[0]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "summary":
            summary |= {item.key or "/".join(item.nested_key) for item in record.summary.update}
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                value = json.loads(item.value_json)
                if isinstance(value, (int, float)):
                    out.setdefault(key, []).append(float(value))
    return out, summary


def _train(tmp_path, tiny_llama, tiny_clip, data, report_to: str, monkeypatch) -> None:
    from llava.train.train import train

    monkeypatch.setattr(sys, "argv", [
        "train.py", "--model_name_or_path", tiny_llama, "--vision_tower", tiny_clip, "--version", "v1",
        "--mm_use_im_patch_token", "False", "--data_path", str(data.finetune_json), "--image_folder",
        str(data.image_folder), "--output_dir", str(tmp_path / f"out_{report_to}"), "--use_cpu", "True",
        "--per_device_train_batch_size", "2", "--save_strategy", "no", "--dataloader_num_workers", "0",
        "--model_max_length", "256", "--logging_steps", "1", "--report_to", report_to, "--seed", "0",
        "--mm_projector_lr", "1e-3", "--learning_rate", "2e-4", "--max_steps", "3",
        "--eval_data_path", str(data.finetune_json), "--eval_strategy", "steps", "--eval_steps", "2"])
    train()


def test_offline_wandb_run_has_the_tensorboard_tags(tmp_path, tiny_llama, tiny_clip, monkeypatch):
    """The same seeded run twice, --report_to tensorboard then --report_to wandb (the flag takes one name)."""
    data = write_shapes_dataset(tmp_path / "data", n=8, text_only=2)
    for key, value in dict(WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb"), WANDB_SILENT="true",
                           WANDB_PROJECT="llava-test", TENSORBOARD_LOGGING_DIR=str(tmp_path / "tb")).items():
        monkeypatch.setenv(key, value)
    (tmp_path / "wandb").mkdir()
    _train(tmp_path, tiny_llama, tiny_clip, data, "tensorboard", monkeypatch)
    _train(tmp_path, tiny_llama, tiny_clip, data, "wandb", monkeypatch)
    wandb.finish()  # the Trainer leaves the run open (for the user's own logging): flush it to disk
    tensorboard = _scalars(tmp_path / "tb")
    history, summary = _wandb_run(tmp_path / "wandb")
    assert "train/learning_rate_projector" in tensorboard and "eval/loss" in tensorboard
    # the end-of-run values (train_runtime, total_flos, ...): TensorBoard scalars, wandb run-summary values
    final = {"train/" + key for key in summary if not key.startswith(("_", "train/", "eval/"))}
    assert {"train/train_runtime", "train/total_flos"} <= final, sorted(summary)
    missing = sorted(set(tensorboard) - set(history) - final)
    assert not missing, (missing, sorted(history))
    # wandb's own bookkeeping, and the step axis the Trainer's wandb callback adds (TensorBoard has it built in)
    assert set(history) - set(tensorboard) <= {"_runtime", "_step", "_timestamp", "train/global_step"}
    for tag in ("train/loss", "train/learning_rate_projector", "eval/loss"):
        assert history[tag] == pytest.approx(tensorboard[tag], rel=1e-5), tag
