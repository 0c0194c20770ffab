"""Run lmms-eval's CLI and fail when a task failed: lmms-eval 0.7.3 prints the traceback of a task that crashed
and still exits 0 (no results file then, or one without the task).

    python -m llava.eval.lmms_eval_run --model llava_beyond --model_args pretrained=CKPT --tasks pope,gqa \\
        --output_path results/ [any other lmms-eval flag]

passes every argument to ``python -m lmms_eval`` unchanged, then reads the ``*_results.json`` files it wrote under
``--output_path`` during this run. Exit status: lmms-eval's own when it is not 0; 1 when a requested task (or group)
has no results, one line per such task; 0 otherwise. ``--output_path`` and ``--tasks`` are required (exit 2).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in ``argv`` (``--flag v`` or ``--flag=v``), else None."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
    return None


def reported_tasks(results_files: Iterable[Path]) -> set[str]:
    """Every task and group that has results in lmms-eval's ``*_results.json`` files."""
    names: set[str] = set()
    for path in results_files:
        report = json.loads(path.read_text())
        for key in ("results", "groups"):
            names |= set(report.get(key) or {})
    return names


def failed_tasks(requested: str, results_files: Iterable[Path]) -> list[str]:
    """The tasks of ``--tasks`` (comma separated) that none of ``results_files`` reports, in the given order."""
    done = reported_tasks(results_files)
    return [t for t in (x.strip() for x in requested.split(",")) if t and t not in done]


def new_results(output_path: str, since: float) -> list[Path]:
    """The ``*_results.json`` files under ``output_path`` written at or after ``since`` (a ``time.time()``)."""
    root = Path(output_path)
    return sorted(p for p in root.rglob("*_results.json") if p.stat().st_mtime >= since) if root.exists() else []


def main(argv: Sequence[str] | None = None) -> int:
    """Run lmms-eval with ``argv``; 1 when a requested task has no results, 2 on a usage error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    output_path, tasks = flag_value(argv, "--output_path"), flag_value(argv, "--tasks")
    if not output_path or not tasks:
        print("error: pass --tasks and --output_path (the results file is where failed tasks are found)",
              file=sys.stderr)
        return 2
    start = time.time() - 1  # file systems with 1 s timestamps
    code = subprocess.call([sys.executable, "-m", "lmms_eval", *argv])
    if code != 0:
        return code
    failed = failed_tasks(tasks, new_results(output_path, start))
    for task in failed:
        print(f"error: lmms-eval task {task!r} has no results under {output_path} (it failed: see the traceback "
              "above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
