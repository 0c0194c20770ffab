"""Synthetic spatial-reasoning dataset: coloured shapes on a GxG grid, with answers correct by construction.

    python -m llava.data.spatial --output_dir DIR --num_train N --num_test M --image_size S --grid G --seed K

Each scene puts 1..``max_objects`` shapes (distinct cells, distinct colours, so "the red circle" names
one object) on a GxG grid and is drawn with Pillow. Written under ``DIR``:

- ``images/train_00000.png`` ..., ``images/test_00000.png`` ...
- ``scenes.json``: the generator settings and every scene description (image, objects with colour,
  shape, row, col and cell name) for both splits; everything else is derived from it.
- ``pretrain.json``: LLaVA-format caption pairs ("a red circle in the top left, a blue square in the
  center.") for the ``plain`` template.
- ``finetune.json``: LLaVA-format multi-turn instruction data, each question ending with
  "Answer with a single word or phrase.": colour ("Is there a red shape?", yes/no, position-free: the
  permutation probe's control), absolute position ("Where is the red circle?" -> its cell), relative
  position ("Is the red circle to the left of the blue square?", asked only on an axis on which the two
  objects differ, yes/no balanced) and counting ("How many shapes are there?").
- ``test_questions.jsonl``: the held-out split in upstream's eval question format
  (``question_id``, ``image``, ``text``, ``category``), one question per category per image.
- ``test_answers.jsonl``: ``question_id``, ``answer``, ``category`` for :mod:`llava.eval.eval_spatial`.

Deterministic for a seed: train and test scenes use independent seeded streams, so changing
``--num_test`` does not change the training set; test scenes identical to a training scene are redrawn.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from PIL import Image, ImageDraw

COLOURS = MappingProxyType({
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220),
    "yellow": (235, 205, 30), "purple": (140, 50, 170), "orange": (245, 135, 25),
})
SHAPES = ("circle", "square", "triangle")
CATEGORIES = ("colour", "absolute_position", "relative_position", "counting")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SHORT_ANSWER = "Answer with a single word or phrase."
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class SceneObject:
    """One shape: its colour, shape, grid row/column (0 = top/left) and the cell's name."""

    colour: str
    shape: str
    row: int
    col: int
    cell: str


@dataclass(frozen=True)
class QA:
    """One question with its short answer and category."""

    question: str
    answer: str
    category: str


def cell_name(row: int, col: int, grid: int) -> str:
    """Human name of a cell: "top left" .. "bottom right" (and "center") on 2x2/3x3, "row R column C" otherwise."""
    if not (0 <= row < grid and 0 <= col < grid):
        raise ValueError(f"cell ({row}, {col}) is outside a {grid}x{grid} grid")
    if grid in (2, 3):
        rows = ("top", "bottom") if grid == 2 else ("top", "middle", "bottom")
        cols = ("left", "right") if grid == 2 else ("left", "middle", "right")
        if rows[row] == "middle" and cols[col] == "middle":
            return "center"
        return f"{rows[row]} {cols[col]}"
    return f"row {number_word(row + 1)} column {number_word(col + 1)}"


def number_word(n: int) -> str:
    """English word for 0..10, digits beyond."""
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def sample_scene(rng: random.Random, grid: int, max_objects: int) -> list[SceneObject]:
    """Draw 1..max_objects objects in distinct cells with distinct colours (so a colour names an object),
    sorted row-major."""
    n = rng.randint(1, min(max_objects, grid * grid, len(COLOURS)))
    cells = rng.sample([(r, c) for r in range(grid) for c in range(grid)], n)
    colours = rng.sample(list(COLOURS), n)
    objs = [SceneObject(colour=k, shape=rng.choice(SHAPES), row=r, col=c, cell=cell_name(r, c, grid))
            for (r, c), k in zip(cells, colours)]
    return sorted(objs, key=lambda o: (o.row, o.col))


def draw_scene(objects: Sequence[SceneObject], grid: int, image_size: int, rng: random.Random) -> Image.Image:
    """Render ``objects`` on a white ``image_size`` square; each shape fills ~70% of its cell (small jitter)."""
    img = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    cell = image_size / grid
    side = max(3.0, cell * 0.7)
    for o in objects:
        slack = (cell - side) / 2
        jx, jy = rng.uniform(-slack, slack) * 0.5, rng.uniform(-slack, slack) * 0.5
        x0, y0 = o.col * cell + slack + jx, o.row * cell + slack + jy
        x1, y1 = x0 + side, y0 + side
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif o.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif o.shape == "triangle":
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
        else:
            raise ValueError(f"unknown shape {o.shape!r}; valid: {', '.join(SHAPES)}")
    return img


def caption(objects: Sequence[SceneObject]) -> str:
    """'a red circle in the top left, a blue square in the center.'"""
    return ", ".join(f"a {o.colour} {o.shape} in the {o.cell}" for o in objects) + "."


def _name(o: SceneObject) -> str:
    return f"the {o.colour} {o.shape}"


