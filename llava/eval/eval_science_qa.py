"""ScienceQA multiple-choice scorer: parse the predicted option letter and compare with the answer.

    python -m llava.eval.eval_science_qa --base-dir ScienceQA/data/scienceqa --result-file answers.jsonl \\
        [--split test] [--output-file scores.json] [--output-result predictions.json]

``--base-dir`` holds upstream's ``problems.json`` (``{pid: {"choices": [...], "answer": index, ...}}``) and
``pid_splits.json`` (``{split: [pid, ...]}``); ``--problems-file`` may point at a problems JSON directly
(then every problem in it is scored). The answers file's ``question_id`` is the problem id.

Letter parsing (:func:`parse_letter`): "B", "B.", "(B)", "B) text", "B. text", "The answer is B." all give
"B"; anything else (including an empty answer or a letter beyond the problem's choices) is
unparsable and counted wrong. Upstream replaces unparsable answers by a random choice; we don't,
so scores are deterministic, and the count of unparsable answers is reported.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llava.eval.eval_textvqa import predictions_by_id, read_jsonl_or_json

OPTIONS = ("A", "B", "C", "D", "E")
_PATTERNS = (
    re.compile(r"^\(?([A-Z])\)?\s*$"),
    re.compile(r"^\(?([A-Z])[.):]\s*(.*)$", re.S),
    re.compile(r"answer is:?\s*\(?([A-Z])\)?(?:[.)\s]|$)", re.I),
)


def parse_letter(text: str, num_choices: int, options: Sequence[str] = OPTIONS) -> str | None:
    """The option letter in a generated answer, or None when it has none valid for ``num_choices``."""
    text = str(text).strip()
    valid = set(options[:num_choices])
    for pattern in _PATTERNS:
        m = pattern.search(text)
        if m and m.group(1).upper() in valid:
            return m.group(1).upper()
    return None


def score(problems: dict[str, Any], pids: Sequence[str], predictions: dict[str, str],
          options: Sequence[str] = OPTIONS) -> dict[str, Any]:
    """``{"accuracy": %, "correct", "total", "unparsable", "missing", "results": {pid: letter|None}}``."""
    if not pids:
        raise ValueError("no problems to score (check --split / --problems-file)")
    correct = unparsable = missing = 0
    results: dict[str, str | None] = {}
    for pid in pids:
        prob = problems[pid]
        if pid not in predictions:
            missing += 1
        letter = parse_letter(predictions.get(pid, ""), len(prob["choices"]), options)
        results[pid] = letter
        if letter is None:
            unparsable += 1
        elif options.index(letter) == int(prob["answer"]):
            correct += 1
    return {"accuracy": 100.0 * correct / len(pids), "correct": correct, "total": len(pids),
            "unparsable": unparsable, "missing": missing, "results": results}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry point; prints and returns the metrics."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-dir", default=None)
    p.add_argument("--problems-file", default=None)
    p.add_argument("--result-file", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--output-file", default=None)
    p.add_argument("--output-result", default=None)
    p.add_argument("--options", default="A,B,C,D,E")
    a = p.parse_args(argv)
    options = tuple(o.strip() for o in a.options.split(","))
    if a.problems_file:
        problems = read_jsonl_or_json(a.problems_file, "--problems-file")
        pids = list(problems)
    elif a.base_dir:
        problems = read_jsonl_or_json(Path(a.base_dir) / "problems.json", "--base-dir problems.json")
        splits = read_jsonl_or_json(Path(a.base_dir) / "pid_splits.json", "--base-dir pid_splits.json")
        if a.split not in splits:
            p.error(f"--split {a.split!r} not in {Path(a.base_dir) / 'pid_splits.json'}; has {sorted(splits)}")
        pids = [str(x) for x in splits[a.split]]
    else:
        p.error("give --base-dir (problems.json + pid_splits.json) or --problems-file")
    problems = {str(k): v for k, v in problems.items()}
    metrics = score(problems, pids, predictions_by_id(a.result_file), options)
    print(f"Total: {metrics['total']}, Correct: {metrics['correct']}, Accuracy: {metrics['accuracy']:.2f}%, "
          f"Unparsable: {metrics['unparsable']}, Missing: {metrics['missing']}")
    if a.output_file:
        summary = {k: v for k, v in metrics.items() if k != "results"}
        Path(a.output_file).write_text(json.dumps(summary, indent=1) + "\n")
    if a.output_result:
        Path(a.output_result).write_text(json.dumps(metrics["results"], indent=1) + "\n")
    return metrics


if __name__ == "__main__":
    main()
