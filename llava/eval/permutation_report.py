"""Permutation probe report: how much do answers depend on where the image tokens are?

    python -m llava.eval.permutation_report --answers A.jsonl --permuted-answers B.jsonl \\
        [--annotations test_answers.jsonl] [--output-file report.json]

``A`` and ``B`` are answer files of the same model and questions (:mod:`llava.eval.model_vqa_loader`),
``B`` run with ``--permute-image-tokens`` (each image's tokens shuffled after the projector, see
:mod:`llava.model.addons.permute`). Answers are matched by ``question_id``; on the n questions
answered in both files the report gives the share of answers that changed (always) and, with
annotations in the spatial benchmark's format (``{question_id, answer, category}``, what
:mod:`llava.data.spatial` writes), the accuracy without and with permutation and the drop
(percentage points), overall and per category. Two answers are "the same", and an answer is
correct, under the spatial benchmark's match (:func:`llava.eval.spatial_scoring.is_correct`: equal
after VQA normalisation). ``llava.eval.eval_spatial --permuted-answers B.jsonl`` prints the same
report after its table.

Switching the probe on for a loaded model (the inference CLIs' flags) is :mod:`llava.serve.permutation`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llava.eval.eval_textvqa import predictions_by_id
from llava.eval.spatial_scoring import OVERALL, is_correct, load_annotations


def _pct(k: int, n: int) -> float | None:
    return 100.0 * k / n if n else None


def _row(pairs: Sequence[tuple[str, str, str | None]], scored: bool) -> dict[str, Any]:
    """One report row from (answer, permuted answer, reference) triples."""
    n = len(pairs)
    changed = sum(not is_correct(b, a) for a, b, _ in pairs)
    row: dict[str, Any] = {"n": n, "changed": changed, "changed_pct": _pct(changed, n),
                           "accuracy": None, "permuted_accuracy": None, "drop": None}
    if scored:
        acc = _pct(sum(is_correct(a, ref) for a, _, ref in pairs), n)
        acc_p = _pct(sum(is_correct(b, ref) for _, b, ref in pairs), n)
        row.update(accuracy=acc, permuted_accuracy=acc_p, drop=acc - acc_p)
    return row


def compare(answers: Mapping[str, str], permuted: Mapping[str, str],
            annotations: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The report: ``{"rows": {category: row, ..., "overall": row}, "answers_only", "permuted_only",
    "unannotated"}``; a row is ``{n, changed, changed_pct, accuracy, permuted_accuracy, drop}``
    (accuracies in %, drop in points, None without annotations). Only questions in both files count."""
    both = [q for q in answers if q in permuted]
    report: dict[str, Any] = {"answers_only": sum(q not in permuted for q in answers),
                              "permuted_only": sum(q not in answers for q in permuted), "unannotated": 0}
    if not both:
        raise ValueError("no question_id is in both --answers and --permuted-answers (are they of the same "
                         "question file?)")
    groups: dict[str, list[tuple[str, str, str | None]]] = defaultdict(list)
    if annotations is None:
        groups[OVERALL] = [(answers[q], permuted[q], None) for q in both]
    else:
        refs = {str(r["question_id"]): r for r in annotations}
        report["unannotated"] = sum(q not in refs for q in both)
        for q in both:
            if q in refs:
                triple = (answers[q], permuted[q], str(refs[q]["answer"]))
                groups[refs[q].get("category", OVERALL)].append(triple)
                if refs[q].get("category", OVERALL) != OVERALL:
                    groups[OVERALL].append(triple)
        if not groups:
            raise ValueError("none of the questions answered in both files is in --annotations")
    cats = sorted(c for c in groups if c != OVERALL) + [OVERALL]
    report["rows"] = {c: _row(groups[c], annotations is not None) for c in cats}
    return report


def compare_files(answers: str | Path, permuted: str | Path, annotations: str | Path | None = None) -> dict[str, Any]:
    """:func:`compare` on files (errors name the file's flag)."""
    ann = load_annotations(annotations, "--annotations") if annotations else None
    return compare(predictions_by_id(answers, "--answers"), predictions_by_id(permuted, "--permuted-answers"), ann)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_report(report: dict[str, Any]) -> str:
    """A heading, a markdown table (one row per category, ``overall`` last) and warnings."""
    overall = report["rows"][OVERALL]
    lines = [f"Permutation probe: {overall['n']} questions answered with and without permuted image tokens",
             "| category | n | changed | changed (%) | acc (%) | permuted acc (%) | drop (pp) |",
             "|---|---|---|---|---|---|---|"]
    for cat, r in report["rows"].items():
        lines.append(f"| {cat} | {r['n']} | {r['changed']} | {_fmt(r['changed_pct'])} | {_fmt(r['accuracy'])} | "
                     f"{_fmt(r['permuted_accuracy'])} | {_fmt(r['drop'])} |")
    for key, what in (("answers_only", "only in --answers"), ("permuted_only", "only in --permuted-answers"),
                      ("unannotated", "answered in both but not in --annotations")):
        if report[key]:
            lines.append(f"warning: {report[key]} question(s) {what} (left out)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Flags of this CLI."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--answers", required=True, help="answers JSONL without permutation")
    p.add_argument("--permuted-answers", required=True, help="answers JSONL of the same run with "
                   "--permute-image-tokens")
    p.add_argument("--annotations", default=None, help="ground truth {question_id, answer, category} JSONL "
                   "(llava.data.spatial's test_answers.jsonl): adds the accuracies and the drop")
    p.add_argument("--output-file", default=None, help="write the report as JSON here")
    return p


def _usage_error(message: str) -> None:
    print(f"permutation_report: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry point; prints the report and returns it (a user error: one line on stderr, exit 2)."""
    a = build_parser().parse_args(argv)
    try:
        report = compare_files(a.answers, a.permuted_answers, a.annotations)
    except KeyError as err:
        _usage_error(f"a row of the input files has no {err} field")
    except (OSError, ValueError) as err:
        _usage_error(str(err))
    print(format_report(report))
    if a.output_file:
        Path(a.output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(a.output_file).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
