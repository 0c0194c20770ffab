"""The report of ``scripts/bench/packing.py``: its Markdown tables and the packed / padded ratios."""

from __future__ import annotations

from typing import Any

import numpy as np
from mix665k import MIXTURE

WASTE_GOAL, SPEEDUP_GOALS = 0.03, ((576, 1.3), (16, 1.8))  # issue 17's goals (packed vs padded)
LAYOUTS = ("padded", "packed", "packed+groups")  # packed+mask packs like packed (only attention differs)


def markdown(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table's lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def mixture_table(pool: list[dict[str, Any]], sample: list[dict[str, Any]]) -> list[str]:
    """The modelled composition, with text lengths as drawn on the pool."""
    total, cells = sum(s.count_k for s in MIXTURE), []
    for name, count, image, turns, q, a, tpw in [tuple(s) for s in MIXTURE] + [("total", total, *[None] * 5)]:
        text = [s["text"] for s in pool if name in ("total", s["source"])]
        cells.append([name, f"{count}K", f"{count / total:.1%}", {True: "yes", False: "no", None: ""}[image],
                      f"{turns[0]}-{turns[1]}" if turns else "", f"{q[0]:g} ({q[1]:g})" if q else "",
                      f"{a[0]:g} ({a[1]:g})" if a else "", tpw or "",
                      f"{np.mean(text):.0f} / {np.percentile(text, 95):.0f}",
                      sum(name in ("total", s["source"]) for s in sample)])
    return markdown(["source", "count", "share", "image", "turns", "question tok", "answer tok", "tok/word",
                     "text tok mean / p95 (drawn)", "in run"], cells)


def _median_range(spread: dict[str, float], fmt: str) -> str:
    """``median [low, high]`` (just the median for one run)."""
    if spread["low"] == spread["high"]:
        return fmt.format(spread["median"])
    return f"{fmt.format(spread['median'])} [{fmt.format(spread['low'])}, {fmt.format(spread['high'])}]"


def results_table(rows: list[dict[str, Any]]) -> list[str]:
    """One line per (image tokens, mode)."""
    cells = []
    for r in rows:
        base = next(b for b in rows if b["image_tokens"] == r["image_tokens"] and b["mode"] == "padded")
        cells.append([r["image_tokens"], r["mode"], f"{r['samples']} ({r['dropped']})", r["steps"],
                      f"{r['rows']:.1f} x {r['width']:.0f}", r["real"], r["processed"], f"{r['waste']:.1%}",
                      _median_range(r["tokens_per_s_spread"], "{:.0f}"), f"{r['seconds'] / r['samples']:.3f}",
                      f"{r['computed_cells'] / base['computed_cells']:.2f}x",
                      f"{r['useful_cells'] / r['computed_cells']:.0%}",
                      f"{r['rss_peak']:.0f}", f"{r['rss_delta']:.0f}"])
    return markdown(["image tok", "mode", "samples (dropped)", "steps", "rows x width (mean)", "real tok",
                     "processed", "waste", "useful tok/s", "s/sample", "attn cells computed vs padded",
                     "of them in-sample", "peak RSS MiB", "peak - start MiB"], cells)


def ratio_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """packed / padded ratios of the same run, with the issue's goals."""
    out = []
    for r in rows:
        base = next(b for b in rows if b["image_tokens"] == r["image_tokens"] and b["mode"] == "padded")
        if r is base:
            continue
        paired = [t0 / t for t, t0 in zip(r["repeat_seconds"], base["repeat_seconds"])]  # same repeat, same load
        goal, speed = dict(SPEEDUP_GOALS).get(r["image_tokens"]), float(np.median(paired))
        limit = base["processed"] / base["real"]
        out.append(dict(image_tokens=r["image_tokens"], mode=r["mode"], speedup=speed, speedup_goal=goal,
                        speedup_spread=dict(median=speed, low=min(paired), high=max(paired)), limit=limit,
                        of_limit=speed / limit,
                        speedup_met=None if goal is None else speed >= goal, waste=r["waste"],
                        padded_waste=base["waste"], waste_met=r["waste"] <= WASTE_GOAL,
                        rss_delta_ratio=r["rss_delta"] / max(base["rss_delta"], 1e-9),
                        rss_peak_ratio=r["rss_peak"] / base["rss_peak"],
                        cells_ratio=r["computed_cells"] / base["computed_cells"]))
    return out


def ratio_table(ratios: list[dict[str, Any]]) -> list[str]:
    """The ratios and whether each goal is met."""
    def met(flag: bool | None) -> str:
        return "n/a" if flag is None else ("met" if flag else "MISSED")

    cells = [[q["image_tokens"], q["mode"], _median_range(q["speedup_spread"], "{:.2f}x"),
              f"{q['limit']:.2f}x ({q['of_limit']:.0%})",
              "-" if q["speedup_goal"] is None else f">= {q['speedup_goal']}x: {met(q['speedup_met'])}",
              f"{q['waste']:.1%} ({q['padded_waste']:.1%})", f"<= {WASTE_GOAL:.0%}: {met(q['waste_met'])}",
              f"{q['rss_delta_ratio']:.2f}x", f"{q['rss_peak_ratio']:.2f}x", f"{q['cells_ratio']:.2f}x"]
             for q in ratios]
    return markdown(["image tok", "mode", "useful tok/s vs padded", "limit (of it)", "goal", "waste (padded)",
                     "waste goal",
                     "peak - start RSS vs padded", "peak RSS vs padded", "attn cells computed vs padded"], cells)


def full_scale_table(rows: list[dict[str, Any]], pool: int) -> list[str]:
    """Waste of every mode on the large pool."""
    return markdown(["image tok", "samples of the pool that fit", "mean length",
                     *(f"{m} waste (samples/row)" for m in LAYOUTS)],
                    [[r["image_tokens"], f"{r['samples']} of {pool}", f"{r['mean_length']:.0f}",
                      *(f"{r[m]:.1%} ({r[m + ' per row']:.2f})" for m in LAYOUTS)] for r in rows])


