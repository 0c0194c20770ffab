"""No moment of a save loses progress: SIGKILL in every phase of a save, resume, end bit-identical.

Stage 1 (projector only, in-process trainer, no DeepSpeed) for 6 steps, a checkpoint every 2 steps,
``--save_total_limit 1``. A real ``python -m llava.train.train`` subprocess is SIGKILLed
(``LLAVA_TEST_KILL_AT=<phase>@4``, :mod:`llava.train.save_hook`) while saving checkpoint-4: after the model
files, after the optimizer and scheduler, after trainer_state.json, with the manifest half-written, and during
the rotation that removes checkpoint-2. The rerun resumes automatically (from checkpoint-2, or from checkpoint-4
once its manifest is on disk) and its final projector is byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_data import write_shapes_dataset

from llava.train.checkpoint_check import MANIFEST
from llava.train.save_hook import ENV, PHASES

pytestmark = pytest.mark.slow


def _argv(out: Path, data, tiny_llama: str, tiny_clip: str) -> list[str]:
    return ["--model_name_or_path", tiny_llama, "--vision_tower", tiny_clip, "--version", "plain",
            "--tune_mm_mlp_adapter", "True", "--mm_use_im_patch_token", "False", "--data_path", data.pretrain_json,
            "--image_folder", data.image_folder, "--output_dir", str(out), "--use_cpu", "True", "--max_steps", "6",
            "--per_device_train_batch_size", "2", "--learning_rate", "1e-2", "--report_to", "none",
            "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "1", "--model_max_length", "128",
            "--seed", "0", "--dataloader_num_workers", "0"]


def _train_in_process(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    from llava.train.train import train

    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    train()


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_llama, tiny_clip):
    root = tmp_path_factory.mktemp("save_kill")
    data = write_shapes_dataset(root / "data", n=8)
    out = root / "straight"
    with pytest.MonkeyPatch.context() as mp:
        _train_in_process(mp, _argv(out, data, tiny_llama, tiny_clip))
    return root, data, out


@pytest.mark.parametrize("phase", PHASES)
def test_kill_in_save_phase_then_resume_is_bit_identical(phase: str, straight, tiny_llama: str, tiny_clip: str,
                                                         monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    root, data, reference = straight
    out = root / phase
    argv = _argv(out, data, tiny_llama, tiny_clip)
    # The subprocess computes with as many threads as this process's reference run: CPU reductions split over a
    # different thread count round differently, which is not what this test is about.
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               **{ENV: f"{phase}@4"})
    log = root / f"{phase}.log"
    with log.open("w") as f:
        rc = subprocess.run([sys.executable, "-m", "llava.train.train", *argv], env=env, stdout=f,
                            stderr=subprocess.STDOUT, timeout=600).returncode
    assert rc == -signal.SIGKILL, log.read_text()[-3000:]
    killed_late = phase == "rotation"  # checkpoint-4's manifest is on disk: rotation had begun
    assert (out / "checkpoint-4" / MANIFEST).is_file() == killed_late
    if not killed_late:  # the previous checkpoint survives every kill before the new one is complete
        assert (out / "checkpoint-2" / MANIFEST).is_file()
    capfd.readouterr()
    _train_in_process(monkeypatch, argv)
    logged = capfd.readouterr().err
    assert f"resuming from {out / ('checkpoint-4' if killed_late else 'checkpoint-2')}" in logged, logged[-3000:]
    assert (out / "mm_projector.bin").read_bytes() == (reference / "mm_projector.bin").read_bytes()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-6"]
    assert not (out / "llava_run.lock").exists()
