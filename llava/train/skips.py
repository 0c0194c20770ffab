"""Every skip is named: ``skipped_samples.json`` (in each checkpoint and in the output folder) lists each skipped
sample as ``{index, id, category, path}``, merged over ranks, DataLoader workers and resumes; the end-of-run
report gives the count per category, the first few ids and the file's path."""

from __future__ import annotations

import json
import os
from typing import Any

from llava.data.preprocess import BAD_SAMPLE_CATEGORIES
from llava.utils.atomic import atomic_write_json

SKIPPED_FILE = "skipped_samples.json"
FIRST_IDS = 3


def restore_skipped(dataset: Any, checkpoint: str) -> None:
    """Load the checkpoint's record of skipped samples into ``dataset`` (exact counts after a resume)."""
    path = os.path.join(checkpoint, SKIPPED_FILE)
    if hasattr(dataset, "restore_status") and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            dataset.restore_status(json.load(f))


def first_ids_line(records: list[dict[str, Any]], path: str) -> str:
    """``listed in PATH; first ids: category: 'a', 'b', 'c' (+n); ...`` for the end-of-run report."""
    by_category: dict[str, list[str]] = {}
    for r in records:
        by_category.setdefault(r["category"], []).append(r["id"])
    order = (*BAD_SAMPLE_CATEGORIES, "tokenization_mismatch")  # the order of the count line
    parts = [f"{c}: " + ", ".join(repr(i) for i in ids[:FIRST_IDS]) + (f" (+{len(ids) - FIRST_IDS})"
                                                                      if len(ids) > FIRST_IDS else "")
             for c, ids in sorted(by_category.items(), key=lambda kv: order.index(kv[0]))]
    return f"listed in {path}; first ids: " + "; ".join(parts)


def report_skips(dataset: Any, training_args: Any, prefix: str = "") -> None:
    """The skip report over every rank (and every resumed run), printed once; the training set's list goes to
    ``<output_dir>/skipped_samples.json`` (the validation set's to ``eval_skipped_samples.json``)."""
    report_fn = getattr(dataset, "skip_report", None)
    if report_fn is None:
        return
    dataset.sync_across_ranks()  # collective: before the rank check
    if not training_args.should_save:
        return
    records = dataset.status_record()
    name = SKIPPED_FILE if not prefix else "eval_" + SKIPPED_FILE
    path = os.path.join(training_args.output_dir, name)
    atomic_write_json(path, records)
    report = report_fn()
    if report and training_args.should_log:
        print(prefix + report, flush=True)
        print(prefix + first_ids_line(records, path), flush=True)
