"""Score the spatial benchmark (:mod:`llava.data.spatial`): accuracy per question category + majority baseline.

    python -m llava.eval.eval_spatial --annotation-file test_answers.jsonl --result-file answers.jsonl \\
        [--output-file metrics.json]

A prediction is correct when it equals the reference after :func:`llava.eval.eval_textvqa.normalize_answer`
("Top Left." == "top left", "2" == "two"). A missing prediction counts as wrong and is reported.
The majority baseline answers every question of a category with that category's most frequent
reference answer in the annotation file itself (the best any constant answer can do on this split).

``--permuted-answers B.jsonl`` (answers of the same model with ``--permute-image-tokens``) adds the
permutation-probe report after the table, overall and per category
(:mod:`llava.eval.permutation_report`: accuracy without and with permutation, the drop, the share
of answers that changed; on the questions answered in both files).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llava.eval import permutation_report
from llava.eval.eval_textvqa import normalize_answer, predictions_by_id
from llava.eval.spatial_scoring import OVERALL, is_correct, load_annotations, majority_answers

__all__ = ["OVERALL", "evaluate", "format_table", "is_correct", "load_annotations", "main", "majority_answers",
           "score"]


def _accuracy(correct: Sequence[bool]) -> float:
    return 100.0 * sum(correct) / len(correct) if correct else 0.0


def score(annotations: Sequence[dict[str, Any]], predictions: dict[str, str]) -> dict[str, Any]:
    """``{"accuracy": {cat: %}, "majority": {cat: %}, "majority_answer": {cat: ans}, "count": {cat: n},
    "missing": n}`` with an ``overall`` entry (micro average) in each per-category dict."""
    if not annotations:
        raise ValueError("the annotation file has no questions")
    majority = majority_answers(annotations)
    model_hits: dict[str, list[bool]] = defaultdict(list)
    base_hits: dict[str, list[bool]] = defaultdict(list)
    missing = 0
    for row in annotations:
        cat, ref = row.get("category", OVERALL), normalize_answer(row["answer"])
        qid = str(row["question_id"])
        missing += qid not in predictions
        hit = is_correct(predictions.get(qid, ""), row["answer"])
        for key in (cat, OVERALL):
            model_hits[key].append(hit)
            base_hits[key].append(majority[cat] == ref)
    cats = sorted(k for k in model_hits if k != OVERALL) + [OVERALL]
    return {"accuracy": {c: _accuracy(model_hits[c]) for c in cats},
            "majority": {c: _accuracy(base_hits[c]) for c in cats},
            "majority_answer": {c: majority[c] for c in cats if c in majority},
            "count": {c: len(model_hits[c]) for c in cats},
            "missing": missing}


def evaluate(annotation_file: str | Path, result_file: str | Path) -> dict[str, Any]:
    """Load both files and :func:`score` them."""
    return score(load_annotations(annotation_file), predictions_by_id(result_file))


def format_table(metrics: dict[str, Any]) -> str:
    """Markdown table: one row per category, model vs majority baseline."""
    lines = ["| category | n | model acc (%) | majority acc (%) | majority answer |", "|---|---|---|---|---|"]
    for cat, acc in metrics["accuracy"].items():
        lines.append(f"| {cat} | {metrics['count'][cat]} | {acc:.1f} | {metrics['majority'][cat]:.1f} | "
                     f"{metrics['majority_answer'].get(cat, '-')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry point; prints the table and returns the metrics."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--annotation-file", required=True, help="test_answers.jsonl from llava.data.spatial")
    p.add_argument("--result-file", required=True, help="answers JSONL from llava.eval.model_vqa_loader")
    p.add_argument("--output-file", default=None, help="write the metrics as JSON here")
    p.add_argument("--permuted-answers", default=None, help="answers JSONL of the same model run with "
                   "--permute-image-tokens: also print the permutation-probe report (overall and per category)")
    a = p.parse_args(argv)
    metrics = evaluate(a.annotation_file, a.result_file)
    print(format_table(metrics))
    if metrics["missing"]:
        print(f"warning: {metrics['missing']} question(s) have no prediction in {a.result_file} (counted wrong)")
    if a.permuted_answers:
        report = permutation_report.compare_files(a.result_file, a.permuted_answers, a.annotation_file)
        print()
        print(permutation_report.format_report(report))
        metrics["permutation"] = report
    if a.output_file:
        Path(a.output_file).parent.mkdir(parents=True, exist_ok=True)
        Path(a.output_file).write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


if __name__ == "__main__":
    main()
