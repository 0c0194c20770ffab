"""Resume falls back past a broken newest checkpoint and ends bit-identical to an uninterrupted run.

Stage 1 (projector only, no DeepSpeed) for 6 steps with checkpoints at 2 and 4 (and 6); for each way a save
can break (empty trainer_state.json, a weight file missing, a half-written temp file), the run is cut back
to checkpoints 2 and 4, checkpoint 4 is broken, and the rerun resumes from checkpoint 2.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from helpers_data import write_shapes_dataset

pytestmark = pytest.mark.slow

BREAKS = {
    "empty trainer_state.json": lambda ck: (ck / "trainer_state.json").write_text(""),
    "missing weight file": lambda ck: (ck / "mm_projector.bin").unlink(),
    "half-written temp file": lambda ck: (ck / "mm_projector.bin.x1y2.tmp").write_bytes(b"\x00" * 10),
}


def _train(monkeypatch: pytest.MonkeyPatch, out: Path, data, tiny_llama: str, tiny_clip: str) -> None:
    from llava.train.train import train

    monkeypatch.setattr(sys, "argv", [
        "train.py", "--model_name_or_path", tiny_llama, "--vision_tower", tiny_clip, "--version", "plain",
        "--tune_mm_mlp_adapter", "True", "--mm_use_im_patch_token", "False", "--data_path", data.pretrain_json,
        "--image_folder", data.image_folder, "--output_dir", str(out), "--use_cpu", "True", "--max_steps", "6",
        "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--report_to", "none",
        "--save_strategy", "steps", "--save_steps", "2", "--model_max_length", "128", "--seed", "0",
        "--dataloader_num_workers", "0"])
    train()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_llama, tiny_clip):
    root = tmp_path_factory.mktemp("fallback")
    data = write_shapes_dataset(root / "data", n=8)
    out = root / "straight"
    with pytest.MonkeyPatch.context() as mp:
        _train(mp, out, data, tiny_llama, tiny_clip)
    return root, data, out


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_broken_newest_checkpoint_falls_back_bit_exact(case, uninterrupted, tiny_llama, tiny_clip, monkeypatch,
                                                      capfd) -> None:
    root, data, straight = uninterrupted
    out = root / case.replace(" ", "_")
    out.mkdir()
    for step in (2, 4):
        shutil.copytree(straight / f"checkpoint-{step}", out / f"checkpoint-{step}")
    BREAKS[case](out / "checkpoint-4")
    _train(monkeypatch, out, data, tiny_llama, tiny_clip)
    logged = capfd.readouterr().err  # train() configures logging to stderr
    assert f"not resuming from {out / 'checkpoint-4'}" in logged
    assert f"resuming from {out / 'checkpoint-2'}" in logged
    assert (out / "mm_projector.bin").read_bytes() == (straight / "mm_projector.bin").read_bytes()
