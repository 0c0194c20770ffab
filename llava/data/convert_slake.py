"""SLAKE (medical VQA) annotations -> LLaVA-format training JSON (+ eval question/answer files).

    python -m llava.data.convert_slake --input Slake1.0/train.json --output slake_train.json \\
        [--lang en|zh|all] [--category answer_type|content_type|modality|location|none] \\
        [--image-prefix imgs/] [--questions-out q.jsonl --answers-out a.jsonl]

SLAKE's split files (``train.json``, ``validate.json``, ``test.json``) are JSON lists with one object per
question. The fields used here, as published with the dataset: ``qid`` (question id), ``img_name`` (image
path relative to the ``imgs/`` folder, e.g. ``xmlab0/source.jpg``), ``question``, ``answer``, ``q_lang``
(``en`` / ``zh``), and the labels ``answer_type`` (``OPEN`` / ``CLOSED``), ``content_type`` (e.g.
``Modality``, ``Organ``, ``Position``), ``modality`` (``CT``, ``MRI``, ``X-Ray``), ``location`` (body
region) and ``base_type`` (``vqa`` / ``kvqa``). Other fields (``img_id``, ``triple``) are ignored.

One LLaVA record per question: id ``slake_<qid>``, ``image = <image-prefix><img_name>``, the question
after the image token, the answer as the assistant turn, and the chosen label in ``category`` (used by
the k-fold runner and the scorers; the trainer ignores it). With ``--image-prefix imgs/`` pass the
SLAKE root as ``--image_folder`` when training. A record missing a required field (or the
``--category`` field) is an error naming the record's qid (or position), the field and its fields.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llava.data.convert_table import add_output_args, llava_record, require, write_outputs

REQUIRED_FIELDS = ("qid", "img_name", "question", "answer", "q_lang")
LABEL_FIELDS = ("answer_type", "content_type", "modality", "location", "base_type")


def convert_slake(records: Sequence[Mapping[str, Any]], lang: str = "en", category: str | None = "answer_type",
                  image_prefix: str = "", source: str = "SLAKE") -> list[dict[str, Any]]:
    """SLAKE question objects -> LLaVA records (``lang`` ``all`` keeps every language)."""
    if category is not None and category not in LABEL_FIELDS:
        raise ValueError(f"--category {category!r} is not a SLAKE label field; use one of {', '.join(LABEL_FIELDS)} "
                         "or none")
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise ValueError(f"{source}: entry {i} is a {type(rec).__name__}, not a question object")
        values = {f: require(rec, f, i, "qid", source) for f in REQUIRED_FIELDS}
        if lang != "all" and str(values["q_lang"]) != lang:
            continue
        label = str(require(rec, category, i, "qid", source)) if category else None
        out.append(llava_record(f"slake_{values['qid']}", f"{image_prefix}{values['img_name']}",
                                str(values["question"]), str(values["answer"]), label))
    return out


def read_slake(path: str | Path) -> list[dict[str, Any]]:
    """A SLAKE split file (a JSON list of question objects)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--input {str(p)!r} does not exist; pass a SLAKE split file such as "
                                "Slake1.0/train.json")
    data = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{p}: a SLAKE split file is a JSON list of question objects, got {type(data).__name__}")
    return data


def build_parser() -> argparse.ArgumentParser:
    """Flags of this CLI."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, nargs="+", help="SLAKE split file(s), e.g. train.json")
    p.add_argument("--lang", default="en", choices=("en", "zh", "all"))
    p.add_argument("--category", default="answer_type", help=f"label copied to 'category': one of "
                   f"{', '.join(LABEL_FIELDS)}, or none")
    p.add_argument("--image-prefix", default="", help="prepended to img_name (e.g. imgs/)")
    return add_output_args(p)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints how many records were written."""
    args = build_parser().parse_args(argv)
    category = None if args.category == "none" else args.category
    records = []
    for path in args.input:
        records += convert_slake(read_slake(path), args.lang, category, args.image_prefix, path)
    write_outputs(records, args.output, args.questions_out, args.answers_out)
    print(f"wrote {len(records)} records to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
