"""Skip counts that add up: 2 DeepSpeed processes, bad samples met by both ranks over 2 epochs, each
counted once and named once in ``skipped_samples.json`` (index, id, category, path); the images' problems (missing,
outside the folder through ``..`` or a symlink, a decompression bomb) are found at launch, so no bad sample is ever
fetched; a run killed after a checkpoint and resumed reports the same counts and list as an uninterrupted one, and a
resume over an edited data file is refused in one line without losing the checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from e2e_helpers import _kill_once_saved, _run, _start
from helpers_data import write_shapes_dataset
from PIL import Image

pytestmark = pytest.mark.slow

EXPECTED = ("skipped 10 bad samples: malformed_sample=3, missing_image=3, image_outside_folder=3, "
            "image_too_large=1")
CATEGORIES = {**{f"missing{i}": "missing_image" for i in range(3)},
              **{f"out{i}": "image_outside_folder" for i in range(2)},
              **{f"null{i}": "malformed_sample" for i in range(3)},
              "link": "image_outside_folder", "bomb": "image_too_large"}


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
              for i in range(3)]
           + [{"id": "link", "image": "link.png", "conversations": good[0]["conversations"]},
              {"id": "bomb", "image": "bomb.png", "conversations": good[0]["conversations"]}])
    Image.new("RGB", (8, 8)).save(root / "outside.png")
    os.symlink(root / "outside.png", Path(data.image_folder) / "link.png")
    Image.new("RGB", (200, 100)).save(Path(data.image_folder) / "bomb.png")  # 20000 pixels > --max_image_pixels
    records = good[:]
    for k, sample in enumerate(bad):  # spread over the file, so both ranks meet some
        records.insert(3 * k + 1, sample)
    path = root / "mixed.json"
    path.write_text(json.dumps(records))
    env = dict(MODEL_NAME=tiny_llama, VISION_TOWER=tiny_clip, IMAGE_FOLDER=data.image_folder, DATA_PATH=str(path),
               EPOCHS=2, LR=1e-3, BATCH_SIZE=2)
    return root, env, records


FLAGS = ("--skip_bad_samples", "True", "--max_image_pixels", "10000")


def _listed(out: Path, records: list[dict], image_folder: str) -> None:
    """The output folder's skipped_samples.json names each bad sample once, with its index, category and path."""
    listed = json.loads((out / "skipped_samples.json").read_text())
    assert sorted(r["id"] for r in listed) == sorted(CATEGORIES)
    for r in listed:
        assert records[r["index"]]["id"] == r["id"] and r["category"] == CATEGORIES[r["id"]], r
        image = records[r["index"]].get("image")
        assert r["path"] == (os.path.join(image_folder, image) if isinstance(image, str) else None), r


def _report(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("skipped ")]


def test_counts_once_across_ranks_and_resumes(setup):
    root, env, records = setup
    log = _run("pretrain.sh", root / "straight.log", *FLAGS, OUTPUT_DIR=root / "straight", SAVE_STEPS=100000, **env)
    assert _report(log) == [EXPECTED], _report(log)
    assert "skipping bad sample" not in log  # every one was known before training: none was fetched
    assert f"listed in {root / 'straight' / 'skipped_samples.json'}; first ids: malformed_sample: 'null0'" in log
    _listed(root / "straight", records, env["IMAGE_FOLDER"])

    out = root / "resumed"
    proc = _start("pretrain.sh", root / "killed.log", *FLAGS, OUTPUT_DIR=out, SAVE_STEPS=3, **env)
    _kill_once_saved(proc, out / "checkpoint-3" / "llava_manifest.json", root / "killed.log", poll_s=0.1)
    assert json.loads((out / "checkpoint-3" / "skipped_samples.json").read_text())  # counts travel in it

    # the data file edited between the crash and the resume: refused in one line, the checkpoint kept
    data = Path(env["DATA_PATH"])
    original = data.read_bytes()
    data.write_text(json.dumps(records[1:] + records[:1]))
    edited = _start("pretrain.sh", root / "edited.log", *FLAGS, OUTPUT_DIR=out, SAVE_STEPS=3, **env)
    assert edited.wait(timeout=300) == 2
    errors = [line for line in (root / "edited.log").read_text().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: --data_path {data} is not the file "
                                                     f"{out / 'checkpoint-3'} was trained on (sha256 "), errors
    assert errors[0].endswith("restore that file, start a new --output_dir, or pass --allow_data_change True")
    assert (out / "checkpoint-3" / "llava_manifest.json").is_file()
    data.write_bytes(original)
    os.utime(data)  # same bytes, new mtime: the SHA-256 decides

    log = _run("pretrain.sh", root / "resumed.log", *FLAGS, OUTPUT_DIR=out, SAVE_STEPS=3, **env)
    assert "resuming from" in log and _report(log) == [EXPECTED], _report(log)
    _listed(out, records, env["IMAGE_FOLDER"])
