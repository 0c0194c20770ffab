"""Visible progress: one line per update with the run's label, step/total, loss, elapsed time and ETA.

``[progress] vanilla/stage1 step 12/40 (30%) loss 3.2104 elapsed 0:45 ETA 1:45`` — printed by rank 0
at every logging step and at most every ``interval_s`` seconds between them, and a summary line at
the end. Lines start with ``[progress]`` so a wrapper (the demo) can show them as one updating
console line while the full output goes to a log file.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

PREFIX = "[progress]"


def clock(seconds: float) -> str:
    """``h:mm:ss`` or ``m:ss``."""
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressCallback(TrainerCallback):
    """Prints ``[progress]`` lines on the main process (see the module docstring)."""

    def __init__(self, label: str, interval_s: float = 10.0) -> None:
        self.label, self.interval_s = label, interval_s
        self._start = self._first_step_at = self._last_print = None
        self._first_step = 0
        self._loss: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = self._last_print = time.monotonic()
        self._first_step = state.global_step  # > 0 after a resume: the ETA uses this run's rate

    def _line(self, state: Any) -> str:
        now = time.monotonic()
        done, total = state.global_step, state.max_steps
        rate_steps = done - self._first_step
        elapsed = now - self._start
        eta = elapsed / rate_steps * (total - done) if rate_steps > 0 and total else None
        pct = f" ({100 * done / total:.0f}%)" if total else ""
        loss = f" loss {self._loss:.4f}" if self._loss is not None else ""
        return (f"{PREFIX} {self.label} step {done}/{total}{pct}{loss} elapsed {clock(elapsed)} "
                f"ETA {clock(eta) if eta is not None else '?'}")

    def _print(self, state: Any) -> None:
        if state.is_world_process_zero:
            print(self._line(state), flush=True)
        self._last_print = time.monotonic()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self._loss = float(logs["loss"])
            self._print(state)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        if not metrics or not state.is_world_process_zero:
            return
        shown = [f"{key[len('eval_'):]} {metrics[key]:.4f}" for key in ("eval_loss", "eval_accuracy") if key in metrics]
        print(f"{PREFIX} {self.label} validation at step {state.global_step}/{state.max_steps}: "
              + (", ".join(shown) or "no supervised tokens"), flush=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if getattr(control, "should_log", False):  # a log follows this step: on_log prints it with its loss
            return
        if self._last_print is not None and time.monotonic() - self._last_print >= self.interval_s:
            self._print(state)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero and self._start is not None:
            loss = f", last loss {self._loss:.4f}" if self._loss is not None else ""
            print(f"{PREFIX} {self.label} done: {state.global_step}/{state.max_steps} steps in "
                  f"{clock(time.monotonic() - self._start)}{loss}", flush=True)