def colour_question(objects: Sequence[SceneObject], rng: random.Random) -> QA:
    """Yes/no: is there a shape of a colour (balanced)? Position-free: the control of the permutation probe."""
    present = sorted({o.colour for o in objects})
    absent = [c for c in COLOURS if c not in present]
    colour = rng.choice(present if rng.random() < 0.5 or not absent else absent)
    return _colour_qa(colour, colour in present)


def _colour_qa(colour: str, present: bool) -> QA:
    article = "an" if colour[0] in "aeiou" else "a"
    return QA(f"Is there {article} {colour} shape?", "yes" if present else "no", "colour")


def absolute_question(objects: Sequence[SceneObject], rng: random.Random) -> QA:
    """Cell of a named object (its colour is unique in the scene)."""
    o = rng.choice(list(objects))
    return QA(f"Where is {_name(o)}?", o.cell, "absolute_position")


RELATIONS = MappingProxyType({"col": ("left of", "right of"), "row": ("above", "below")})


def _relation_qa(a: SceneObject, b: SceneObject, rng: random.Random) -> QA:
    """Yes/no on one axis on which a and b differ, the relation picked so that yes and no are balanced."""
    axes = [axis for axis in RELATIONS if getattr(a, axis) != getattr(b, axis)]
    axis = rng.choice(axes)
    first = getattr(a, axis) < getattr(b, axis)  # a is left of / above b
    want = rng.random() < 0.5
    relation = RELATIONS[axis][0 if first == want else 1]
    phrase = f"to the {relation}" if relation.endswith(" of") else relation
    return QA(f"Is {_name(a)} {phrase} {_name(b)}?", "yes" if want else "no", "relative_position")


def relative_question(objects: Sequence[SceneObject], rng: random.Random) -> QA | None:
    """Yes/no: is A left of / right of / above / below B, asked on an axis where the two differ (balanced
    yes/no); None for one object."""
    if len(objects) < 2:
        return None
    a, b = rng.sample(list(objects), 2)
    return _relation_qa(a, b, rng)


def counting_question(objects: Sequence[SceneObject], rng: random.Random) -> QA:  # noqa: ARG001
    """How many shapes in total."""
    return QA("How many shapes are there?", number_word(len(objects)), "counting")


def questions_for(objects: Sequence[SceneObject], rng: random.Random) -> list[QA]:
    """One question per category (relative position skipped for single-object scenes), in CATEGORIES order."""
    qas = [colour_question(objects, rng), absolute_question(objects, rng),
           relative_question(objects, rng), counting_question(objects, rng)]
    return [q for q in qas if q is not None]


def exhaustive_questions_for(objects: Sequence[SceneObject], rng: random.Random) -> list[QA]:
    """Training questions that cover the scene: the position of every object, every present colour and as
    many absent ones (yes/no), one relative-position question per pair of objects (random order and axis)
    and the count."""
    present = [o.colour for o in objects]
    absent = rng.sample([c for c in COLOURS if c not in present], min(len(present), len(COLOURS) - len(present)))
    qas = [QA(f"Where is {_name(o)}?", o.cell, "absolute_position") for o in objects]
    qas += [_colour_qa(c, True) for c in present] + [_colour_qa(c, False) for c in absent]
    for i, a in enumerate(objects):
        for b in objects[i + 1:]:
            first, second = (a, b) if rng.random() < 0.5 else (b, a)
            qas.append(_relation_qa(first, second, rng))
    qas.append(counting_question(objects, rng))
    return qas


