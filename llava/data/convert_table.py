"""Question/answer/image table (CSV, JSON list or JSONL) -> LLaVA-format training JSON (+ eval files).

    python -m llava.data.convert_table --input qa.csv --output train.json \\
        [--question-col question] [--answer-col answer] [--image-col image] [--id-col id] \\
        [--category-col answer_type] [--where q_lang=en] [--image-prefix imgs/] \\
        [--questions-out test_questions.jsonl --answers-out test_answers.jsonl]

Each table row becomes one LLaVA record ``{"id", "image", "conversations": [human "<image>\\n<question>",
gpt "<answer>"], "category"}`` (``category`` only with ``--category-col``; the trainer ignores it, the
k-fold runner and the scorers use it). A row that lacks a required column is an error naming the row
(its id, or its position) and the column, so a wrong ``--*-col`` is caught before training.

``--questions-out/--answers-out`` also write upstream's eval format (``question_id, image, text, category``
and ``question_id, answer, category``), which :mod:`llava.eval.model_vqa_loader` answers and
:mod:`llava.eval.eval_spatial` scores (exact match per category). :func:`eval_rows` derives the same
files from any LLaVA record list (one question per human/gpt turn pair).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.utils.atomic import atomic_write_text
from llava.utils.jsonl import parse_jsonl


class MissingFieldError(KeyError):
    """A table row/record lacks a field the conversion needs."""

    def __str__(self) -> str:  # KeyError quotes its message; show it as written
        return str(self.args[0])


@dataclass(frozen=True)
class Columns:
    """Which table columns hold what; ``id``/``category`` are optional (``None``: not used)."""

    question: str = "question"
    answer: str = "answer"
    image: str = "image"
    id: str | None = None
    category: str | None = None


def read_table(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``.csv``/``.tsv`` (header row), ``.json`` (a list of objects) or ``.jsonl`` file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--input {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with p.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    text = p.read_text(encoding="utf-8")
    if suffix == ".jsonl":
        return parse_jsonl(text, f"{p}:")
    if suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError(f"{p}: expected a JSON list of objects, got {type(data).__name__}")
        return data
    raise ValueError(f"--input {str(p)!r}: unknown table format {suffix!r}; use .csv, .tsv, .json or .jsonl")


def _row_name(row: Mapping[str, Any], index: int, id_col: str | None) -> str:
    if id_col and row.get(id_col) not in (None, ""):
        return f"record {id_col}={row[id_col]!r} (row {index})"
    return f"record at row {index}"


def require(row: Mapping[str, Any], field: str, index: int, id_col: str | None, source: str = "") -> Any:
    """``row[field]``, or a :class:`MissingFieldError` naming the record, the field and the fields it has."""
    value = row.get(field) if isinstance(row, Mapping) else None
    if value is None or (isinstance(value, str) and not value.strip()):
        have = ", ".join(sorted(map(str, row))) if isinstance(row, Mapping) else type(row).__name__
        where = f"{source}: " if source else ""
        raise MissingFieldError(
            f"{where}{_row_name(row, index, id_col) if isinstance(row, Mapping) else f'row {index}'} has no "
            f"field {field!r} (it has: {have}). Fix the record or point the matching --*-col flag at the "
            "right column.")
    return value


def llava_record(record_id: str, image: str | None, question: str, answer: str,
                 category: str | None = None) -> dict[str, Any]:
    """One single-turn LLaVA record; the image token goes first, as upstream's data has it."""
    human = f"{DEFAULT_IMAGE_TOKEN}\n{question.strip()}" if image else question.strip()
    rec: dict[str, Any] = {"id": record_id}
    if image:
        rec["image"] = image
    rec["conversations"] = [{"from": "human", "value": human}, {"from": "gpt", "value": str(answer).strip()}]
    if category is not None:
        rec["category"] = str(category)
    return rec


