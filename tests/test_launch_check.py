"""Bad images found at launch, before any weights load (issue 26, cases 6 and 12-14): missing, outside the folder
(``..``, absolute, a symlink leading out), unreadable, a decompression bomb by its header; ``--image_folder .``;
transparency composited onto the pad colour; a sample that goes bad after the launch stops with one line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from llava.data.launch_check import check_images, problems_summary

GOOD_TURNS = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A square."}]


def _folder(tmp_path: Path) -> tuple[Path, list[dict]]:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), (0, 128, 255)).save(images / "good.png")
    Image.new("RGB", (200, 100), (0, 0, 0)).save(images / "big.png")  # 20000 pixels: over a 10000 limit
    (images / "junk.png").write_bytes(b"this is not an image")
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    os.symlink(outside, images / "link.png")
    names = {"g": "good.png", "m": "missing.png", "up": "../secret.png", "abs": str(outside), "ln": "link.png",
             "bomb": "big.png", "junk": "junk.png", "g2": "good.png"}
    records = [{"id": k, "image": v, "conversations": GOOD_TURNS} for k, v in names.items()]
    text_only = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]
    records.insert(2, {"id": "text", "conversations": text_only})
    return images, records


EXPECTED = {"m": "missing_image", "up": "image_outside_folder", "abs": "image_outside_folder",
            "ln": "image_outside_folder", "bomb": "image_too_large", "junk": "unreadable_image"}


@pytest.mark.parametrize("workers", [1, 4])
def test_every_bad_image_by_index_and_category(tmp_path, workers):
    images, records = _folder(tmp_path)
    found = check_images(records, str(images), max_pixels=10_000, workers=workers)
    assert {p.sample_id: p.category for p in found} == EXPECTED
    assert [p.index for p in found] == sorted(p.index for p in found)
    assert all(records[p.index]["id"] == p.sample_id for p in found)
    assert check_images(records, str(images), max_pixels=None, workers=workers)[-1].category == "unreadable_image"
    assert "bomb" not in {p.sample_id for p in check_images(records, str(images), max_pixels=None)}
    allowed = {p.sample_id for p in check_images(records, str(images), 10_000, allow_absolute=True)}
    assert allowed == {"m", "bomb", "junk"}  # the flag accepts paths outside the folder, nothing else


def test_relative_and_dot_image_folders_work(tmp_path, monkeypatch):
    images, records = _folder(tmp_path)
    good = [r for r in records if r.get("image") == "good.png"]
    monkeypatch.chdir(images)
    assert check_images(good, ".", max_pixels=None) == []
    monkeypatch.chdir(tmp_path)
    assert check_images(good, "images", max_pixels=None) == []
    assert [p.sample_id for p in check_images(records, "images", None) if p.sample_id == "ln"] == ["ln"]


def test_summary_is_one_line_per_category_with_first_ids(tmp_path):
    images, records = _folder(tmp_path)
    text = problems_summary(check_images(records, str(images), 10_000), "train.json")
    lines = text.splitlines()
    assert lines[0].startswith("6 sample(s) in train.json have a bad image; fix them")
    assert "--skip_bad_samples True" in lines[0]
    assert lines[1].startswith("missing_image: 1 sample(s): 'm' (index 1); first: image file not found:")
    assert lines[2].startswith("image_outside_folder: 3 sample(s): 'up' (index 3), 'abs' (index 4), 'ln' (index 5)")
    assert {line.split(":")[0] for line in lines[1:]} == set(EXPECTED.values()) and len(lines) == 5


def _train_argv(tiny_llama: str, tiny_clip: str, data: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return ["train.py", "--model_name_or_path", tiny_llama, "--vision_tower", tiny_clip, "--data_path", str(data),
            "--image_folder", str(images), "--output_dir", str(out), "--use_cpu", "True", "--report_to", "none",
            "--max_image_pixels", "10000", *extra]


def test_train_stops_at_launch_before_weights_load(tmp_path, tiny_llama, tiny_clip, monkeypatch, capfd):
    # capfd, not capsys: train() sets up logging handlers on sys.stderr, which capsys would close after the test
    import llava.train.train as train_mod

    images, records = _folder(tmp_path)
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the launch check stopped the run")

    monkeypatch.setattr(train_mod, "load_model", no_weights)
    monkeypatch.setattr(sys, "argv", _train_argv(tiny_llama, tiny_clip, data, images, tmp_path / "out"))
    with pytest.raises(SystemExit) as err:
        train_mod.train()
    assert err.value.code == 2
    lines = [ln for ln in capfd.readouterr().err.splitlines() if not ln.startswith("[")]
    assert lines[0] == (f"error: 6 sample(s) in {data} have a bad image; fix them (python -m llava.data.doctor "
                        "lists them all) or pass --skip_bad_samples True to skip and list them in "
                        "skipped_samples.json"), lines
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "missing_image", "image_outside_folder", "image_too_large", "unreadable_image"], lines


def _dataset(tmp_path: Path, tokenizer, tiny_clip: str, records: list[dict], images: Path, **kw):
    from transformers import CLIPImageProcessorPil

    from llava.data.dataset import LazySupervisedDataset

    data = tmp_path / "d.json"
    data.write_text(json.dumps(records))
    args = SimpleNamespace(image_folder=str(images), image_aspect_ratio="pad", is_multimodal=True,
                           image_processor=CLIPImageProcessorPil.from_pretrained(tiny_clip), conv_version="v1",
                           num_image_tokens=16, **kw)
    tokenizer.model_max_length = 256
    return LazySupervisedDataset(str(data), tokenizer, args)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_onto_the_pad_colour(tmp_path, llama_tokenizer, tiny_clip, mode):
    from llava.mm_utils import background_color_for

    images = tmp_path / "images"
    images.mkdir()
    if mode == "P":
        clear = Image.new("P", (16, 8), 0)
        clear.putpalette([255, 0, 0] * 256)
        clear.save(images / "clear.png", transparency=0)
    else:
        Image.new(mode, (16, 8), (255, 0, 0, 0) if mode == "RGBA" else (255, 0)).save(images / "clear.png")
    dataset = _dataset(tmp_path, llama_tokenizer, tiny_clip, [{"id": "c", "image": "clear.png",
                                                               "conversations": GOOD_TURNS}], images)
    pad = background_color_for(dataset.image_processor)
    Image.new("RGB", (16, 16), pad).save(images / "solid.png")  # what a fully transparent image must become
    solid = _dataset(tmp_path, llama_tokenizer, tiny_clip, [{"id": "s", "image": "solid.png",
                                                             "conversations": GOOD_TURNS}], images)
    assert torch.allclose(dataset[0]["image"], solid[0]["image"], atol=1e-2)


def test_a_sample_that_goes_bad_after_launch_is_one_located_error(tmp_path, llama_tokenizer, tiny_clip):
    images, records = _folder(tmp_path)
    good = [r for r in records if r.get("image") == "good.png"]
    dataset = _dataset(tmp_path, llama_tokenizer, tiny_clip, good, images, skip_bad_samples=False)
    assert dataset.fetch_failure() is None
    dataset[1]
    (images / "good.png").write_bytes((images / "junk.png").read_bytes())  # truncated/overwritten since launch
    with pytest.raises(ValueError):
        dataset[1]
    err = dataset.fetch_failure()
    assert err is not None and err.category == "unreadable_image"
    assert "sample id='g2' (index 1)" in str(err) and str(images / "good.png") in str(err)


def test_a_relaunch_reads_only_the_headers_that_changed(tmp_path, monkeypatch):
    from llava.data import launch_check as lc

    images, records = _folder(tmp_path)
    key = lc.header_cache_key(str(images), 10_000, False)
    cache_file = str(tmp_path / "out" / "image_headers.json")
    first = lc.HeaderCache(lc.read_header_cache(cache_file, key))
    found = check_images(records, str(images), 10_000, cache=first)
    (tmp_path / "out").mkdir()
    lc.write_header_cache(cache_file, key, first.passed)
    assert sorted(first.passed) == [str(images / "good.png")]  # bad files are never remembered

    opened = []
    real = lc._header_problem
    monkeypatch.setattr(lc, "_header_problem", lambda path, m: opened.append(path) or real(path, m))
    again = check_images(records, str(images), 10_000, cache=lc.HeaderCache(lc.read_header_cache(cache_file, key)))
    assert again == found and str(images / "good.png") not in opened  # unchanged: not re-read
    Image.new("RGB", (300, 300)).save(images / "good.png")  # edited since: read again, now too large
    third = check_images(records, str(images), 10_000, cache=lc.HeaderCache(lc.read_header_cache(cache_file, key)))
    assert {p.sample_id for p in third if p.category == "image_too_large"} == {"bomb", "g", "g2"}
    other = lc.header_cache_key(str(images), 20_000, False)  # another limit: the cache does not apply
    assert lc.read_header_cache(cache_file, other) == {}
