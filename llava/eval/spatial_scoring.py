"""The spatial benchmark's scoring pieces shared by its scorer and the permutation-probe report.

:mod:`llava.eval.eval_spatial` (the scorer CLI) and :mod:`llava.eval.permutation_report` both import
from here, so imports run one way (eval_spatial -> permutation_report -> this module): the answer
match (:func:`is_correct`), the per-category majority answer and the annotation loader.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llava.eval.eval_textvqa import normalize_answer, read_jsonl_or_json

OVERALL = "overall"


def is_correct(prediction: str, reference: str) -> bool:
    """The benchmark's match: equal after :func:`~llava.eval.eval_textvqa.normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(reference)


def majority_answers(annotations: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Most frequent (normalized) reference answer per category (ties: alphabetically first)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in annotations:
        counts[row.get("category", OVERALL)][normalize_answer(row["answer"])] += 1
    return {cat: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for cat, c in counts.items()}


def load_annotations(annotation_file: str | Path, flag: str = "--annotation-file") -> list[dict[str, Any]]:
    """The annotation rows ``{question_id, answer, category}``; errors name ``flag`` and the path."""
    annotations = read_jsonl_or_json(annotation_file, flag)
    if isinstance(annotations, dict):
        raise ValueError(f"{flag} {str(annotation_file)!r} must be JSONL/JSON list of "
                         "{question_id, answer, category} (llava.data.spatial writes test_answers.jsonl)")
    return annotations