def parse_where(clauses: Sequence[str]) -> list[tuple[str, str]]:
    """``["q_lang=en"]`` -> ``[("q_lang", "en")]``; a clause without ``=`` is an error naming it."""
    out = []
    for c in clauses:
        if "=" not in c:
            raise ValueError(f"--where {c!r} must look like COLUMN=VALUE")
        k, v = c.split("=", 1)
        out.append((k.strip(), v.strip()))
    return out


def convert_rows(rows: Iterable[Mapping[str, Any]], cols: Columns, where: Sequence[tuple[str, str]] = (),
                 image_prefix: str = "", source: str = "") -> list[dict[str, Any]]:
    """Table rows -> LLaVA records (rows failing a ``where`` filter are skipped)."""
    records = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"{source or 'table'}: row {i} is a {type(row).__name__}, not an object")
        if any(str(row.get(k)) != v for k, v in where):
            continue
        question = require(row, cols.question, i, cols.id, source)
        answer = require(row, cols.answer, i, cols.id, source)
        image = require(row, cols.image, i, cols.id, source)
        rid = str(require(row, cols.id, i, cols.id, source)) if cols.id else str(i)
        category = require(row, cols.category, i, cols.id, source) if cols.category else None
        records.append(llava_record(rid, f"{image_prefix}{image}", str(question), str(answer), category))
    return records


def eval_rows(records: Sequence[Mapping[str, Any]], category_key: str = "category",
              default_category: str = "overall") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(questions, answers) in upstream's eval format: one question per human->gpt turn pair of each record."""
    questions, answers = [], []
    for rec in records:
        convs = rec.get("conversations") or []
        category = str(rec.get(category_key, default_category))
        for t in range(0, len(convs) - 1, 2):
            if convs[t].get("from") != "human" or convs[t + 1].get("from") != "gpt":
                continue
            text = convs[t]["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
            qid = f"{rec['id']}_{t // 2}"
            q = {"question_id": qid, "text": text, "category": category}
            if rec.get("image"):
                q["image"] = rec["image"]
            questions.append(q)
            answers.append({"question_id": qid, "answer": convs[t + 1]["value"].strip(), "category": category})
    return questions, answers


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (tmp file + rename), creating the folder."""
    atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False))


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write JSONL atomically, creating the folder."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_outputs(records: Sequence[Mapping[str, Any]], output: str | os.PathLike,
                  questions_out: str | None = None, answers_out: str | None = None) -> None:
    """The LLaVA JSON and, when asked, the eval question/answer JSONL files."""
    write_json(output, list(records))
    if questions_out or answers_out:
        questions, answers = eval_rows(records)
        if questions_out:
            write_jsonl(questions_out, questions)
        if answers_out:
            write_jsonl(answers_out, answers)


def add_output_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--output / --questions-out / --answers-out (shared with convert_slake)."""
    p.add_argument("--output", required=True, help="LLaVA-format JSON to write")
    p.add_argument("--questions-out", default=None, help="also write eval questions (JSONL)")
    p.add_argument("--answers-out", default=None, help="also write eval reference answers (JSONL)")
    return p


def build_parser() -> argparse.ArgumentParser:
    """Flags of this CLI."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help=".csv/.tsv/.json/.jsonl table")
    p.add_argument("--question-col", default="question")
    p.add_argument("--answer-col", default="answer")
    p.add_argument("--image-col", default="image")
    p.add_argument("--id-col", default=None, help="record id column (default: the row number)")
    p.add_argument("--category-col", default=None, help="column copied to each record's 'category'")
    p.add_argument("--where", action="append", default=[], help="keep rows with COLUMN=VALUE (repeatable)")
    p.add_argument("--image-prefix", default="", help="prepended to every image path")
    return add_output_args(p)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints how many records were written."""
    args = build_parser().parse_args(argv)
    cols = Columns(args.question_col, args.answer_col, args.image_col, args.id_col, args.category_col)
    records = convert_rows(read_table(args.input), cols, parse_where(args.where), args.image_prefix, args.input)
    write_outputs(records, args.output, args.questions_out, args.answers_out)
    print(f"wrote {len(records)} records to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