def _signature(objects: Sequence[SceneObject]) -> tuple:
    return tuple((o.colour, o.shape, o.row, o.col) for o in objects)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def generate(output_dir: str | Path, num_train: int = 1000, num_test: int = 200, image_size: int = 48,
             grid: int = 3, seed: int = 0, max_objects: int = 3, rounds: int = 2,
             exhaustive: bool = False) -> dict[str, str]:
    """Write the dataset under ``output_dir`` and return the paths of what was written.

    ``rounds`` is how many passes over the question categories each training conversation gets
    (questions are shuffled within the conversation). ``exhaustive`` instead asks, once each, the colour
    of every occupied cell and the position of every object (plus one relative-position and one counting
    question) in each training conversation; the test split is the same either way.
    """
    if grid < 2:
        raise ValueError(f"--grid must be at least 2, got {grid}")
    if image_size < 4 * grid:
        raise ValueError(f"--image_size {image_size} is too small for a {grid}x{grid} grid; use >= {4 * grid}")
    if num_train < 0 or num_test < 0:
        raise ValueError("--num_train and --num_test must be >= 0")
    if max_objects < 1:
        raise ValueError(f"--max_objects must be >= 1, got {max_objects}")
    out = Path(output_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    settings = dict(num_train=num_train, num_test=num_test, image_size=image_size, grid=grid, seed=seed,
                    max_objects=max_objects, rounds=rounds, exhaustive=exhaustive)

    train_rng = random.Random(f"spatial-train-{seed}")
    train_scenes, seen = [], set()
    pretrain, finetune = [], []
    for i in range(num_train):
        objs = sample_scene(train_rng, grid, max_objects)
        seen.add(_signature(objs))
        name = f"train_{i:05d}.png"
        draw_scene(objs, grid, image_size, train_rng).save(images / name)
        train_scenes.append({"image": f"images/{name}", "objects": [asdict(o) for o in objs]})
        pretrain.append({"id": f"spatial_pretrain_{i}", "image": f"images/{name}", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the shapes in the image."},
            {"from": "gpt", "value": caption(objs)}]})
        if exhaustive:
            qas = exhaustive_questions_for(objs, train_rng)
        else:
            qas = [qa for _ in range(rounds) for qa in questions_for(objs, train_rng)]
        train_rng.shuffle(qas)
        conv = []
        for j, qa in enumerate(qas):
            prefix = "<image>\n" if j == 0 else ""
            conv.append({"from": "human", "value": f"{prefix}{qa.question}\n{SHORT_ANSWER}"})
            conv.append({"from": "gpt", "value": qa.answer})
        finetune.append({"id": f"spatial_{i}", "image": f"images/{name}", "conversations": conv})

    test_rng = random.Random(f"spatial-test-{seed}")
    test_scenes, questions, answers = [], [], []
    for i in range(num_test):
        objs = sample_scene(test_rng, grid, max_objects)
        for _ in range(100):
            if _signature(objs) not in seen:
                break
            objs = sample_scene(test_rng, grid, max_objects)
        name = f"test_{i:05d}.png"
        draw_scene(objs, grid, image_size, test_rng).save(images / name)
        test_scenes.append({"image": f"images/{name}", "objects": [asdict(o) for o in objs]})
        for qa in questions_for(objs, test_rng):
            qid = f"spatial_test_{len(questions)}"
            questions.append({"question_id": qid, "image": f"images/{name}",
                              "text": f"{qa.question}\n{SHORT_ANSWER}", "category": qa.category})
            answers.append({"question_id": qid, "answer": qa.answer, "category": qa.category})

    paths = {k: str(out / v) for k, v in dict(
        scenes="scenes.json", pretrain="pretrain.json", finetune="finetune.json",
        test_questions="test_questions.jsonl", test_answers="test_answers.jsonl").items()}
    paths["image_folder"] = str(out)
    _write_json(Path(paths["scenes"]), {"settings": settings, "train": train_scenes, "test": test_scenes})
    _write_json(Path(paths["pretrain"]), pretrain)
    _write_json(Path(paths["finetune"]), finetune)
    _write_jsonl(Path(paths["test_questions"]), questions)
    _write_jsonl(Path(paths["test_answers"]), answers)
    return paths


def answer_from_scene(question: str, objects: Sequence[dict[str, Any]]) -> str:
    """Re-derive the answer to one generated question from a scene description (an independent parser).

    Used by tests and handy to audit a dataset: it understands exactly the question forms above.
    """
    q = question.split("\n")[0].strip()
    by_name = {f"the {o['colour']} {o['shape']}": o for o in objects}
    if q.startswith("Is there a") and q.endswith(" shape?"):
        colour = q[len("Is there a"):-len(" shape?")].removeprefix("n").strip()
        return "yes" if any(o["colour"] == colour for o in objects) else "no"
    if q.startswith("Where is "):
        return by_name[q[len("Where is "):-1]]["cell"]
    if q == "How many shapes are there?":
        return number_word(len(objects))
    if q.startswith("Is "):
        body = q[3:-1]
        for phrase, test in (("to the left of", lambda a, b: a["col"] < b["col"]),
                             ("to the right of", lambda a, b: a["col"] > b["col"]),
                             ("above", lambda a, b: a["row"] < b["row"]),
                             ("below", lambda a, b: a["row"] > b["row"])):
            sep = f" {phrase} "
            if sep in body:
                a, b = body.split(sep)
                return "yes" if test(by_name[a], by_name[b]) else "no"
    raise ValueError(f"not a spatial-dataset question: {question!r}")


def build_parser() -> argparse.ArgumentParser:
    """CLI flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--num_train", type=int, default=1000)
    p.add_argument("--num_test", type=int, default=200)
    p.add_argument("--image_size", type=int, default=48)
    p.add_argument("--grid", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max_objects", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="passes over the question categories per training image")
    p.add_argument("--exhaustive", action="store_true", help="ask the colour of every occupied cell and the "
                   "position of every object in each training conversation (instead of --rounds sampled passes)")
    return p


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    a = build_parser().parse_args(argv)
    paths = generate(a.output_dir, a.num_train, a.num_test, a.image_size, a.grid, a.seed, a.max_objects, a.rounds,
                     a.exhaustive)
    for k, v in paths.items():
        print(f"{k}={v}")


if __name__ == "__main__":
    main()
