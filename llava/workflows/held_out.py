"""Held-out evaluation of a three-stage workflow stage: answer the questions with the stage's output
(:mod:`llava.eval.model_vqa_loader`), score them by exact match per category (:mod:`llava.eval.eval_spatial`).

Writes ``<stage folder>/eval/{answers.jsonl,eval.log,metrics.json,settings.json}``; ``settings.json`` records
the evaluation's settings and the checksums of its question/answer files, so a stage that was not retrained is
evaluated again only when they change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llava.utils.atomic import atomic_write_json
from llava.workflows.stage_records import Checksums, StageCheck, load_json

if TYPE_CHECKING:
    from llava.workflows.plan import EvalConfig, Runner, StageStep, WorkflowConfig


def log_tail(log: Path, n: int = 3000) -> str:
    """The last ``n`` characters of a log file."""
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"


def eval_command(step: StageStep, ev: EvalConfig, answers_file: Path, device: str) -> list[str]:
    """The model_vqa_loader command that answers the held-out questions with a stage's output."""
    cmd = [sys.executable, "-m", "llava.eval.model_vqa_loader", "--model-path", step.output_dir,
           "--image-folder", ev.image_folder, "--question-file", ev.questions, "--answers-file", str(answers_file),
           "--batch-size", str(ev.batch_size), "--max_new_tokens", str(ev.max_new_tokens)]
    if step.eval_base:
        cmd += ["--model-base", step.eval_base]
    if ev.conv_mode:
        cmd += ["--conv-mode", ev.conv_mode]
    if device == "cpu":
        cmd += ["--device", "cpu"]
    return cmd


def evaluate_step(step: StageStep, cfg: WorkflowConfig, runner: Runner) -> dict[str, Any]:
    """Answer and score the held-out questions; writes ``stageN/eval/metrics.json`` and returns the metrics."""
    from llava.eval.eval_spatial import evaluate

    assert cfg.eval is not None
    eval_dir = Path(step.stage_dir) / "eval"
    answers = eval_dir / "answers.jsonl"
    log = eval_dir / "eval.log"
    rc = runner(eval_command(step, cfg.eval, answers, cfg.device), {}, log)
    if rc != 0:
        raise RuntimeError(f"evaluation of stage {step.stage} failed (rc={rc}); see {log}:\n{log_tail(log)}")
    metrics = evaluate(cfg.eval.answers, answers)
    (eval_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def eval_settings(ev: EvalConfig, sums: Checksums) -> dict[str, Any]:
    """What a held-out evaluation ran with (its config and the checksums of its question/answer files)."""
    return {"questions": ev.questions, "answers": ev.answers, "image_folder": ev.image_folder,
            "batch_size": ev.batch_size, "max_new_tokens": ev.max_new_tokens, "conv_mode": ev.conv_mode,
            "checksums": {"questions": sums.of(ev.questions), "answers": sums.of(ev.answers)}}


def held_out(check: StageCheck, cfg: WorkflowConfig, runner: Runner, sums: Checksums) -> dict[str, Any]:
    """The stage's held-out metrics: reused when the stage was not retrained and ``eval/settings.json`` equals
    this evaluation's settings, otherwise evaluated (and recorded)."""
    assert cfg.eval is not None
    eval_dir = Path(check.step.stage_dir) / "eval"
    want = eval_settings(cfg.eval, sums)
    metrics = load_json(eval_dir / "metrics.json")
    if check.action == "skip" and metrics is not None and load_json(eval_dir / "settings.json") == want:
        return metrics
    for stale in ("metrics.json", "settings.json"):
        (eval_dir / stale).unlink(missing_ok=True)
    metrics = evaluate_step(check.step, cfg, runner)
    atomic_write_json(eval_dir / "settings.json", want)
    return metrics
