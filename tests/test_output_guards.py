"""One run per output folder, and a full disk during a save: one line each, no checkpoint lost (issue 26 rows 9, 10).

Through the real ``train()``: a second run on an ``--output_dir`` whose lock a live process holds is refused
before anything is touched; a lock left by a dead process is taken over with a warning; a save that fills the
disk (a real 1.5-checkpoint tmpfs, root only) ends in one line naming the folder, free and needed bytes, and
the previous checkpoint, which still passes the resume gate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers_data import write_shapes_dataset

from llava.train.checkpoint_trust import verify_checkpoint, write_manifest
from llava.train.usage import HEADER_CACHE_FILE
from llava.utils.run_lock import LOCK_NAME, OutputDirLockedError, acquire_lock, release_lock


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("guard_data"), n=8)


def _argv(out: Path, shapes, tiny_llama: str, tiny_clip: str, steps: int = 6) -> list[str]:
    return ["train.py", "--model_name_or_path", tiny_llama, "--vision_tower", tiny_clip, "--version", "plain",
            "--tune_mm_mlp_adapter", "True", "--mm_use_im_patch_token", "False", "--data_path", shapes.pretrain_json,
            "--image_folder", shapes.image_folder, "--output_dir", str(out), "--use_cpu", "True",
            "--max_steps", str(steps), "--per_device_train_batch_size", "2", "--report_to", "none",
            "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "1", "--model_max_length", "128",
            "--seed", "0", "--dataloader_num_workers", "0"]


def _train_exit(monkeypatch: pytest.MonkeyPatch, argv: list[str], capsys: pytest.CaptureFixture,
                logged: list[str] | None = None) -> tuple[int, list]:
    from llava.train.train import train

    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        train()
    err = capsys.readouterr().err
    if logged is not None:
        logged.append(err)
    return exit_info.value.code, [x for x in err.splitlines() if x.startswith("error:")]


def _old_checkpoint(out: Path) -> Path:
    ck = out / "checkpoint-2"
    ck.mkdir(parents=True)
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (ck / "mm_projector.bin").write_bytes(b"weights")
    write_manifest(ck)
    return ck


def test_second_run_on_a_live_lock_is_refused(tmp_path: Path, shapes, tiny_llama: str, tiny_clip: str,
                                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    ck = _old_checkpoint(out)
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from llava.utils.run_lock import acquire_lock; "
                               f"acquire_lock({str(out)!r}); print('locked', flush=True); time.sleep(300)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        lock = json.loads((out / LOCK_NAME).read_text())
        code, err = _train_exit(monkeypatch, _argv(out, shapes, tiny_llama, tiny_clip), capsys)
        assert code == 2 and err == [
            f"error: {out} is in use by another run (pid {holder.pid}, started {lock['started']}; lock file "
            f"{out / LOCK_NAME}): give this run its own --output_dir or wait for that run to end"]
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid  # the holder keeps its lock
        assert {p.name: p.read_bytes() for p in ck.iterdir()} == before  # no checkpoint touched
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path, shapes, tiny_llama: str, tiny_clip: str,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    ck = _old_checkpoint(out)
    (ck / "extra.bin").write_bytes(b"planted")  # the gate refuses it: the run stops right after the lock
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"pid": dead.pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00"}
    (out / LOCK_NAME).write_text(json.dumps(stale))
    logged: list[str] = []
    code, err = _train_exit(monkeypatch, _argv(out, shapes, tiny_llama, tiny_clip), capsys, logged)
    assert code == 2 and len(err) == 1 and "extra.bin is not in llava_manifest.json" in err[0]
    assert f"taking over the stale lock {out / LOCK_NAME} (pid {dead.pid}, started {stale['started']}" in logged[0]
    assert not (out / LOCK_NAME).exists()  # released on the way out


def test_lock_from_another_host_is_refused(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "t"}))
    with pytest.raises(OutputDirLockedError, match=rf"pid 1 on host elsewhere.*if it is dead, delete {tmp_path}"):
        acquire_lock(tmp_path)
    (tmp_path / LOCK_NAME).unlink()
    lock = acquire_lock(tmp_path)
    with pytest.raises(OutputDirLockedError, match=f"pid {os.getpid()}, started"):
        acquire_lock(tmp_path)  # this process is alive
    release_lock(lock)
    assert not lock.exists()


def _blocks(folder: Path) -> int:
    return int(subprocess.run(["du", "-s", "--block-size=1", str(folder)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


@pytest.mark.slow
def test_disk_full_during_save_is_one_line_and_keeps_the_previous_checkpoint(
        tmp_path: Path, shapes, tiny_llama: str, tiny_clip: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    from llava.train.train import train

    sized = tmp_path / "sized"
    monkeypatch.setattr(sys, "argv", _argv(sized, shapes, tiny_llama, tiny_clip, steps=2))
    train()
    size = _blocks(sized / "checkpoint-2")
    disk = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size + size // 2}", "tmpfs", str(disk)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("needs a tmpfs mount (root) to fill a real disk")
    try:
        out = disk / "out"
        capsys.readouterr()
        code, err = _train_exit(monkeypatch, _argv(out, shapes, tiny_llama, tiny_clip, steps=6), capsys)
        assert code == 2 and len(err) == 1, err
        assert re.fullmatch(
            rf"error: disk full while saving {out / 'checkpoint-4'}: \d+ bytes free in {out}, about \d+ needed "
            rf"\(the size of one checkpoint\); the previous checkpoint {out / 'checkpoint-2'} is intact \(rerun "
            r"after freeing space to resume from it\)", err[0]), err
        verify_checkpoint(out / "checkpoint-2")  # complete and untouched: resume can use it
        # the unfinished one removed, lock released (the launch's image-header cache stays: it is not a checkpoint)
        assert sorted(os.listdir(out)) == ["checkpoint-2", HEADER_CACHE_FILE]
    finally:
        subprocess.run(["umount", str(disk)], check=False)
        shutil.rmtree(disk, ignore_errors=True)
