"""Three-stage workflow: reruns never mix settings, chains share one output root, validation curves.

Fast tests with the fake runner of ``test_three_stage`` (it writes each stage's output marker and a
``trainer_state.json`` like train()'s): a rerun with changed settings (LR, args, inherited variables,
data file contents) is refused before anything runs and leaves ``plan.json`` and the folders unchanged;
``FORCE=1`` reruns the changed stage and every later one (also other chains' folders that continue it);
an identical rerun skips; ``plan.json`` equals the folders' records; ``STAGES=1,2,3`` then ``STAGES=2,3``
give a summary with the three pictures and the final validation values; curve offsets; k-fold mean/std
per stage on constructed numbers.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from test_three_stage import FakeRunner, _assert_plan_matches_folders, _env, fake_trainer_state

from llava.workflows import kfold
from llava.workflows.curves import StageLog, chain_offsets, load_stage_log
from llava.workflows.stage_records import SettingsChanged
from llava.workflows.three_stage import build_plan, config_from_env, main, run_plan

QUIET = {"log": lambda _: None}
FOLDERS_123 = ("stage1", "stage1-2", "stage1-2-3")


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _run(tmp_path: Path, **kw: str) -> FakeRunner:
    fake = FakeRunner()
    run_plan(config_from_env(_env(tmp_path, **kw)), fake, **QUIET)
    return fake


def test_rerun_with_changed_lr_refuses_listing_it_and_changes_nothing(tmp_path):
    _run(tmp_path)
    root = tmp_path / "run"
    before = _snapshot(root)
    fake = FakeRunner()
    cfg = config_from_env(_env(tmp_path, STAGE3_LR="1e-4", STAGE2_ARGS="--version plain", SEED="7"))
    with pytest.raises(SettingsChanged) as err:
        run_plan(cfg, fake, **QUIET)
    msg = str(err.value)
    assert "\n" not in msg and fake.calls == []
    assert "stage 3 (stage1-2-3): " in msg and "LR 2e-5 -> 1e-4" in msg
    assert re.search(r"stage 2 \(stage1-2\): args '[^']*--version v1' -> '[^']*--version plain'", msg)
    assert "stage 1 (stage1): SEED (unset) -> 7;" in msg  # inherited training variables are recorded too
    assert "FORCE=1 to rerun stage 1 (stage1) and every later stage (stage1-2, stage1-2-3)" in msg
    assert "new OUTPUT_ROOT" in msg
    assert _snapshot(root) == before  # plan.json, stage.json, models, summary: untouched


def test_force_reruns_the_changed_stage_and_every_later_one(tmp_path):
    _run(tmp_path)
    root = tmp_path / "run"
    fake = _run(tmp_path, STAGE3_LR="1e-4", FORCE="1")
    assert fake.stage_dirs() == ["stage1-2-3"]
    state = _assert_plan_matches_folders(root)
    assert state["stages"]["stage1-2-3"]["settings"]["env"]["LR"] == "1e-4"
    assert (root / "stage1-2-3.stale" / "stage.json").exists()  # the old run is kept aside, not mixed in
    fake = _run(tmp_path, STAGE3_LR="1e-4", STAGE2_ARGS="--version plain", FORCE="1")
    assert fake.stage_dirs() == ["stage1-2", "stage1-2-3"]  # stage 3 started from the old stage 2: reruns
    state = _assert_plan_matches_folders(root)
    assert state["stages"]["stage1-2"]["settings"]["args"][-2:] == ["--version", "plain"]
    assert _run(tmp_path, STAGE3_LR="1e-4", STAGE2_ARGS="--version plain").calls == []  # identical: skipped
    assert len(_run(tmp_path, STAGE3_LR="1e-4", STAGE2_ARGS="--version plain", FORCE="all").stage_dirs()) == 3


def test_changed_data_contents_same_path_detected_by_checksum(tmp_path):
    data = tmp_path / "slake.json"
    data.write_text(json.dumps([{"id": "a"}]))
    _run(tmp_path, DOMAIN_DATA=str(data))
    root = tmp_path / "run"
    sums = json.loads((root / "stage1-2" / "stage.json").read_text())["settings"]["checksums"]
    assert len(sums["data"]) == 64 and len(sums["init"]) == 64  # sha256 of the data and the start projector
    assert _run(tmp_path, DOMAIN_DATA=str(data)).calls == []
    data.write_text(json.dumps([{"id": "b"}]))
    before = _snapshot(root)
    with pytest.raises(SettingsChanged, match=r"stage 2 \(stage1-2\): DATA_PATH contents changed \(sha256 "
                                              r"[0-9a-f]{12} -> [0-9a-f]{12}\); stage 3 \(stage1-2-3\): DATA_PATH"):
        _run(tmp_path, DOMAIN_DATA=str(data))
    assert _snapshot(root) == before
    assert _run(tmp_path, DOMAIN_DATA=str(data), FORCE="1").stage_dirs() == ["stage1-2", "stage1-2-3"]


def test_changed_start_file_and_model_folder_detected(tmp_path):
    init = tmp_path / "init.bin"
    init.write_text("p0")
    _run(tmp_path, STAGES="2,3", INIT_PROJECTOR=str(init), STAGE3_SCRIPT="finetune_task.sh",
         STAGE2_SCRIPT="finetune.sh")
    root = tmp_path / "run"
    rec = json.loads((root / "stage2-3" / "stage.json").read_text())
    assert rec["settings"]["checksums"]["init"].startswith("folder:")  # stage 3 starts from stage 2's model folder
    init.write_text("p1")
    with pytest.raises(SettingsChanged, match=r"stage 2 \(stage2\): the file it starts from contents changed"):
        _run(tmp_path, STAGES="2,3", INIT_PROJECTOR=str(init), STAGE3_SCRIPT="finetune_task.sh",
             STAGE2_SCRIPT="finetune.sh")
    init.write_text("p0")
    (root / "stage2" / "model" / "config.json").write_text("edited")
    with pytest.raises(SettingsChanged, match=r"^[^;]*stage 3 \(stage2-3\): the file it starts from contents"):
        _run(tmp_path, STAGES="2,3", INIT_PROJECTOR=str(init), STAGE3_SCRIPT="finetune_task.sh",
             STAGE2_SCRIPT="finetune.sh")


def test_force_moves_aside_other_chains_that_continue_a_rerun_stage(tmp_path):
    _run(tmp_path)
    root = tmp_path / "run"
    with pytest.raises(SettingsChanged, match=r"every later stage \(stage1-2-3\)"):
        _run(tmp_path, STAGES="1,2", STAGE2_ARGS="--version plain")
    fake = _run(tmp_path, STAGES="1,2", STAGE2_ARGS="--version plain", FORCE="1")
    assert fake.stage_dirs() == ["stage1-2"]
    assert not (root / "stage1-2-3").exists() and (root / "stage1-2-3.stale").is_dir()
    state = _assert_plan_matches_folders(root)
    assert list(state["chains"]) == ["1-2"] and "stage1-2-3" not in state["stages"]
    assert "1-2-3" not in (root / "summary.md").read_text()
    assert _run(tmp_path, STAGE2_ARGS="--version plain").stage_dirs() == ["stage1-2-3"]  # only what is missing


def test_unfinished_stage_resumes_with_same_settings_refuses_other(tmp_path):
    class FailStage3(FakeRunner):
        def __call__(self, cmd, env, log):
            rc = super().__call__(cmd, env, log)
            if env.get("OUTPUT_DIR", "").endswith("stage1-2-3/model"):
                (Path(env["OUTPUT_DIR"]) / "checkpoint-2").mkdir()
                (Path(env["OUTPUT_DIR"]) / "config.json").unlink()
                return 1
            return rc

    with pytest.raises(RuntimeError, match="stage 3 .* failed"):
        run_plan(config_from_env(_env(tmp_path)), FailStage3(), **QUIET)
    root = tmp_path / "run"
    assert (root / "stage1-2-3" / "started.json").exists() and not (root / "stage1-2-3" / "stage.json").exists()
    state = json.loads((root / "plan.json").read_text())
    assert state["stages"]["stage1-2-3"]["finished"] is False  # plan.json says what the folder holds
    summary = (root / "summary.md").read_text()
    assert "| 1-2-3 |" not in summary and "chain 1-2-3: stage1-2-3 is not finished" in summary
    with pytest.raises(SettingsChanged, match=r"LR 2e-5 -> 3e-5, \(unfinished; its checkpoints would be resumed\)"):
        _run(tmp_path, STAGE3_LR="3e-5")
    seen: list[bool] = []

    class Check(FakeRunner):
        def __call__(self, cmd, env, log):
            seen.append((Path(env["OUTPUT_DIR"]) / "checkpoint-2").is_dir())
            return super().__call__(cmd, env, log)

    fake = Check()
    run_plan(config_from_env(_env(tmp_path)), fake, **QUIET)
    assert fake.stage_dirs() == ["stage1-2-3"] and seen == [True]  # resumed in place: checkpoints kept
    _assert_plan_matches_folders(root)


def test_123_then_23_share_the_root_summary_pictures_and_tables(tmp_path):
    val = tmp_path / "val.json"
    val.write_text("[]")
    kw = {"DOMAIN_EVAL_DATA": str(val), "STAGE1_EVAL_DATA": str(val), "EVAL_STEPS": "2", "STAGE3_EVAL_STEPS": "3"}
    first = _run(tmp_path, **kw)
    second = _run(tmp_path, STAGES="2,3", **kw)
    assert first.stage_dirs() == list(FOLDERS_123) and second.stage_dirs() == ["stage2", "stage2-3"]
    env3 = second.calls[-1][1]
    assert (env3["EVAL_DATA_PATH"], env3["EVAL_IMAGE_FOLDER"], env3["EVAL_STEPS"]) == (str(val), "/d/simg", "3")
    root = tmp_path / "run"
    state = _assert_plan_matches_folders(root)
    assert state["chains"] == {"1-2-3": list(FOLDERS_123), "2-3": ["stage2", "stage2-3"]}
    assert state["stages"]["stage2-3"]["settings"]["env"]["EVAL_STEPS"] == "3"
    summary = (root / "summary.md").read_text()
    for picture in ("validation_loss.png", "accuracy.png", "chains.png"):
        assert (root / picture).stat().st_size > 1000 and f"]({picture})" in summary
    for folder in (*FOLDERS_123, "stage2", "stage2-3"):
        last = [e for e in json.loads((root / folder / "model" / "trainer_state.json").read_text())["log_history"]
                if "eval_loss" in e][-1]
        row = [ln for ln in summary.splitlines() if f"| {folder} |" in ln][0]
        assert f"| {last['eval_loss']:.4f} | {last['eval_accuracy']:.4f} |" in row
    assert "| 2-3 | 2 domain_alignment | stage2 | 4 |" in summary
    assert _run(tmp_path, STAGES="2,3", **kw).calls == [] and _run(tmp_path, **kw).calls == []


def test_chain_offsets_put_stage_2_after_stage_1(tmp_path):
    val = tmp_path / "val.json"
    val.write_text("[]")
    _run(tmp_path, DOMAIN_EVAL_DATA=str(val), STAGE1_EVAL_DATA=str(val), EVAL_STEPS="2")
    root = tmp_path / "run"
    logs = [load_stage_log(root / f / "model", n) for n, f in enumerate(FOLDERS_123, 1)]
    assert [lg.total_steps for lg in logs] == [7, 4, 4]  # STAGE1_MAX_STEPS=7, fake default 4
    assert chain_offsets(logs) == [0, 7, 11]
    xs, ys = logs[1].series("eval_loss", chain_offsets(logs)[1])
    assert xs == [7 + 2, 7 + 4] and ys == [pytest.approx(3 / 2 + 1e-3), pytest.approx(3 / 4 + 1e-3)]
    assert logs[0].series("eval_loss")[0] == [2, 4, 6, 7]  # every EVAL_STEPS and the final step
    assert logs[2].series("accuracy", 11)[0][0] == 12
    empty = StageLog("stageX", 2, "", 0)
    assert empty.final_eval is None and chain_offsets([empty, logs[0]]) == [0, 0]


def test_validation_settings_resolution(tmp_path):
    plan = build_plan(config_from_env(_env(tmp_path, DOMAIN_EVAL_DATA="/v/dom.json", STAGE1_EVAL_DATA="/v/gen.json",
                                           STAGE3_EVAL_IMAGES="/v/img3", STAGE2_EVAL_STEPS="5", EVAL_STEPS="9")))
    got = [(s.env["EVAL_DATA_PATH"], s.env["EVAL_IMAGE_FOLDER"], s.env["EVAL_STEPS"]) for s in plan]
    assert got == [("/v/gen.json", "/d/gimg", "9"), ("/v/dom.json", "/d/simg", "5"), ("/v/dom.json", "/v/img3", "9")]
    s1, s2 = build_plan(config_from_env(_env(tmp_path, STAGES="1,2", STAGE2_EVAL_DATA="/v/x.json")))
    assert "EVAL_DATA_PATH" not in s1.env and s2.env["EVAL_STEPS"] == "100"
    with pytest.raises(ValueError, match="EVAL_DATA_PATH is set per stage by the workflow"):
        config_from_env(_env(tmp_path, EVAL_DATA_PATH="/v/x.json"))


def test_cli_refusal_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    _run(tmp_path)
    for k, v in _env(tmp_path, STAGE3_LR="1e-4").items():
        monkeypatch.setenv(k, v)
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("three_stage: error: ") and err.count("\n") == 1 and "LR 2e-5 -> 1e-4" in err
    monkeypatch.setenv("DRY_RUN", "1")
    assert main([]) == 0
    preview = json.loads(capsys.readouterr().out)
    assert [p["would"] for p in preview] == ["-", "-", "refused"]


def test_kfold_mean_std_per_stage_on_constructed_numbers(tmp_path):
    folds = [{"stage2/eval_loss": 1.0, "stage2/eval_accuracy": 0.5, "stage3/eval_loss": 0.4, "accuracy/overall": 50.0},
             {"stage2/eval_loss": 2.0, "stage2/eval_accuracy": 0.7, "stage3/eval_loss": 0.6, "accuracy/overall": 70.0},
             {"stage2/eval_loss": 3.0, "stage2/eval_accuracy": 0.6, "stage3/eval_loss": 0.8, "accuracy/overall": 60.0}]
    agg = kfold.aggregate(folds)
    assert agg["stage2/eval_loss"] == {"values": [1.0, 2.0, 3.0], "n": 3, "mean": 2.0, "std": 1.0}
    assert agg["stage2/eval_accuracy"]["mean"] == pytest.approx(0.6)
    assert agg["stage2/eval_accuracy"]["std"] == pytest.approx(0.1)
    assert agg["stage3/eval_loss"]["std"] == pytest.approx(math.sqrt(((0.2 ** 2) * 2) / 2))
    md = kfold.report_markdown({"2-3": agg}, 3)
    assert "| stage2/eval_loss | 2.0000 ± 1.0000 | 3 |" in md and "| accuracy/overall | 60.00 ± 10.00 | 3 |" in md
    assert "sample std (ddof=1) over the n folds" in md
    assert kfold.plot_stages({"2-3": agg}, tmp_path / "s.png", 3) and (tmp_path / "s.png").stat().st_size > 0


def test_fake_trainer_state_matches_trainer_layout():
    state = fake_trainer_state({"MAX_STEPS": "3", "EVAL_DATA_PATH": "v.json", "EVAL_STEPS": "2"})
    evals = [e["step"] for e in state["log_history"] if "eval_loss" in e]
    assert state["global_step"] == 3 and evals == [2, 3]  # the last eval entry is at the final step


def test_changed_held_out_settings_reevaluate_without_retraining(tmp_path):
    qs, ans = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    qs.write_text("".join(json.dumps({"question_id": i, "image": "a.png", "text": "q", "category": "c"}) + "\n"
                          for i in ("1", "2")))
    ans.write_text("".join(json.dumps({"question_id": i, "answer": "mri", "category": "c"}) + "\n" for i in ("1", "2")))
    kw = {"EVAL_QUESTIONS": str(qs), "EVAL_ANSWERS": str(ans)}
    _run(tmp_path, **kw)
    assert _run(tmp_path, **kw).calls == []  # same model, same evaluation: reused
    fake = _run(tmp_path, EVAL_MAX_NEW_TOKENS="4", **kw)
    assert fake.stage_dirs() == [] and len(fake.calls) == 3  # evaluated again, nothing retrained
    ans.write_text(ans.read_text().replace("mri", "ct"))
    assert len(_run(tmp_path, EVAL_MAX_NEW_TOKENS="4", **kw).calls) == 3  # answers' contents changed
    assert "| 1-2-3 | 3 instruction_tuning | stage1-2-3 | 4 |" in (tmp_path / "run" / "summary.md").read_text()
