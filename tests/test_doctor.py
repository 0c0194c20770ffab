"""Dataset doctor: each crafted problem is flagged with its sample id and category; a clean set exits 0."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from llava.data import doctor


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from llava.testing.tiny_models import build_tokenizer

    out = tmp_path_factory.mktemp("doctor_tok")
    build_tokenizer(out)
    return str(out)


def qa(question: str = "what colour is the circle?", answer: str = "the circle is red.",
       image: bool = True) -> list[dict[str, str]]:
    return [{"from": "human", "value": ("<image>\n" if image else "") + question}, {"from": "gpt", "value": answer}]


def clean_samples() -> list[dict[str, Any]]:
    return [
        {"id": "ok-img", "image": "red.jpg", "conversations": qa()},
        {"id": "ok-text", "conversations": qa(image=False)},
        {"id": "ok-multi", "image": "sub/blue.png", "conversations": qa() + qa("and the square?", "blue.", False)},
        {"id": 7, "image": "red.jpg", "conversations": qa("where is it? <image>", image=False)},
    ]


#: sample -> the (id, category) the doctor must report for it.
CRAFTED: list[tuple[Any, tuple[Any, str]]] = [
    ({"id": "no-token", "image": "red.jpg", "conversations": qa(image=False)}, ("no-token", "missing_image_token")),
    ({"id": "two-tokens", "image": "red.jpg", "conversations": qa("<image> and <image>?")},
     ("two-tokens", "too_many_image_tokens")),
    ({"id": "stray-token", "conversations": qa()}, ("stray-token", "image_token_without_image")),
    ({"id": "missing", "image": "nope.jpg", "conversations": qa()}, ("missing", "missing_image")),
    ({"id": "outside", "image": "../red.jpg", "conversations": qa()}, ("outside", "image_outside_folder")),
    ({"id": "truncated", "image": "truncated.png", "conversations": qa()}, ("truncated", "unreadable_image")),
    ({"id": "gif", "image": "gif_named.jpg", "conversations": qa()}, ("gif", "image_format_mismatch")),
    ({"id": "two-humans", "conversations": qa(image=False)[:1] * 2}, ("two-humans", "bad_conversation")),
    ({"id": "user-role", "conversations": [{"from": "user", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
     ("user-role", "bad_conversation")),
    ({"id": "no-answer", "conversations": qa(image=False)[:1]}, ("no-answer", "bad_conversation")),
    ({"id": "not-a-list", "conversations": "hello"}, ("not-a-list", "malformed_sample")),
    ({"id": "image-list", "image": ["a.jpg", "b.jpg"], "conversations": qa()}, ("image-list", "malformed_sample")),
    ({"conversations": qa(image=False)}, ("#{index}", "missing_id")),
    ("just a string", ("#{index}", "malformed_sample")),
    ({"id": "ok-text", "conversations": qa(image=False)}, ("ok-text", "duplicate_id")),
    ({"id": "gpt-first", "conversations": qa(image=False)[1:] + qa(image=False)},
     ("gpt-first", "first_turn_not_human")),
    ({"id": "long", "conversations": qa(image=False, answer="the red circle " * 150)}, ("long", "too_long")),
    ({"id": "long-with-image", "image": "red.jpg", "conversations": qa(answer="the red circle " * 60)},
     ("long-with-image", "too_long")),
]


def make_images(folder: Path) -> None:
    (folder / "sub").mkdir(parents=True)
    picture = Image.effect_noise((32, 32), 40).convert("RGB")
    picture.save(folder / "red.jpg")
    picture.save(folder / "sub" / "blue.png")
    picture.convert("P").save(folder / "gif_named.jpg", format="GIF")
    data = (folder / "sub" / "blue.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])


def write(path: Path, records: list[Any]) -> str:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return str(path)


def run(tmp_path: Path, data_path: str, tokenizer_dir: str, *extra: str) -> tuple[int, list[dict[str, Any]]]:
    report = tmp_path / "problems.jsonl"
    argv = ["--data_path", data_path, "--image_folder", str(tmp_path / "images"), "--model_max_length", "256",
            "--tokenizer", tokenizer_dir, "--version", "v1", "--num_image_tokens", "64", "--report", str(report),
            "--workers", "1", "--no_progress", *extra]
    rc = doctor.main(argv)
    rows = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    return rc, rows


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    make_images(tmp_path / "images")
    return tmp_path / "images"


def test_clean_dataset_exits_zero(tmp_path: Path, images: Path, tokenizer_dir: str,
                                  capsys: pytest.CaptureFixture) -> None:
    rc, rows = run(tmp_path, write(tmp_path / "clean.json", clean_samples()), tokenizer_dir)
    assert rc == 0, rows
    assert rows == []
    out = capsys.readouterr().out
    assert "no problems found" in out and "samples/s" in out


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_each_crafted_problem_is_flagged_with_id_and_category(tmp_path: Path, images: Path, tokenizer_dir: str,
                                                               suffix: str, capsys: pytest.CaptureFixture) -> None:
    records = clean_samples() + [sample for sample, _ in CRAFTED]
    rc, rows = run(tmp_path, write(tmp_path / f"data{suffix}", records), tokenizer_dir)
    assert rc == 1
    found = {(row["id"], row["category"]) for row in rows}
    for k, (_, (sid, category)) in enumerate(CRAFTED):
        index = len(clean_samples()) + k
        expected_id = sid.format(index=index) if isinstance(sid, str) else sid
        assert (expected_id, category) in found, (expected_id, category, rows)
        assert any(row["index"] == index and row["category"] == category for row in rows)
    flagged_ids = {row["id"] for row in rows}
    assert not {"ok-img", "ok-multi", 7} & flagged_ids  # clean samples stay clean
    assert [row for row in rows if row["id"] == "ok-text"] == [r for r in rows if r["category"] == "duplicate_id"]
    by_category = {row["category"]: row for row in rows}
    assert by_category["unreadable_image"]["image"] == "truncated.png"
    assert by_category["image_format_mismatch"]["severity"] == "warning"
    assert "exceed --model_max_length 256" in by_category["too_long"]["detail"]
    out = capsys.readouterr().out
    for _, (_, category) in CRAFTED:
        assert category in out  # summary table row


def test_image_tokens_count_toward_length(tmp_path: Path, images: Path, tokenizer_dir: str) -> None:
    sample = {"id": "img", "image": "red.jpg", "conversations": qa(answer="the red circle " * 60)}
    data_path = write(tmp_path / "one.json", [sample])
    assert run(tmp_path, data_path, tokenizer_dir, "--num_image_tokens", "1")[0] == 0
    rc, rows = run(tmp_path, data_path, tokenizer_dir, "--num_image_tokens", "576")
    assert rc == 1 and [row["category"] for row in rows] == ["too_long"]
    assert "1 image(s) x 576 tokens" in rows[0]["detail"]


def test_workers_and_no_decode_give_the_same_report(tmp_path: Path, images: Path, tokenizer_dir: str) -> None:
    data_path = write(tmp_path / "data.json", clean_samples() + [sample for sample, _ in CRAFTED])
    _, serial = run(tmp_path, data_path, tokenizer_dir)
    _, parallel = run(tmp_path, data_path, tokenizer_dir, "--workers", "2")
    assert parallel == serial
    _, verified = run(tmp_path, data_path, tokenizer_dir, "--no_decode")
    assert [(r["id"], r["category"]) for r in verified] == [(r["id"], r["category"]) for r in serial]


def test_strict_and_warnings_only(tmp_path: Path, images: Path, tokenizer_dir: str) -> None:
    records = clean_samples() + [{"id": "gif", "image": "gif_named.jpg", "conversations": qa()}]
    data_path = write(tmp_path / "warn.json", records)
    assert run(tmp_path, data_path, tokenizer_dir)[0] == 0
    assert run(tmp_path, data_path, tokenizer_dir, "--strict")[0] == 1


def test_template_error_and_unusable_inputs(tmp_path: Path, images: Path, tokenizer_dir: str,
                                            capsys: pytest.CaptureFixture) -> None:
    data_path = write(tmp_path / "clean.json", clean_samples()[:1])
    rc, rows = run(tmp_path, data_path, tokenizer_dir, "--version", "chat_template")
    assert rc == 1 and [(r["id"], r["category"]) for r in rows] == [("ok-img", "template_error")]
    assert run(tmp_path, data_path, tokenizer_dir, "--version", "vicuna_v9")[0] == 2
    assert "unknown conversation template 'vicuna_v9'" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": 1,')
    assert run(tmp_path, str(broken), tokenizer_dir)[0] == 2
    assert "malformed JSON" in capsys.readouterr().err
    assert run(tmp_path, data_path, str(tmp_path / "no_tokenizer"))[0] == 2
    argv = ["--data_path", data_path, "--model_max_length", "256", "--tokenizer", tokenizer_dir, "--version", "v1",
            "--report", str(tmp_path / "r.jsonl")]
    assert doctor.main(argv) == 2  # images but no --image_folder
    assert "--image_folder is not set" in capsys.readouterr().err
