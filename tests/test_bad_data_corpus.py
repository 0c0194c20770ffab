"""The bad-data corpus (issue 16 cases 1-7, 17): one outcome per case, the same in training and in the doctor.

Every structurally bad sample stops a training launch before any weights load (one line naming the first
and the count, exit 2); with ``--skip_bad_samples True`` each is skipped and counted under its category;
the doctor reports each under the same category as an error. 16-bit images are scaled, not clipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from llava.data import doctor
from llava.data.supervised import make_supervised_data_module
from llava.train.arguments import DataArguments


def _turns(*values: Any) -> list[Any]:
    return [{"from": ("human", "gpt")[i % 2], "value": v} for i, v in enumerate(values)]


#: (id, sample without id, the category training and the doctor give it)
CASES: list[tuple[str, dict[str, Any], str]] = [
    ("c1-no-image", {"conversations": _turns("<image>\nWhat is it?", "a dog")}, "image_token_without_image"),
    ("c1-null-image", {"image": None, "conversations": _turns("<image>\nWhat?", "a dog")},
     "image_token_without_image"),
    ("c2-two-tokens", {"image": "good.png", "conversations": _turns("Compare <image> with <image> please", "same")},
     "too_many_image_tokens"),
    ("c3-empty-answer", {"image": "good.png", "conversations": _turns("<image>\nWhat?", "")}, "bad_conversation"),
    ("c4-gpt-first", {"image": "good.png", "conversations": [{"from": "gpt", "value": "<image>\nHello"},
                                                             *_turns("What?", "red")]}, "missing_image_token"),
    ("c5-null-value", {"image": "good.png", "conversations": _turns("<image>\nWhat?", None)}, "malformed_sample"),
    ("c5-number", {"image": "good.png", "conversations": _turns("<image>\nWhat?", 3)}, "malformed_sample"),
    ("c5-no-value", {"image": "good.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                            {"from": "gpt"}]}, "malformed_sample"),
    ("c5-string-turn", {"image": "good.png", "conversations": ["<image>\nWhat?", "red"]}, "malformed_sample"),
    ("c17-absolute", {"image": "{outside}", "conversations": _turns("<image>\nWhat?", "green")},
     "image_outside_folder"),
    ("c17-dotdot", {"image": "../outside.png", "conversations": _turns("<image>\nWhat?", "green")},
     "image_outside_folder"),
]
GOOD = [{"id": "good", "image": "good.png", "conversations": _turns("<image>\nWhat colour?", "red")},
        {"id": "c7-16bit", "image": "grey16.png", "conversations": _turns("<image>\nHow bright?", "half")},
        {"id": "text", "conversations": _turns("hi", "hello")}]
STRUCTURAL = [c for c in CASES if c[2] != "image_outside_folder"]  # known before any image is opened


@pytest.fixture()
def corpus(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(images / "good.png")
    Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16)).save(images / "grey16.png")
    Image.new("RGB", (32, 32), (0, 255, 0)).save(tmp_path / "outside.png")
    records = [dict(id=sid, **{k: (v.format(outside=tmp_path / "outside.png") if k == "image" and v else v)
                               for k, v in s.items()}) for sid, s, _ in CASES] + GOOD
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    return data, images


def _dataset(data: Path, images: Path, tokenizer: Any, processor: Any, skip: bool):
    args = DataArguments(data_path=str(data), image_folder=str(images), is_multimodal=True,
                         image_aspect_ratio="square", skip_bad_samples=skip)
    args.image_processor, args.conv_version, args.num_image_tokens = processor, "v1", 16
    return make_supervised_data_module(tokenizer, args)["train_dataset"]


@pytest.fixture(scope="module")
def processor(tiny_clip):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil.from_pretrained(tiny_clip)


def test_training_and_doctor_agree_on_every_case(corpus, llama_tokenizer, processor, tiny_llama, tmp_path) -> None:
    from llava.data.dataset import BadSampleError

    data, images = corpus
    strict = _dataset(data, images, llama_tokenizer, processor, skip=False)
    for index, (sid, _, category) in enumerate(CASES):
        with pytest.raises(BadSampleError) as err:
            strict[index]
        assert err.value.category == category and repr(sid) in str(err.value), (sid, str(err.value))
    good = {s["id"]: strict[len(CASES) + k] for k, s in enumerate(GOOD)}
    grey = good["c7-16bit"]["image"]  # 32768/65535 -> 128/255, not the clip's 255 (white)
    mean, std = processor.image_mean[0], processor.image_std[0]
    assert abs(float(grey[0].mean()) - (128 / 255 - mean) / std) < 0.02

    skipping = _dataset(data, images, llama_tokenizer, processor, skip=True)
    served = [skipping[i] for i in range(len(skipping))]
    assert all(item["input_ids"].numel() > 0 for item in served)
    expected: dict[str, int] = {}
    for _, _, category in CASES:
        expected[category] = expected.get(category, 0) + 1
    assert skipping.skip_counts() == expected

    report = tmp_path / "problems.jsonl"
    rc = doctor.main(["--data_path", str(data), "--image_folder", str(images), "--model_max_length", "256",
                      "--tokenizer", tiny_llama, "--version", "v1", "--num_image_tokens", "16", "--report",
                      str(report), "--workers", "1", "--no_progress"])
    rows = [json.loads(x) for x in report.read_text().splitlines()]
    errors = {(r["id"], r["category"]) for r in rows if r["severity"] == "error"}
    assert rc == 1 and errors == {(sid, category) for sid, _, category in CASES}, rows


def test_launch_stops_before_weights_on_the_first_bad_sample(corpus, tiny_llama, tiny_clip, tmp_path,
                                                            monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from llava.train.train import train

    data, images = corpus
    monkeypatch.setattr(sys, "argv", ["train.py", "--model_name_or_path", str(tmp_path / "never-loaded"),
                                      "--vision_tower", tiny_clip, "--data_path", str(data), "--image_folder",
                                      str(images), "--output_dir", str(tmp_path / "out"), "--use_cpu", "True"])
    with pytest.raises(SystemExit) as err:
        train()
    assert err.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    first_sid, _, first_category = STRUCTURAL[0]
    assert len(lines) == 1 and lines[0].startswith(f"error: {len(STRUCTURAL)} sample(s) in {data} cannot be "
                                                   f"trained on; the first: {first_category}: sample id="
                                                   f"'{first_sid}' (index 0)"), lines
    assert "--skip_bad_samples True" in lines[0]


def test_training_with_skip_counts_every_case(corpus, tiny_llama, tiny_clip, tmp_path,
                                              monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from llava.train.train import train

    data, images = corpus
    monkeypatch.setattr(sys, "argv", [
        "train.py", "--model_name_or_path", tiny_llama, "--vision_tower", tiny_clip, "--version", "v1",
        "--mm_use_im_patch_token", "False", "--data_path", str(data), "--image_folder", str(images),
        "--output_dir", str(tmp_path / "out"), "--use_cpu", "True", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "2", "--report_to", "none", "--save_strategy", "no",
        "--model_max_length", "128", "--skip_bad_samples", "True", "--dataloader_num_workers", "0"])
    train()
    counts: dict[str, int] = {}
    for _, _, category in CASES:
        counts[category] = counts.get(category, 0) + 1
    from llava.data.preprocess import BAD_SAMPLE_CATEGORIES

    detail = ", ".join(f"{c}={counts[c]}" for c in BAD_SAMPLE_CATEGORIES if c in counts)
    assert f"skipped {len(CASES)} bad samples: {detail}" in capsys.readouterr().out.splitlines()
