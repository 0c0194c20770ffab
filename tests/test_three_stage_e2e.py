"""Three-stage workflow end to end: the real stage scripts on tiny models, validating every step (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_three_stage import _assert_plan_matches_folders

from llava.data.convert_table import main as table_main

pytestmark = pytest.mark.slow


def _domain_data(tmp_path: Path):
    """Shapes images; general captions for stage 1; the first QA turn of each image as a question table
    converted with convert_table (domain data + eval files for 4 questions)."""
    from helpers_data import write_shapes_dataset

    data = write_shapes_dataset(tmp_path / "data", n=12, text_only=0)
    table = tmp_path / "domain.jsonl"
    rows = [{"q": c["conversations"][0]["value"].replace("<image>", "").strip(), "a": c["conversations"][1]["value"],
             "image": c["image"], "id": c["id"], "kind": "shape"}
            for c in json.loads(Path(data.finetune_json).read_text())]
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    domain, qs, ans = tmp_path / "domain.json", tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    table_main(["--input", str(table), "--output", str(domain), "--question-col", "q", "--answer-col", "a",
                "--id-col", "id", "--category-col", "kind", "--questions-out", str(qs), "--answers-out", str(ans)])
    for f in (qs, ans):  # evaluate on 4 questions
        f.write_text("".join(f.read_text().splitlines(keepends=True)[:4]))
    return data, domain, qs, ans


def _assert_e2e_stage(root: Path, folder: str, steps: int) -> dict:
    """The stage's trainer_state.json has eval entries (every step with EVAL_STEPS=1), the last at the final
    step, and its row in summary.md shows the last one."""
    state = json.loads((root / folder / "model" / "trainer_state.json").read_text())
    evals = [e for e in state["log_history"] if "eval_loss" in e]
    assert state["global_step"] == steps and [e["step"] for e in evals] == list(range(1, steps + 1)), folder
    assert 0.0 <= evals[-1]["eval_accuracy"] <= 1.0 and evals[-1]["eval_tokens"] > 0
    row = [ln for ln in (root / "summary.md").read_text().splitlines() if f"| {folder} |" in ln]
    assert len(row) == 1 and f"| {evals[-1]['eval_loss']:.4f} | {evals[-1]['eval_accuracy']:.4f} |" in row[0]
    return evals[-1]


def test_three_stage_sh_123_then_23_then_a_changed_rerun(tmp_path, tiny_llama, tiny_clip):
    """STAGES=1,2,3 then STAGES=2,3 into one OUTPUT_ROOT, validating every step: five folders, the summary
    with the three pictures and the final validation values, plan.json equal to the folders. Then the 2-3
    chain rerun with another STAGE3_LR is refused, and forced (one chain trained for both checks: the
    suite's time)."""
    from e2e_helpers import _run

    data, domain, qs, ans = _domain_data(tmp_path)
    root = tmp_path / "run"
    common = dict(OUTPUT_ROOT=root, MODEL_NAME=tiny_llama, VISION_TOWER=tiny_clip, STAGE1_DATA=data.pretrain_json,
                  STAGE1_IMAGES=data.image_folder, STAGE1_EVAL_DATA=data.pretrain_json, DOMAIN_DATA=domain,
                  DOMAIN_IMAGES=data.image_folder, DOMAIN_EVAL_DATA=domain, EVAL_STEPS=1, NUM_GPUS=1, MAX_STEPS=2,
                  SAVE_STEPS=100, LR="1e-3")
    _run("scripts/three_stage.sh", tmp_path / "three_stage_123.log", "--normalize_projector", "True",
         STAGES="1,2,3", EVAL_QUESTIONS=qs, EVAL_ANSWERS=ans, EVAL_MAX_NEW_TOKENS=3, EVAL_BATCH_SIZE=4, **common)
    s1, s2 = (torch.load(root / f / "model" / "mm_projector.bin", weights_only=True) for f in ("stage1", "stage1-2"))
    key = "model.mm_projector.0.weight"
    assert not torch.equal(s1[key], s2[key])  # stage 2 trained on from stage 1's projector
    state = json.loads((root / "plan.json").read_text())
    assert state["stages"]["stage1-2"]["init_from"] == str((root / "stage1" / "model" / "mm_projector.bin").resolve())
    assert state["stages"]["stage1-2-3"]["env"]["PRETRAIN_MM_MLP_ADAPTER"] == str(
        (root / "stage1-2" / "model" / "mm_projector.bin").resolve())
    assert (root / "stage1-2-3" / "model" / "model.safetensors").exists()
    assert "--normalize_projector True" in (root / "stage1-2-3" / "train.log").read_text()
    for f in ("stage1", "stage1-2", "stage1-2-3"):
        metrics = json.loads((root / f / "eval" / "metrics.json").read_text())
        assert metrics["count"]["overall"] == 4 and metrics["missing"] == 0
    log12 = (root / "stage1-2" / "train.log").read_text()
    assert str(root.resolve() / "stage1" / "model" / "mm_projector.bin") in log12

    _run("scripts/three_stage.sh", tmp_path / "three_stage_23.log", "--normalize_projector", "True", STAGES="2,3",
         **common)
    assert (root / "stage2" / "model" / "mm_projector.bin").exists()
    assert (root / "stage2-3" / "model" / "model.safetensors").exists()
    log2 = (root / "stage2" / "train.log").read_text()
    launch = [ln for ln in log2.splitlines() if ln.startswith("[llava] deepspeed")]
    assert len(launch) == 1 and "--pretrain_mm_mlp_adapter" not in launch[0]  # stage 2 starts fresh
    assert "--eval_data_path" in launch[0] and "--eval_steps 1" in launch[0]
    log23 = (root / "stage2-3" / "train.log").read_text()
    assert str(root.resolve() / "stage2" / "model" / "mm_projector.bin") in log23
    state = _assert_plan_matches_folders(root)
    assert state["chains"] == {"1-2-3": ["stage1", "stage1-2", "stage1-2-3"], "2-3": ["stage2", "stage2-3"]}
    summary = (root / "summary.md").read_text()
    for picture in ("validation_loss.png", "accuracy.png", "chains.png"):
        assert (root / picture).stat().st_size > 1000 and f"]({picture})" in summary
    for f in ("stage1", "stage1-2", "stage1-2-3", "stage2", "stage2-3"):
        _assert_e2e_stage(root, f, 2)
    _rerun_with_changed_lr_refused_then_forced(tmp_path, root, common)


def _rerun_with_changed_lr_refused_then_forced(tmp_path: Path, root: Path, common: dict) -> None:
    """A rerun of STAGES=2,3 with another STAGE3_LR exits 2 with one line naming the difference and leaves
    plan.json as it was; FORCE=1 reruns stage 3 only (stage 2 is identical) and plan.json matches the folders
    again, the old stage-3 folder kept as ``.stale``."""
    from e2e_helpers import STAGE_TIMEOUT_S, _run, _start

    plan_before, log2_before = (root / "plan.json").read_bytes(), (root / "stage2" / "train.log").read_bytes()
    refused_log = tmp_path / "refused.log"
    proc = _start("scripts/three_stage.sh", refused_log, "--normalize_projector", "True", STAGES="2,3",
                  STAGE3_LR="1e-4", **common)
    assert proc.wait(timeout=STAGE_TIMEOUT_S) == 2
    text = refused_log.read_text().strip()
    assert "\n" not in text and "Traceback" not in text and text.startswith("three_stage: error: ")
    assert "stage 3 (stage2-3): LR 1e-3 -> 1e-4" in text and "FORCE=1" in text, text
    assert (root / "plan.json").read_bytes() == plan_before
    _run("scripts/three_stage.sh", tmp_path / "forced.log", "--normalize_projector", "True", STAGES="2,3",
         STAGE3_LR="1e-4", FORCE=1, **common)
    assert (root / "stage2" / "train.log").read_bytes() == log2_before  # identical stage 2: not rerun
    state = _assert_plan_matches_folders(root)
    assert state["stages"]["stage2-3"]["settings"]["env"]["LR"] == "1e-4"
    assert (root / "stage2-3.stale" / "stage.json").exists()
    _assert_e2e_stage(root, "stage2-3", 2)
    assert (root / "stage1-2-3" / "model" / "model.safetensors").exists()  # the other chain untouched
