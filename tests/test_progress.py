"""Progress lines: the trainer callback's and the evaluation loop's format, and the clock."""

from __future__ import annotations

import time
from types import SimpleNamespace

from llava.eval.model_vqa_loader import eval_progress_line
from llava.train.progress import ProgressCallback, clock


def test_clock():
    assert clock(0) == "0:00" and clock(59.6) == "1:00" and clock(3725) == "1:02:05" and clock(-3) == "0:00"


def test_training_progress_lines(capsys, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    cb = ProgressCallback("vanilla/stage1", interval_s=10.0)
    state = SimpleNamespace(global_step=0, max_steps=40, is_world_process_zero=True)
    cb.on_train_begin(None, state, None)
    now[0], state.global_step = 130.0, 10
    cb.on_log(None, state, None, logs={"loss": 3.21044})
    now[0], state.global_step = 135.0, 11
    cb.on_step_end(None, state, None)  # 5 s since the last line: quiet
    now[0], state.global_step = 141.0, 12
    cb.on_step_end(None, state, None)  # 11 s: a line
    now[0], state.global_step = 160.0, 13
    cb.on_step_end(None, state, SimpleNamespace(should_log=True))  # a log follows: it prints, not the stale loss
    state.global_step = 40
    cb.on_train_end(None, state, None)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "[progress] vanilla/stage1 step 10/40 (25%) loss 3.2104 elapsed 0:30 ETA 1:30",
        "[progress] vanilla/stage1 step 12/40 (30%) loss 3.2104 elapsed 0:41 ETA 1:36",
        "[progress] vanilla/stage1 done: 40/40 steps in 1:00, last loss 3.2104",
    ]


def test_eval_progress_line(monkeypatch):
    monkeypatch.setattr(time, "monotonic", lambda: 20.0)
    assert eval_progress_line("vanilla/eval", 64, 600, 8.0) == \
        "[progress] vanilla/eval 64/600 questions elapsed 0:12 ETA 1:40"
