"""The lmms-eval wrapper's result check (no lmms-eval needed): a requested task without results is a failure."""

from __future__ import annotations

import json
import os
import time

from llava.eval import lmms_eval_run as run


def _results(path, results: dict, groups: dict | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"results": results, **({"groups": groups} if groups else {})}))
    return path


def test_flag_value_both_spellings():
    assert run.flag_value(["--tasks", "a,b", "--output_path=out"], "--tasks") == "a,b"
    assert run.flag_value(["--tasks", "a,b", "--output_path=out"], "--output_path") == "out"
    assert run.flag_value(["--tasks"], "--tasks") is None


def test_failed_tasks_are_the_requested_ones_without_results(tmp_path):
    files = [_results(tmp_path / "m" / "x_results.json", {"pope": {}, "mme": {}}, {"mmbench": {}})]
    assert run.failed_tasks("pope, gqa,mmbench,mme,textvqa_val", files) == ["gqa", "textvqa_val"]
    assert run.failed_tasks("pope", files) == []
    assert run.failed_tasks("pope", []) == ["pope"]  # lmms-eval wrote nothing: it failed


def test_only_this_runs_results_count(tmp_path):
    old = _results(tmp_path / "m" / "old_results.json", {"gqa": {}})
    past = time.time() - 3600
    os.utime(old, (past, past))
    new = _results(tmp_path / "m" / "new_results.json", {"pope": {}})
    assert run.new_results(str(tmp_path), time.time() - 60) == [new]
    assert run.new_results(str(tmp_path / "missing"), 0) == []


def test_usage_error_is_one_line_exit_2(capsys):
    assert run.main(["--model", "llava_beyond", "--tasks", "pope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--output_path" in err[0]
