"""Ablation tables with statistics: per-category accuracy with n and a 95% Wilson interval, and an exact
McNemar test of every variant against a reference variant on the same questions.

Inputs are per-question hits, ``{question_id: (category, correct)}``, which :func:`question_hits`
computes from a spatial-benchmark annotation file and an answers file with the same answer
normalisation as :mod:`llava.eval.eval_spatial`. No correction for multiple comparisons is applied;
the text says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llava.eval.eval_spatial import is_correct, majority_answers
from llava.eval.eval_textvqa import normalize_answer
from llava.eval.stats import compare_paired, wilson_interval

OVERALL = "overall"
ALPHA = 0.05
Hits = Mapping[str, tuple[str, bool]]


def question_hits(annotations: Sequence[Mapping[str, Any]], predictions: Mapping[str, str]) -> dict[str, tuple]:
    """{question_id: (category, prediction correct)}; a missing prediction is wrong."""
    return {str(r["question_id"]): (r.get("category", OVERALL),
                                    is_correct(predictions.get(str(r["question_id"]), ""), r["answer"]))
            for r in annotations}


def majority_hits(annotations: Sequence[Mapping[str, Any]]) -> dict[str, tuple]:
    """Hits of the per-category majority answer (the best constant answer on this split)."""
    majority = majority_answers(annotations)
    return {str(r["question_id"]): (r.get("category", OVERALL),
                                    majority[r.get("category", OVERALL)] == normalize_answer(r["answer"]))
            for r in annotations}


@dataclass(frozen=True)
class Cell:
    k: int
    n: int
    low: float
    high: float
    p_value: float | None = None

    @property
    def pct(self) -> float:
        return 100.0 * self.k / self.n if self.n else 0.0

    def markdown(self) -> str:
        p = "" if self.p_value is None else f", p{format_p(self.p_value)}"
        return f"{self.pct:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]{p}"


def format_p(p: float) -> str:
    """``=0.016`` or ``<0.001`` (to follow a ``p``)."""
    return f"={p:.2g}" if p >= 0.001 else "<0.001"


def _select(hits: Hits, category: str) -> dict[str, bool]:
    return {q: h for q, (c, h) in hits.items() if category in (OVERALL, c)}


def cells(hits: Hits, categories: Sequence[str], reference: Hits | None = None) -> dict[str, Cell]:
    """Per category (and overall): k/n, Wilson interval and, with ``reference``, the McNemar p-value."""
    out = {}
    for cat in (*categories, OVERALL):
        mine = _select(hits, cat)
        k, n = sum(mine.values()), len(mine)
        lo, hi = wilson_interval(k, n)
        p = None
        if reference is not None:
            ref = _select(reference, cat)
            common = sorted(set(mine) & set(ref))
            p = compare_paired([ref[q] for q in common], [mine[q] for q in common]).p_value
        out[cat] = Cell(k, n, lo, hi, p)
    return out


def markdown_table(rows: Sequence[tuple[str, Hits | None, Sequence[str]]], categories: Sequence[str],
                   extra_headers: Sequence[str], reference: str) -> tuple[str, list[str]]:
    """(table, significant findings) for ``rows`` of (name, hits or None when failed, extra cells).

    Every non-reference row's cells carry the McNemar p-value against the row named ``reference``.
    """
    ref_hits = next((h for name, h, _ in rows if name == reference and h is not None), None)
    any_hits = next((h for _, h, _ in rows if h is not None), None)
    counts = cells(any_hits, categories) if any_hits else {}
    heads = [f"{c} (n={counts[c].n})" if c in counts else c for c in (*categories, OVERALL)]
    lines = ["| variant | " + " | ".join([*heads, *extra_headers]) + " |",
             "|" + "---|" * (1 + len(heads) + len(extra_headers))]
    findings = []
    base = cells(ref_hits, categories) if ref_hits is not None else {}
    for name, hits, extra in rows:
        if hits is None:
            lines.append(f"| {name} | " + " | ".join(["failed"] * len(heads) + list(extra)) + " |")
            continue
        row = cells(hits, categories, ref_hits if ref_hits is not None and name != reference else None)
        lines.append(f"| {name} | " + " | ".join([row[c].markdown() for c in (*categories, OVERALL)] + list(extra))
                     + " |")
        if name != reference and ref_hits is not None:
            for c in (*categories, OVERALL):
                if row[c].p_value is not None and row[c].p_value < ALPHA:
                    direction = "above" if row[c].pct > base[c].pct else "below"
                    findings.append(f"{name} {direction} {reference} on {c} (p{format_p(row[c].p_value)})")
    return "\n".join(lines), findings


def significance_sentence(findings: Sequence[str], reference: str) -> str:
    """One sentence saying which differences from ``reference`` are significant at p < 0.05."""
    test = "exact McNemar, two-sided, no multiple-comparison correction"
    if not findings:
        return f"No difference from {reference} is significant at p < {ALPHA} ({test})."
    return f"Significant at p < {ALPHA} ({test}): " + "; ".join(findings) + "."
