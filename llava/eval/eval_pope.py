"""POPE scorer: accuracy, precision, recall, F1 and yes-ratio of yes/no answers ("yes" is the positive class).

    python -m llava.eval.eval_pope --annotation-dir POPE/output/coco --question-file llava_pope_test.jsonl \\
        --result-file answers.jsonl
    python -m llava.eval.eval_pope --annotation-file labels.jsonl --result-file answers.jsonl

With ``--annotation-dir`` (upstream layout) each ``coco_pope_<category>.json`` file there holds JSON
lines ``{"question_id", "label": "yes"|"no"}``, and the question file's ``category`` field splits the
results per category. ``--annotation-file`` is one such label file scored as a whole.

A free-form answer is read as upstream does: keep only its first sentence; it is "no" when the
words contain "no"/"not" (any case, punctuation ignored), otherwise "yes" — so "" counts as "yes".
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llava.eval.eval_textvqa import predictions_by_id, read_jsonl_or_json

_WORD = re.compile(r"[a-z']+")


def parse_yes_no(text: str) -> str:
    """'yes' or 'no' for a generated answer (see the module docstring)."""
    first = str(text).strip().split(".")[0] if "." in str(text) else str(text)
    words = set(_WORD.findall(first.lower()))
    return "no" if words & {"no", "not"} else "yes"


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Metrics of parsed ``predictions`` vs ``labels`` ('yes'/'no'); precision/recall/F1 are 0 when undefined."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions vs {len(labels)} labels")
    if not labels:
        raise ValueError("no labelled questions to score")
    pred = [parse_yes_no(p) == "yes" for p in predictions]
    gold = []
    for lab in labels:
        lab = str(lab).strip().lower()
        if lab not in ("yes", "no"):
            raise ValueError(f"POPE label must be 'yes' or 'no', got {lab!r}")
        gold.append(lab == "yes")
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    tn = sum(not p and not g for p, g in zip(pred, gold))
    fn = sum(not p and g for p, g in zip(pred, gold))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(gold), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / len(gold), "tp": tp, "fp": fp, "tn": tn, "fn": fn, "total": len(gold)}


def score_labels(label_rows: Sequence[dict[str, Any]], predictions: dict[str, str]) -> dict[str, float]:
    """Score label rows against ``{question_id: text}``; a missing prediction raises (names the id)."""
    missing = [str(r["question_id"]) for r in label_rows if str(r["question_id"]) not in predictions]
    if missing:
        raise KeyError(f"{len(missing)} labelled question(s) have no answer in --result-file, e.g. {missing[:5]}")
    return pope_metrics([predictions[str(r["question_id"])] for r in label_rows], [r["label"] for r in label_rows])


def _rows(obj: Any) -> list[dict[str, Any]]:
    return obj if isinstance(obj, list) else [obj]


def format_metrics(name: str, m: dict[str, float]) -> str:
    """One readable block per category."""
    return (f"Category: {name}, # samples: {m['total']}\n"
            f"TP FP TN FN: {m['tp']} {m['fp']} {m['tn']} {m['fn']}\n"
            f"Accuracy: {m['accuracy']:.3f}  Precision: {m['precision']:.3f}  Recall: {m['recall']:.3f}  "
            f"F1: {m['f1']:.3f}  Yes ratio: {m['yes_ratio']:.3f}")


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """CLI entry point; prints and returns ``{category: metrics}``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--annotation-dir", default=None)
    p.add_argument("--annotation-file", default=None)
    p.add_argument("--question-file", default=None)
    p.add_argument("--result-file", required=True)
    a = p.parse_args(argv)
    predictions = predictions_by_id(a.result_file)
    results: dict[str, dict[str, float]] = {}
    if a.annotation_file:
        results["all"] = score_labels(_rows(read_jsonl_or_json(a.annotation_file, "--annotation-file")), predictions)
    elif a.annotation_dir:
        if not a.question_file:
            p.error("--annotation-dir needs --question-file (its 'category' field splits the results)")
        by_cat: dict[str, set[str]] = defaultdict(set)
        for q in _rows(read_jsonl_or_json(a.question_file, "--question-file")):
            by_cat[q["category"]].add(str(q["question_id"]))
        for cat in sorted(by_cat):
            path = Path(a.annotation_dir) / f"coco_pope_{cat}.json"
            labels = [r for r in _rows(read_jsonl_or_json(path, "--annotation-dir file"))
                      if str(r["question_id"]) in by_cat[cat]]
            results[cat] = score_labels(labels, predictions)
    else:
        p.error("give --annotation-file, or --annotation-dir with --question-file")
    for name, m in results.items():
        print(format_metrics(name, m))
    return results


if __name__ == "__main__":
    main()
