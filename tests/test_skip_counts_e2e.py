"""Skip counts that add up: 2 DeepSpeed processes, bad samples met by both ranks over 2 epochs, each
counted once; a run killed after a checkpoint and resumed reports the same counts as an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_helpers import _kill_once_saved, _run, _start
from helpers_data import write_shapes_dataset

pytestmark = pytest.mark.slow

EXPECTED = "skipped 8 bad samples: malformed_sample=3, missing_image=3, image_outside_folder=2"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama, tiny_clip):
    root = tmp_path_factory.mktemp("skips")
    data = write_shapes_dataset(root / "data", n=24, text_only=0)
    good = json.loads(Path(data.pretrain_json).read_text())
    bad = ([{"id": f"missing{i}", "image": f"nope{i}.png", "conversations": good[0]["conversations"]} for i in range(3)]
           + [{"id": f"out{i}", "image": f"../out{i}.png", "conversations": good[0]["conversations"]}
              for i in range(2)]
           + [{"id": f"null{i}", "image": "000.png", "conversations": [{"from": "human", "value": "<image>"},
                                                                       {"from": "gpt", "value": None}]}
              for i in range(3)])
    records = good[:]
    for k, sample in enumerate(bad):  # spread over the file, so both ranks meet some
        records.insert(3 * k + 1, sample)
    path = root / "mixed.json"
    path.write_text(json.dumps(records))
    env = dict(MODEL_NAME=tiny_llama, VISION_TOWER=tiny_clip, IMAGE_FOLDER=data.image_folder, DATA_PATH=str(path),
               EPOCHS=2, LR=1e-3, BATCH_SIZE=2)
    return root, env


def _report(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("skipped ")]


def test_counts_once_across_ranks_and_resumes(setup):
    root, env = setup
    log = _run("pretrain.sh", root / "straight.log", "--skip_bad_samples", "True", OUTPUT_DIR=root / "straight",
               SAVE_STEPS=100000, **env)
    assert _report(log) == [EXPECTED], _report(log)

    out = root / "resumed"
    proc = _start("pretrain.sh", root / "killed.log", "--skip_bad_samples", "True", OUTPUT_DIR=out, SAVE_STEPS=3,
                  **env)
    _kill_once_saved(proc, out / "checkpoint-3" / "llava_manifest.json", root / "killed.log", poll_s=0.1)
    assert json.loads((out / "checkpoint-3" / "skipped_samples.json").read_text())  # counts travel in it
    log = _run("pretrain.sh", root / "resumed.log", "--skip_bad_samples", "True", OUTPUT_DIR=out, SAVE_STEPS=3,
               **env)
    assert "resuming from" in log and _report(log) == [EXPECTED], _report(log)
