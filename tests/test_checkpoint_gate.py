"""The resume gate covers exactly what resume reads: crafted ``latest`` tags, symlinks and unlisted files.

Each crafted checkpoint (issue 26 rows 1-3, plus the other paths an attacker with write access to
``--output_dir`` controls) goes through the real automatic resume (``train()`` finds the newest checkpoint in
``--output_dir`` and checks it before any weights load) and through ``python -m llava.train.checkpoint_trust``:
both refuse with one line naming the file, and the payload's marker file is never created.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers_data import write_shapes_dataset

from llava.train.checkpoint_check import MANIFEST, layout_problem
from llava.train.checkpoint_trust import main as trust_main
from llava.train.checkpoint_trust import verify_checkpoint, write_manifest

STATES = "mp_rank_00_model_states.pt"


class Payload:
    """Unpickling this touches ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _saved(out: Path, step: int = 4) -> Path:
    """A checkpoint shaped like a DeepSpeed one from our trainer (manifest written last)."""
    ck = out / f"checkpoint-{step}"
    (ck / f"global_step{step}").mkdir(parents=True)
    torch.save({"module": {"w": torch.ones(2)}}, ck / f"global_step{step}" / STATES)
    torch.save({"python": 1}, ck / "rng_state.pth")
    (ck / "latest").write_text(f"global_step{step}")
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": step, "best_model_checkpoint": None}))
    write_manifest(ck)
    return ck


def _payload_folder(root: Path) -> Path:
    """A folder outside the checkpoint holding model states that run code when unpickled."""
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    torch.save({"module": Payload(root / "PWNED")}, elsewhere / STATES)
    return elsewhere


def _latest_absolute(ck: Path, elsewhere: Path) -> str:
    (ck / "latest").write_text(str(elsewhere))
    write_manifest(ck)  # the attacker rewrites the manifest too
    return f"{ck / 'latest'} names {str(elsewhere)!r}, not the plain name of a folder inside the checkpoint"


def _latest_dotdot(ck: Path, elsewhere: Path) -> str:
    (ck / "latest").write_text("../../elsewhere")
    write_manifest(ck)
    return f"{ck / 'latest'} names '../../elsewhere', not the plain name of a folder inside the checkpoint"


def _latest_unlisted(ck: Path, elsewhere: Path) -> str:
    manifest = json.loads((ck / MANIFEST).read_text())
    del manifest["sha256"]["latest"]
    (ck / MANIFEST).write_text(json.dumps(manifest))
    return f"{ck / 'latest'} is not in {MANIFEST} (added after the save)"


def _latest_edited(ck: Path, elsewhere: Path) -> str:
    (ck / "global_step9").mkdir()
    torch.save({"module": Payload(elsewhere.parent / "PWNED")}, ck / "global_step9" / STATES)
    (ck / "latest").write_text("global_step9")
    return f"{ck / 'latest'} does not match its SHA-256 in {MANIFEST}"


def _tag_symlink(ck: Path, elsewhere: Path) -> str:
    for p in (ck / "global_step4").iterdir():
        p.unlink()
    (ck / "global_step4").rmdir()
    (ck / "global_step4").symlink_to(elsewhere, target_is_directory=True)
    return f"{ck / 'global_step4'} is a symlink (to {elsewhere}); a checkpoint holds none"


def _file_symlink(ck: Path, elsewhere: Path) -> str:
    (ck / "rng_state.pth").unlink()
    (ck / "rng_state.pth").symlink_to(elsewhere / STATES)
    return f"{ck / 'rng_state.pth'} is a symlink (to {elsewhere / STATES}); a checkpoint holds none"


def _best_elsewhere(ck: Path, elsewhere: Path) -> str:
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 4, "best_model_checkpoint": str(elsewhere)}))
    write_manifest(ck)
    return f"{ck / 'trainer_state.json'} names best_model_checkpoint {str(elsewhere)!r}, which is not a checkpoint-N"


def _manifest_escapes(ck: Path, elsewhere: Path) -> str:
    manifest = json.loads((ck / MANIFEST).read_text())
    manifest["sha256"]["../../elsewhere/" + STATES] = "0" * 64
    (ck / MANIFEST).write_text(json.dumps(manifest))
    return f"lists '../../elsewhere/{STATES}', a path outside the checkpoint"


CRAFTS: dict[str, Callable[[Path, Path], str]] = {
    "row 1: latest absolute": _latest_absolute, "row 1: latest ../": _latest_dotdot,
    "row 2: latest unlisted": _latest_unlisted, "row 2: latest edited": _latest_edited,
    "row 3: global_step symlink": _tag_symlink, "file symlink": _file_symlink,
    "best_model_checkpoint elsewhere": _best_elsewhere, "manifest lists a path outside": _manifest_escapes,
}


def test_payload_runs_when_unpickled(tmp_path: Path) -> None:
    """The payload is real: a full unpickle (what DeepSpeed does) creates the marker."""
    elsewhere = _payload_folder(tmp_path)
    torch.load(elsewhere / STATES, weights_only=False)
    assert (tmp_path / "PWNED").exists()


def test_clean_checkpoint_passes_layout_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = _saved(tmp_path / "out")
    assert layout_problem(ck) is None
    verify_checkpoint(ck)
    assert trust_main([str(tmp_path / "out")]) == 0
    assert f"ok: {ck} matches" in capsys.readouterr().out


@pytest.mark.parametrize("case", sorted(CRAFTS))
def test_crafted_checkpoint_refused_by_cli(tmp_path: Path, case: str, capsys: pytest.CaptureFixture) -> None:
    ck = _saved(tmp_path / "out")
    expected = CRAFTS[case](ck, _payload_folder(tmp_path))
    for target in (ck, tmp_path / "out"):  # the folder itself, or the output folder (resume's choice)
        assert trust_main([str(target)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("refused: ") and expected in err, err
    assert not (tmp_path / "PWNED").exists()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("gate_data"), n=4)


@pytest.mark.parametrize("case", sorted(CRAFTS))
def test_crafted_checkpoint_refused_by_automatic_resume(tmp_path: Path, case: str, shapes, tiny_llama: str,
                                                       tiny_clip: str, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    from llava.train.train import train

    out = tmp_path / "out"
    _saved(out, step=2)  # an older, good checkpoint: resume still refuses the newest rather than skip it
    ck = _saved(out)
    expected = CRAFTS[case](ck, _payload_folder(tmp_path))
    monkeypatch.setattr(sys, "argv", [
        "train.py", "--model_name_or_path", tiny_llama, "--vision_tower", tiny_clip, "--version", "plain",
        "--tune_mm_mlp_adapter", "True", "--data_path", shapes.pretrain_json, "--image_folder", shapes.image_folder,
        "--output_dir", str(out), "--use_cpu", "True", "--max_steps", "6", "--report_to", "none",
        "--save_steps", "2", "--per_device_train_batch_size", "2"])
    with pytest.raises(SystemExit) as exit_info:
        train()
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2
    assert len(err) == 1 and err[0].startswith("error: not resuming: ") and expected in err[0], err
    assert not (tmp_path / "PWNED").exists()
    assert sorted(os.listdir(out)) == ["checkpoint-2", "checkpoint-4"]  # nothing deleted, lock released
