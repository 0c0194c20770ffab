"""The memory-mapped data store answers exactly what the JSON path answers (issue 28)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from llava.data import store as store_mod
from llava.data.dataset import DataFileError, LazySupervisedDataset, load_data_file
from llava.data.sample_check import first_problem
from llava.data.store import SampleStore, _stream_json_list, file_sha256, open_store

CORPUS = [
    {"id": "img-1", "image": "a/b.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                                            {"from": "gpt", "value": "A red   circle."}]},
    {"id": 7, "conversations": [{"from": "human", "value": "Text only, über naïve — 漢字 😀"},
                                {"from": "gpt", "value": "Sure.\n\tTabs and \"quotes\" and \\ backslashes"}]},
    {"id": "multi", "image": "c.jpg", "model": "x", "extra": {"nested": [1, 2.5, None, True]},
     "conversations": [{"from": "human", "value": "<image>\nq1"}, {"from": "gpt", "value": "a1"},
                       {"from": "human", "value": "q2 with more words"}, {"from": "gpt", "value": "a2"}]},
    {"id": "no-conv", "image": None},
    {"id": "empty", "conversations": []},
    {"conversations": [{"from": "human", "value": 3}, "not a dict"]},
    ["not", "a", "dict"],
    12345678901234567890,
    "a string sample",
]


def _write(path: Path, records: list, style: str) -> Path:
    if style == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) + "\n", encoding="utf-8")
    elif style == "indented":
        path.write_text(json.dumps(records, indent=4, ensure_ascii=False), encoding="utf-8")
    else:  # compact, ASCII escapes, no whitespace at all
        path.write_text(json.dumps(records, separators=(",", ":")), encoding="utf-8")
    return path


@pytest.mark.parametrize("style", ["indented", "compact", "jsonl"])
def test_store_equals_the_json_path_for_every_field(tmp_path: Path, style: str) -> None:
    data = _write(tmp_path / ("data.jsonl" if style == "jsonl" else "data.json"), CORPUS, style)
    store = open_store(str(data), tmp_path / "cache")
    plain = load_data_file(str(data))
    assert len(store) == len(plain) == len(CORPUS)
    assert [store[i] for i in range(len(store))] == plain == CORPUS
    assert store[-1] == plain[-1] and store[1:3] == plain[1:3]
    with pytest.raises(IndexError):
        store[len(CORPUS)]
    assert store.sha256 == file_sha256(data)
    ds_args = SimpleNamespace(is_multimodal=True, image_processor=object(), image_folder=str(tmp_path))
    dataset = LazySupervisedDataset(str(data), tokenizer=None, data_args=ds_args, list_data_dict=plain)
    assert store.lengths() == dataset.lengths  # what --group_by_modality_length and the length sampler read
    assert store.modality_lengths() == dataset.modality_lengths
    # the structural-problem column gives the JSON path's statuses and launch error (skip and no-skip alike)
    skipping = SimpleNamespace(**vars(ds_args), skip_bad_samples=True)
    on_json = LazySupervisedDataset(str(data), tokenizer=None, data_args=skipping, list_data_dict=plain)
    on_store = LazySupervisedDataset(str(data), tokenizer=None, data_args=skipping, list_data_dict=store)
    assert on_store.status_record() == on_json.status_record() and len(on_json.status_record()) == 6
    assert first_problem(store) == first_problem(plain) is not None


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_streaming_survives_every_chunk_boundary(tmp_path: Path, chunk: int) -> None:
    data = _write(tmp_path / "data.json", CORPUS + [1.5e300, -0.0, 100, [], {}, "x" * 50], "indented")
    assert list(_stream_json_list(str(data), chunk=chunk)) == json.loads(data.read_text())


@pytest.mark.parametrize("text", ['[{"id": 1}, {"id": 2,}]', '[{"id": 1} {"id": 2}]', '[{"id": 1}', '{"id": 1}',
                                  "", "[1, 2] trailing"])
def test_malformed_files_give_the_json_path_error(tmp_path: Path, text: str) -> None:
    data = tmp_path / "bad.json"
    data.write_text(text)
    with pytest.raises(DataFileError) as plain:
        load_data_file(str(data))
    with pytest.raises(DataFileError) as stored:
        open_store(str(data), tmp_path / "cache")
    assert str(stored.value) == str(plain.value)
    assert not list((tmp_path / "cache").glob("*/meta.json"))  # nothing half-built is left to be trusted


def test_an_edited_file_gets_a_new_store_and_an_unchanged_one_is_not_hashed_again(tmp_path: Path, monkeypatch,
                                                                                   caplog) -> None:
    data = _write(tmp_path / "data.json", CORPUS[:3], "indented")
    first = open_store(str(data), tmp_path / "cache")
    hashed = []
    real_sha = store_mod.file_sha256
    monkeypatch.setattr(store_mod, "file_sha256", lambda p: hashed.append(p) or real_sha(p))
    again = open_store(str(data), tmp_path / "cache")
    assert again.folder == first.folder and hashed == []  # size + mtime match the store's record: no hashing
    edited = CORPUS[:2] + [{"id": "new", "conversations": []}]
    _write(data, edited, "indented")
    os.utime(data, ns=(first.meta["mtime_ns"] + 10**9, first.meta["mtime_ns"] + 10**9))
    with caplog.at_level(logging.INFO, logger="llava.data.store"):
        third = open_store(str(data), tmp_path / "cache")
    assert hashed and third.folder != first.folder and third.sha256 == real_sha(data)
    assert [third[i] for i in range(len(third))] == edited
    assert any("changed" in r.getMessage() and "converting it again" in r.getMessage() for r in caplog.records)
    assert [first[i] for i in range(len(first))] == CORPUS[:3]  # the old store is intact


def test_incomplete_or_truncated_stores_are_never_trusted(tmp_path: Path) -> None:
    data = _write(tmp_path / "data.json", CORPUS[:3], "compact")
    cache = tmp_path / "cache"
    sha = file_sha256(data)
    (cache / sha).mkdir(parents=True)
    (cache / sha / "samples.bin").write_bytes(b"garbage")  # a builder killed before meta.json
    store = open_store(str(data), cache)
    assert [store[i] for i in range(len(store))] == CORPUS[:3]
    blob = cache / sha / "samples.bin"
    blob.write_bytes(blob.read_bytes()[:-5])
    with pytest.raises(DataFileError, match="truncated"):
        SampleStore(cache / sha)


def test_concurrent_ranks_build_it_once(tmp_path: Path) -> None:
    data = _write(tmp_path / "data.json", CORPUS * 200, "indented")
    code = ("import sys; from llava.data.store import open_store; s = open_store(sys.argv[1], sys.argv[2]); "
            "print(s.folder, len(s), s[3]['id'])")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(data), str(tmp_path / "cache")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len({o for o, _ in outs}) == 1 and outs[0][0].split()[1:] == [str(len(CORPUS) * 200), "no-conv"]
    built = [e for e in (tmp_path / "cache").iterdir() if e.is_dir()]
    assert len(built) == 1 and (built[0] / "meta.json").is_file()  # one store, no temporary folder left
