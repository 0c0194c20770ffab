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
from pathlib import Path
from typing import Any

from llava.eval.eval_textvqa import normalize_answer
from llava.eval.spatial_scoring import is_correct, majority_answers
from llava.eval.stats import Z95, compare_paired, paired_difference_interval, wilson_interval

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


@dataclass(frozen=True)
class Drop:
    """Accuracy without minus with permuted image tokens on the same n questions (percentage points), its
    95% paired interval (Newcombe) and the exact McNemar p of normal vs permuted."""

    n: int
    drop: float
    low: float
    high: float
    p_value: float

    def markdown(self) -> str:
        return f"{self.drop:+.1f} [{self.low:+.1f}, {self.high:+.1f}], p{format_p(self.p_value)}"


def permutation_drops(hits: Hits, permuted: Hits, categories: Sequence[str]) -> dict[str, Drop]:
    """Per category (and overall): the accuracy drop from ``hits`` to ``permuted`` on their common questions."""
    out = {}
    for cat in (*categories, OVERALL):
        mine, perm = _select(hits, cat), _select(permuted, cat)
        common = sorted(set(mine) & set(perm))
        normal, shuffled = [mine[q] for q in common], [perm[q] for q in common]
        diff, low, high = paired_difference_interval(normal, shuffled)
        out[cat] = Drop(len(common), 100 * diff, 100 * low, 100 * high,
                        compare_paired(normal, shuffled).p_value)
    return out


STRONG = 0.01
"""The level at which the explanation calls a difference from the majority baseline or a drop clear."""


@dataclass(frozen=True)
class VariantResult:
    """What :func:`explain` needs of one variant: its hits, its hits with permuted image tokens and the
    image/text token-norm ratio (None when not measured)."""

    name: str
    hits: Hits
    permuted: Hits | None = None
    norm_ratio: float | None = None


def _vs_majority(v: VariantResult, majority: Hits, cat: str) -> str:
    mine, base = cells(v.hits, (cat,), majority)[cat], cells(majority, (cat,))[cat]
    gap = mine.pct - base.pct
    verdict = "clearly above" if gap > 0 and mine.p_value < STRONG else (
        "below" if gap < 0 and mine.p_value < ALPHA else "not clearly above")
    return f"{cat} {mine.pct:.1f}% vs {base.pct:.1f}% ({gap:+.1f} points, p{format_p(mine.p_value)}: {verdict})"


def _uses_position(drops: Mapping[str, Drop], position: Sequence[str]) -> list[str]:
    return [c for c in position if drops[c].drop > 0 and drops[c].p_value < STRONG]


def explain(results: Sequence[VariantResult], majority: Hits, categories: Sequence[str], control: str,
            position: Sequence[str]) -> list[str]:
    """Markdown bullet lines, every statement computed from the numbers: per variant whether it beats the
    majority baseline on the position categories, whether permuting its image tokens hurts them (it uses
    position) while the position-free ``control`` category stays (a sanity check of the probe), and its
    norm ratio; then what the table cannot show."""
    lines = []
    for v in results:
        parts = ["; ".join(_vs_majority(v, majority, c) for c in position)]
        if v.permuted is not None:
            drops = permutation_drops(v.hits, v.permuted, categories)
            used = _uses_position(drops, position)
            parts.append("permuting its image tokens " + (
                f"costs {', '.join(f'{c} {drops[c].drop:.1f} points' for c in used)} (p < {STRONG}): it uses "
                "where the image tokens are" if used else f"costs no position category significantly (p < {STRONG})"))
            ctl = drops[control]
            parts.append(f"{control} (position-free control) {ctl.drop:+.1f} points, p{format_p(ctl.p_value)}"
                         + (" — NOT ≈ 0: the probe also moved a position-free answer" if ctl.p_value < ALPHA
                            else " (not significant, as it should be)"))
        if v.norm_ratio is not None:
            parts.append(f"image tokens {v.norm_ratio:.2g}x the text embeddings' mean norm at the LLM input")
        lines.append(f"- **{v.name}**: " + "; ".join(parts) + ".")
    n = min((cells(majority, categories)[c].n for c in categories), default=0)
    half = 100 * Z95 * (0.25 / n) ** 0.5 if n else 100.0
    lines.append(
        f"- What this cannot show: a tiny random CLIP (frozen) and a small LLM trained for minutes on synthetic "
        f"shapes; with n = {n} questions per category an accuracy is known to about ±{half:.0f} points (95%), so "
        f"smaller differences between variants are not resolved, and the {len(results) * (len(categories) + 1)} "
        "normal-vs-permuted tests, like the variant-vs-vanilla ones, are uncorrected. The numbers say how the flags "
        "behave on this toy, not how they behave at the paper's scale.")
    return lines


def plot(rows: Sequence[Mapping[str, Any]], majority: Hits | None, path: str | Path, categories: Sequence[str],
         llm_name: str = "tiny") -> None:
    """Grouped bars with 95% Wilson error bars per category for each variant; the majority baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = [*categories, OVERALL]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    shown = [r for r in rows if r.get("hits") and not r.get("error")]
    width = 0.8 / max(1, len(shown))
    for i, r in enumerate(shown):
        stats = cells(r["hits"], categories)
        xs = [j + (i - (len(shown) - 1) / 2) * width for j in range(len(cats))]
        pct = [stats[c].pct for c in cats]
        err = [[max(0.0, p - 100 * stats[c].low) for p, c in zip(pct, cats)],
               [max(0.0, 100 * stats[c].high - p) for p, c in zip(pct, cats)]]
        ax.bar(xs, pct, width, yerr=err, capsize=2, label=r["name"])
    if majority:
        base = cells(majority, categories)
        ax.hlines([base[c].pct for c in cats], [j - 0.42 for j in range(len(cats))],
                  [j + 0.42 for j in range(len(cats))], colors="black", linestyles="dashed", label="majority baseline")
    ax.set_xticks(range(len(cats)), [c.replace("_", "\n") for c in cats])
    ax.set_ylabel("accuracy (%), 95% Wilson interval")
    ax.set_ylim(0, 100)
    ax.set_title("Spatial benchmark: LLaVA variants trained on CPU ("
                 + ("SmolLM2-135M-Instruct" if llm_name == "smollm2" else "tiny random LLM") + ")")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
