"""Resume never trusts a broken checkpoint: each kind of half-saved folder is named and skipped."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from llava.train.checkpoint_check import checkpoint_problem, newest_complete_checkpoint


def _complete(folder: Path, step: int) -> Path:
    ck = folder / f"checkpoint-{step}"
    (ck / f"global_step{step}").mkdir(parents=True)
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (ck / "config.json").write_text("{}")
    (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-1.safetensors"}}))
    (ck / "model-1.safetensors").write_bytes(b"x" * 16)
    (ck / "latest").write_text(f"global_step{step}")
    (ck / f"global_step{step}" / "mp_rank_00_model_states.pt").write_bytes(b"x" * 16)
    return ck


BREAKS = {
    "empty trainer_state": (lambda ck: (ck / "trainer_state.json").write_text(""), "trainer_state.json does not parse"),
    "truncated json": (lambda ck: (ck / "config.json").write_text('{"a": '), "config.json does not parse"),
    "missing shard": (lambda ck: (ck / "model-1.safetensors").unlink(), "names model-1.safetensors, which is missing"),
    "empty weights": (lambda ck: (ck / "model-1.safetensors").write_bytes(b""), "model-1.safetensors is empty"),
    "temp file": (lambda ck: (ck / "mm_projector.bin.abc.tmp").write_bytes(b"x"), "half-written temp file"),
    "no trainer_state": (lambda ck: (ck / "trainer_state.json").unlink(), "trainer_state.json is missing"),
    "latest dangling": (lambda ck: (ck / "latest").write_text("global_step99"), "latest names 'global_step99'"),
}


def test_complete_checkpoint_has_no_problem(tmp_path: Path) -> None:
    assert checkpoint_problem(_complete(tmp_path, 2)) is None


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_broken_newest_falls_back_to_previous(tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture) -> None:
    _complete(tmp_path, 2)
    newest = _complete(tmp_path, 4)
    breaker, message = BREAKS[case]
    breaker(newest)
    assert message in checkpoint_problem(newest)
    with caplog.at_level(logging.WARNING, logger="llava.train"):
        assert newest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert f"not resuming from {newest}" in caplog.text and message in caplog.text


def test_no_complete_checkpoint(tmp_path: Path) -> None:
    assert newest_complete_checkpoint(tmp_path / "absent") is None
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-x").mkdir()
    assert newest_complete_checkpoint(tmp_path) is None


def _manifested(folder: Path, step: int) -> Path:
    from llava.train.checkpoint_trust import write_manifest

    ck = _complete(folder, step)
    write_manifest(ck)
    return ck


def test_rotation_deletes_only_complete_checkpoints_beyond_the_limit(tmp_path: Path) -> None:
    from llava.train.checkpoint_check import rotate_checkpoints

    for step in (2, 4):
        _manifested(tmp_path, step)
    unfinished = _complete(tmp_path, 6)  # no manifest: a save in progress or killed
    newest = _manifested(tmp_path, 8)
    (tmp_path / "checkpoint-1.deleting").mkdir()  # a rotation killed mid-delete
    deleted = rotate_checkpoints(tmp_path, 1, newest=str(newest), step=8)
    assert deleted == [str(tmp_path / "checkpoint-2"), str(tmp_path / "checkpoint-4")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-6", "checkpoint-8"]
    assert unfinished.is_dir()


def test_rotation_keeps_the_best_and_nothing_without_a_limit(tmp_path: Path) -> None:
    from llava.train.checkpoint_check import rotate_checkpoints

    cks = [_manifested(tmp_path, step) for step in (2, 4, 6)]
    assert rotate_checkpoints(tmp_path, None, newest=str(cks[-1])) == []
    assert rotate_checkpoints(tmp_path, 1, newest=str(cks[-1]), best=str(cks[0])) == [str(cks[1])]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-6"]
