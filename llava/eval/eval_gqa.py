"""Exact-match scorer for GQA / VQAv2-style short answers (one reference answer per question).

    python -m llava.eval.eval_gqa --annotation-file testdev_balanced_questions.json --result-file answers.jsonl \\
        [--predictions-out testdev_balanced_predictions.json]

Annotations: GQA's question JSON (``{question_id: {"answer": ...}}``), or a JSON list / JSONL of
``{"question_id", "answer"}`` (``"category"`` optional, scored separately too). Both sides are
normalized with :func:`llava.eval.eval_textvqa.normalize_answer` (case, punctuation, articles,
number words), so "Yes." matches "yes" and "two" matches "2". A missing prediction is wrong.
``--predictions-out`` also writes GQA's official ``[{"questionId", "prediction"}]`` file for its
evaluator. (VQAv2's 10-annotator soft score is :mod:`llava.eval.eval_textvqa`.)
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from llava.eval.eval_textvqa import normalize_answer, predictions_by_id, read_jsonl_or_json


def reference_rows(obj: Any) -> list[dict[str, Any]]:
    """Normalize the accepted annotation layouts to ``[{"question_id", "answer", "category"?}]``."""
    if isinstance(obj, dict):
        return [{"question_id": qid, **v} for qid, v in obj.items()]
    return list(obj)


def exact_match(prediction: str, answer: str) -> bool:
    """Normalized equality."""
    return normalize_answer(prediction) == normalize_answer(answer)


def score(rows: list[dict[str, Any]], predictions: dict[str, str]) -> dict[str, Any]:
    """``{"accuracy": %, "total", "missing", "per_category": {cat: %}}``."""
    if not rows:
        raise ValueError("the annotation file has no questions")
    hits: dict[str, list[bool]] = defaultdict(list)
    missing = 0
    for r in rows:
        qid = str(r["question_id"])
        missing += qid not in predictions
        ok = exact_match(predictions.get(qid, ""), str(r["answer"]))
        hits["all"].append(ok)
        if r.get("category") is not None:
            hits[str(r["category"])].append(ok)
    acc = {k: 100.0 * sum(v) / len(v) for k, v in hits.items()}
    return {"accuracy": acc.pop("all"), "total": len(rows), "missing": missing, "per_category": acc}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry point; prints and returns the metrics."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--annotation-file", required=True)
    p.add_argument("--result-file", required=True)
    p.add_argument("--predictions-out", default=None, help="write GQA's [{questionId, prediction}] file here")
    a = p.parse_args(argv)
    predictions = predictions_by_id(a.result_file)
    metrics = score(reference_rows(read_jsonl_or_json(a.annotation_file, "--annotation-file")), predictions)
    if a.predictions_out:
        out = [{"questionId": qid, "prediction": normalize_answer(text)} for qid, text in predictions.items()]
        Path(a.predictions_out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.predictions_out).write_text(json.dumps(out))
    print(f"Samples: {metrics['total']} (missing predictions: {metrics['missing']})")
    print(f"Accuracy: {metrics['accuracy']:.2f}%")
    for cat, acc in sorted(metrics["per_category"].items()):
        print(f"  {cat}: {acc:.2f}%")
    return metrics


if __name__ == "__main__":
    main()
