"""The spatial benchmark generator: deterministic per seed, answers correct by construction, images match scenes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from llava.data.spatial import (
    CATEGORIES,
    COLOURS,
    SHORT_ANSWER,
    SceneObject,
    answer_from_scene,
    caption,
    cell_name,
    generate,
)

REPO = Path(__file__).resolve().parents[1]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("spatial")
    paths = generate(out, num_train=40, num_test=15, image_size=48, grid=3, seed=7)
    return out, paths


def test_same_seed_same_bytes_other_seed_differs(tmp_path, dataset):
    out, _ = dataset
    generate(tmp_path / "again", num_train=40, num_test=15, image_size=48, grid=3, seed=7)
    assert _tree(tmp_path / "again") == _tree(out)
    generate(tmp_path / "other", num_train=40, num_test=15, image_size=48, grid=3, seed=8)
    assert _tree(tmp_path / "other")["finetune.json"] != _tree(out)["finetune.json"]


def test_training_split_independent_of_test_size(tmp_path, dataset):
    out, _ = dataset
    generate(tmp_path / "more_test", num_train=40, num_test=3, image_size=48, grid=3, seed=7)
    assert (tmp_path / "more_test" / "finetune.json").read_bytes() == (out / "finetune.json").read_bytes()
    assert (tmp_path / "more_test" / "images" / "train_00039.png").read_bytes() == \
        (out / "images" / "train_00039.png").read_bytes()


def test_test_answers_rederived_from_scene(dataset):
    out, paths = dataset
    scenes = {s["image"]: s["objects"] for s in json.loads(Path(paths["scenes"]).read_text())["test"]}
    questions = [json.loads(x) for x in Path(paths["test_questions"]).read_text().splitlines()]
    answers = {a["question_id"]: a for a in map(json.loads, Path(paths["test_answers"]).read_text().splitlines())}
    assert len(questions) == len(answers) > 0
    seen = set()
    for q in questions:
        assert set(q) == {"question_id", "image", "text", "category"}
        assert q["text"].endswith(SHORT_ANSWER) and (out / q["image"]).is_file()
        a = answers[q["question_id"]]
        assert a["category"] == q["category"]
        assert answer_from_scene(q["text"], scenes[q["image"]]) == a["answer"], q
        seen.add(q["category"])
    assert seen == set(CATEGORIES)


def test_finetune_conversations_rederived_from_scene(dataset):
    _, paths = dataset
    scenes = {s["image"]: s["objects"] for s in json.loads(Path(paths["scenes"]).read_text())["train"]}
    data = json.loads(Path(paths["finetune"]).read_text())
    assert len(data) == 40
    for sample in data:
        conv = sample["conversations"]
        assert conv[0]["value"].startswith("<image>\n")
        assert sum("<image>" in t["value"] for t in conv) == 1
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        for human, gpt in zip(conv[::2], conv[1::2]):
            question = human["value"].replace("<image>\n", "")
            assert answer_from_scene(question, scenes[sample["image"]]) == gpt["value"]


def test_pretrain_captions_and_scene_invariants(dataset):
    _, paths = dataset
    scenes = json.loads(Path(paths["scenes"]).read_text())
    captions = {s["image"]: s["conversations"][1]["value"] for s in json.loads(Path(paths["pretrain"]).read_text())}
    for scene in scenes["train"] + scenes["test"]:
        objs = scene["objects"]
        assert 1 <= len(objs) <= 3
        assert len({(o["row"], o["col"]) for o in objs}) == len(objs)
        assert len({o["colour"] for o in objs}) == len(objs)  # a colour names one object
        assert all(o["cell"] == cell_name(o["row"], o["col"], 3) for o in objs)
    for scene in scenes["train"]:
        assert captions[scene["image"]] == caption([SceneObject(**o) for o in scene["objects"]])


def test_pixels_match_scene(dataset):
    """The centre of every object's cell has the object's colour; empty cells are background."""
    out, paths = dataset
    scenes = json.loads(Path(paths["scenes"]).read_text())
    cell = 48 / 3
    for scene in scenes["test"]:
        img = Image.open(out / scene["image"]).convert("RGB")
        occupied = {(o["row"], o["col"]): o["colour"] for o in scene["objects"]}
        for r in range(3):
            for c in range(3):
                # triangles are thin at the top: sample a bit below the centre
                px = img.getpixel((int((c + 0.5) * cell), int((r + 0.6) * cell)))
                assert px == (COLOURS[occupied[(r, c)]] if (r, c) in occupied else (255, 255, 255)), (scene, r, c)


def test_cell_names_and_errors(tmp_path):
    assert cell_name(0, 0, 2) == "top left" and cell_name(1, 1, 3) == "center"
    assert cell_name(2, 1, 3) == "bottom middle" and cell_name(3, 0, 4) == "row four column one"
    with pytest.raises(ValueError, match="outside"):
        cell_name(3, 0, 3)
    with pytest.raises(ValueError, match="--image_size"):
        generate(tmp_path, num_train=1, num_test=1, image_size=8, grid=3)
    with pytest.raises(ValueError, match="not a spatial-dataset question"):
        answer_from_scene("Why?", [])


def test_cli(tmp_path):
    res = subprocess.run([sys.executable, "-m", "llava.data.spatial", "--output_dir", str(tmp_path), "--num_train",
                          "3", "--num_test", "2", "--image_size", "32", "--grid", "2", "--seed", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "test_questions.jsonl").is_file() and len(list((tmp_path / "images").glob("*.png"))) == 5


def test_exhaustive_conversations_cover_every_object(tmp_path):
    paths = generate(tmp_path / "a", num_train=20, num_test=4, image_size=32, grid=2, seed=3, exhaustive=True)
    generate(tmp_path / "b", num_train=20, num_test=4, image_size=32, grid=2, seed=3, exhaustive=True)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    scenes = {s["image"]: s["objects"] for s in json.loads(Path(paths["scenes"]).read_text())["train"]}
    for sample in json.loads(Path(paths["finetune"]).read_text()):
        objects, conv = scenes[sample["image"]], sample["conversations"]
        questions = [h["value"].replace("<image>\n", "").split("\n")[0] for h in conv[::2]]
        for human, gpt in zip(conv[::2], conv[1::2]):
            assert answer_from_scene(human["value"].replace("<image>\n", ""), objects) == gpt["value"]
        present = {o["colour"] for o in objects}
        asked = [q for q in questions if q.startswith("Is there a")]
        for o in objects:
            assert f"Where is the {o['colour']} {o['shape']}?" in questions
            assert any(f" {o['colour']} shape?" in q for q in asked)
        answers = [answer_from_scene(q, objects) for q in asked]
        assert answers.count("yes") == len(present) == answers.count("no")  # balanced colour questions
        relative = [q for q in questions if q.startswith("Is the ")]
        assert len(relative) == len(objects) * (len(objects) - 1) // 2  # one per pair
        assert questions.count("How many shapes are there?") == 1


def test_relative_questions_ask_an_axis_on_which_the_objects_differ(dataset):
    """So "no" never means "same column": each relative answer is decided by where the first object is."""
    _, paths = dataset
    scenes = {s["image"]: s["objects"] for s in json.loads(Path(paths["scenes"]).read_text())["test"]}
    answers = []
    for q in map(json.loads, Path(paths["test_questions"]).read_text().splitlines()):
        if q["category"] != "relative_position":
            continue
        by_name = {f"the {o['colour']} {o['shape']}": o for o in scenes[q["image"]]}
        body = q["text"].split("\n")[0][3:-1]
        phrase = next(p for p in ("to the left of", "to the right of", "above", "below") if f" {p} " in body)
        a, b = (by_name[x] for x in body.split(f" {phrase} "))
        axis = "col" if "of" in phrase else "row"
        assert a[axis] != b[axis], q
        answers.append(answer_from_scene(q["text"], scenes[q["image"]]))
    assert answers and {"yes", "no"} == set(answers)


def test_colour_question_is_position_free_and_balanced(tmp_path):
    paths = generate(tmp_path, num_train=0, num_test=200, image_size=32, grid=2, seed=1)
    rows = [json.loads(x) for x in Path(paths["test_questions"]).read_text().splitlines()]
    colour = [r for r in rows if r["category"] == "colour"]
    assert all(r["text"].startswith(("Is there a ", "Is there an ")) for r in colour)
    assert not any(word in r["text"] for r in colour for word in ("left", "right", "top", "bottom"))
    answers = [json.loads(x) for x in Path(paths["test_answers"]).read_text().splitlines()]
    yes = sum(a["answer"] == "yes" for a in answers if a["category"] == "colour")
    assert 80 <= yes <= 120  # balanced yes/no (n = 200)
    assert "Is there an orange shape?\nAnswer with a single word or phrase." in {r["text"] for r in colour}
