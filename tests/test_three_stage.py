"""Three-stage workflow, converters, k-fold splitting/aggregation and the projection probe.

Fast tests check the plan (commands, env, folders, what each stage starts from) through a fake runner,
the SLAKE/table converters on hand-written records, fold splitting by image, mean/std on constructed fold
results, and the probe on synthetic features and on tiny checkpoints (reruns, chains and curves:
``test_three_stage_reruns``; the real scripts on tiny models: ``test_three_stage_e2e``).
"""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pytest
import torch

from llava.data.convert_slake import convert_slake
from llava.data.convert_slake import main as slake_main
from llava.data.convert_table import MissingFieldError
from llava.data.convert_table import main as table_main
from llava.probe.classifier import ProbeSettings, cross_validate, stratified_folds
from llava.workflows import kfold
from llava.workflows.three_stage import build_plan, config_from_env, run_plan


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The probe's MLPs are tiny: one thread avoids oversubscription on shared CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SLAKE = [
    {"img_id": 0, "img_name": "xmlab0/source.jpg", "question": "What modality is used to take this image?",
     "answer": "MRI", "q_lang": "en", "location": "Abdomen", "modality": "MRI", "answer_type": "OPEN",
     "base_type": "vqa", "content_type": "Modality", "triple": ["vhead", "_", "_"], "qid": 9},
    {"img_id": 0, "img_name": "xmlab0/source.jpg", "question": "这张图片是什么模态？", "answer": "核磁共振",
     "q_lang": "zh", "location": "Abdomen", "modality": "MRI", "answer_type": "OPEN", "base_type": "vqa",
     "content_type": "Modality", "qid": 10},
    {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "Is the lung healthy?", "answer": "No",
     "q_lang": "en", "location": "Lung", "modality": "X-Ray", "answer_type": "CLOSED", "base_type": "vqa",
     "content_type": "Abnormality", "qid": 11},
]


# ---------------------------------------------------------------- plan / orchestration


def _env(tmp_path: Path, **kw: str) -> dict[str, str]:
    env = {"OUTPUT_ROOT": str(tmp_path / "run"), "MODEL_NAME": "/m/llm", "STAGE1_DATA": "/d/general.json",
           "STAGE1_IMAGES": "/d/gimg", "DOMAIN_DATA": "/d/slake.json", "DOMAIN_IMAGES": "/d/simg", "DEVICE": "cpu",
           "STAGE1_MAX_STEPS": "7", "STAGE3_LR": "2e-5", "STAGE2_ARGS": "--version v1"}
    env.update(kw)
    return env


def fake_trainer_state(env: dict[str, str]) -> dict:
    """A ``trainer_state.json`` as train() leaves it: a training entry per step (loss, accuracy), with
    ``EVAL_DATA_PATH`` an eval entry every ``EVAL_STEPS`` steps and at the final step."""
    steps = int(env.get("MAX_STEPS", "4"))
    steps = steps if steps > 0 else 4
    lr = float(env.get("LR", "1e-3"))
    every = int(env["EVAL_STEPS"]) if env.get("EVAL_DATA_PATH") else 0
    history: list[dict] = []
    for s in range(1, steps + 1):
        history.append({"loss": 2.0 / s + lr, "accuracy": s / (steps + 1), "learning_rate": lr, "step": s,
                        "epoch": s / steps})
        if every and (s % every == 0 or s == steps):
            history.append({"eval_loss": 3.0 / s + lr, "eval_accuracy": s / (2 * steps), "eval_tokens": 10,
                            "step": s, "epoch": s / steps})
    history.append({"train_loss": 1.0, "train_runtime": 0.1, "step": steps, "epoch": 1.0})
    return {"global_step": steps, "max_steps": steps, "log_history": history}


class FakeRunner:
    """Records every command and writes the files the real stage / eval would write (a stage: its output
    marker and ``trainer_state.json``)."""

    def __init__(self, answer: str = "MRI") -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []
        self.answer = answer

    def stage_dirs(self) -> list[str]:
        """Folder names of the stages run, in order."""
        return [Path(env["OUTPUT_DIR"]).parent.name for _, env in self.calls if "OUTPUT_DIR" in env]

    def __call__(self, cmd: list[str], env: dict[str, str], log: Path) -> int:
        self.calls.append((cmd, dict(env)))
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("ok\n")
        if "OUTPUT_DIR" in env:
            out = Path(env["OUTPUT_DIR"])
            out.mkdir(parents=True, exist_ok=True)
            name = "mm_projector.bin" if Path(cmd[1]).name == "pretrain.sh" else "config.json"
            (out / name).write_text("x")
            (out / "trainer_state.json").write_text(json.dumps(fake_trainer_state(env)))
        else:
            qfile, afile = cmd[cmd.index("--question-file") + 1], cmd[cmd.index("--answers-file") + 1]
            qs = [json.loads(line) for line in Path(qfile).read_text().splitlines()]
            Path(afile).parent.mkdir(parents=True, exist_ok=True)
            Path(afile).write_text("".join(json.dumps({"question_id": q["question_id"], "text": self.answer}) + "\n"
                                           for q in qs))
        return 0


def _assert_plan_matches_folders(root: Path) -> dict:
    """Every plan.json entry of every chain equals the record in its stage folder."""
    state = json.loads((root / "plan.json").read_text())
    for folders in state["chains"].values():
        for f in folders:
            assert state["stages"][f] == json.loads((root / f / "stage.json").read_text()), f
    return state


def test_plan_123_chains_projectors(tmp_path):
    plan = build_plan(config_from_env(_env(tmp_path, STAGES="1,2,3"), ["--normalize_projector", "True"]))
    root = (tmp_path / "run").resolve()
    assert [s.stage for s in plan] == [1, 2, 3]
    s1, s2, s3 = plan
    assert [Path(s.script).name for s in plan] == ["pretrain.sh", "pretrain.sh", "finetune.sh"]
    assert s1.output_dir == str(root / "stage1" / "model") and s1.init_from is None
    assert s1.env["DATA_PATH"] == "/d/general.json" and s1.env["MAX_STEPS"] == "7"
    assert "--pretrain_mm_mlp_adapter" not in s1.args
    assert s2.init_from == str(root / "stage1" / "model" / "mm_projector.bin")
    assert s2.args[:2] == ["--pretrain_mm_mlp_adapter", s2.init_from]
    assert s2.args[2:] == ["--version", "v1", "--normalize_projector", "True"]
    assert s2.env["DATA_PATH"] == "/d/slake.json" and "MAX_STEPS" not in s2.env
    assert s2.stage_dir == str(root / "stage1-2") and s3.stage_dir == str(root / "stage1-2-3")
    assert s3.env["PRETRAIN_MM_MLP_ADAPTER"] == str(root / "stage1-2" / "model" / "mm_projector.bin")
    assert s3.env["LR"] == "2e-5" and s3.env["MODEL_NAME"] == "/m/llm"
    assert "EVAL_DATA_PATH" not in s3.env  # no validation data set
    assert s3.args == ["--normalize_projector", "True"]
    assert (s1.eval_base, s3.eval_base) == ("/m/llm", None)


def test_plan_23_starts_fresh_or_from_init(tmp_path):
    s2, s3 = build_plan(config_from_env(_env(tmp_path, STAGES="2,3")))
    assert s2.init_from is None and "--pretrain_mm_mlp_adapter" not in s2.args
    assert (Path(s2.stage_dir).name, Path(s3.stage_dir).name) == ("stage2", "stage2-3")  # not stage1-2
    assert s3.init_from == s2.projector
    s2b, _ = build_plan(config_from_env(_env(tmp_path, STAGES="2,3", INIT_PROJECTOR="/p/proj.bin")))
    assert s2b.init_from == "/p/proj.bin"


def test_plan_errors(tmp_path):
    with pytest.raises(ValueError, match="INIT_PROJECTOR"):
        build_plan(config_from_env(_env(tmp_path, STAGES="3")))
    with pytest.raises(ValueError, match="STAGES='3,1'"):
        config_from_env(_env(tmp_path, STAGES="3,1"))
    with pytest.raises(ValueError, match="not one the workflow knows"):
        build_plan(config_from_env(_env(tmp_path, STAGE2_SCRIPT="nope.sh")))
    with pytest.raises(ValueError, match="starts from a projector but stage 2 gives a model"):
        build_plan(config_from_env(_env(tmp_path, STAGE2_SCRIPT="finetune.sh")))
    lora_then_task = _env(tmp_path, STAGE2_SCRIPT="finetune_lora.sh", STAGE3_SCRIPT="finetune_task.sh")
    with pytest.raises(ValueError, match="merge"):
        build_plan(config_from_env(lora_then_task))
    s2, s3 = build_plan(config_from_env(_env(tmp_path, STAGES="2,3", STAGE3_SCRIPT="finetune_task.sh",
                                             STAGE2_SCRIPT="finetune.sh", INIT_PROJECTOR="/p.bin")))
    assert s3.env["MODEL_NAME"] == s2.output_dir


def test_run_plan_fake_runner_writes_folders_evals_and_skips_done(tmp_path):
    qs, ans = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    # two lines: eval_spatial's reader takes a one-line JSONL file for a single JSON object
    qs.write_text("".join(json.dumps({"question_id": i, "image": "a.png", "text": "modality?", "category": "OPEN"})
                          + "\n" for i in ("1", "2")))
    ans.write_text("".join(json.dumps({"question_id": i, "answer": "mri", "category": "OPEN"}) + "\n"
                           for i in ("1", "2")))
    cfg = config_from_env(_env(tmp_path, EVAL_QUESTIONS=str(qs), EVAL_ANSWERS=str(ans)))
    fake = FakeRunner()
    results = run_plan(cfg, fake, log=lambda _: None)
    assert len(fake.calls) == 6  # 3 stages + 3 evals
    root = tmp_path / "run"
    folders = ("stage1", "stage1-2", "stage1-2-3")
    for f in folders:
        assert (root / f / "stage.json").exists() and not (root / f / "started.json").exists()
        assert json.loads((root / f / "eval" / "metrics.json").read_text())["accuracy"]["overall"] == 100.0
    assert results[3]["accuracy"]["OPEN"] == 100.0
    eval_cmd = fake.calls[1][0]
    assert eval_cmd[eval_cmd.index("--model-base") + 1] == "/m/llm" and "--device" in eval_cmd
    assert "--model-base" not in fake.calls[5][0]  # stage 3 is a full model
    state = _assert_plan_matches_folders(root)  # plan.json describes exactly what the folders hold
    assert state["chains"] == {"1-2-3": list(folders)}
    assert state["stages"]["stage1-2"]["init_from"].endswith("stage1/model/mm_projector.bin")
    settings = state["stages"]["stage1-2-3"]["settings"]
    assert settings["env"]["LR"] == "2e-5" and settings["env"]["DEVICE"] == "cpu"
    assert settings["script"] == "finetune.sh"
    assert "| 1-2-3 | 3 instruction_tuning | stage1-2-3 |" in (root / "summary.md").read_text()
    fake2 = FakeRunner()
    logs: list[str] = []
    run_plan(cfg, fake2, log=logs.append)
    assert fake2.calls == []  # all finished with the same settings: nothing reruns
    assert sum("already finished" in line and "skipping" in line for line in logs) == 3
    assert json.loads((root / "plan.json").read_text()) == state


# ---------------------------------------------------------------- converters


def test_convert_slake_records_and_cli(tmp_path):
    recs = convert_slake(SLAKE, lang="en", category="content_type", image_prefix="imgs/")
    assert [r["id"] for r in recs] == ["slake_9", "slake_11"]
    human = {"from": "human", "value": "<image>\nWhat modality is used to take this image?"}
    assert recs[0] == {"id": "slake_9", "image": "imgs/xmlab0/source.jpg", "category": "Modality",
                       "conversations": [human, {"from": "gpt", "value": "MRI"}]}
    assert len(convert_slake(SLAKE, lang="all")) == 3
    src = tmp_path / "train.json"
    src.write_text(json.dumps(SLAKE, ensure_ascii=False))
    out, q, a = tmp_path / "out.json", tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    assert slake_main(["--input", str(src), "--output", str(out), "--questions-out", str(q), "--answers-out",
                       str(a)]) == 0
    assert len(json.loads(out.read_text())) == 2
    assert json.loads(a.read_text().splitlines()[1]) == {"question_id": "slake_11_0", "answer": "No",
                                                         "category": "CLOSED"}
    assert json.loads(q.read_text().splitlines()[0])["text"] == "What modality is used to take this image?"


def test_convert_slake_missing_field_names_record_and_field():
    bad = [dict(SLAKE[0]), {k: v for k, v in SLAKE[2].items() if k != "answer"}]
    with pytest.raises(MissingFieldError, match=r"qid=11.*'answer'"):
        convert_slake(bad)
    no_qid = [{k: v for k, v in SLAKE[0].items() if k != "qid"}]
    with pytest.raises(MissingFieldError, match=r"row 0.*'qid'"):
        convert_slake(no_qid)
    no_label = [{k: v for k, v in SLAKE[0].items() if k != "modality"}]
    with pytest.raises(MissingFieldError, match=r"'modality'"):
        convert_slake(no_label, category="modality")
    with pytest.raises(ValueError, match="not a SLAKE label field"):
        convert_slake(SLAKE, category="organ")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json"])
def test_convert_table_formats_columns_and_filter(tmp_path, fmt):
    rows = [{"Q": "What colour?", "A": "red", "img": "1.png", "key": "a", "lang": "en", "kind": "colour"},
            {"Q": "Where?", "A": "left", "img": "2.png", "key": "b", "lang": "de", "kind": "place"}]
    src = tmp_path / f"t.{fmt}"
    if fmt == "csv":
        with src.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif fmt == "jsonl":
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        src.write_text(json.dumps(rows))
    out = tmp_path / "o.json"
    table_main(["--input", str(src), "--output", str(out), "--question-col", "Q", "--answer-col", "A",
                "--image-col", "img", "--id-col", "key", "--category-col", "kind", "--where", "lang=en",
                "--image-prefix", "imgs/"])
    assert json.loads(out.read_text()) == [{"id": "a", "image": "imgs/1.png", "category": "colour", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]}]
    with pytest.raises(MissingFieldError, match=r"key='a'.*'question'.*it has: A, Q, img"):
        table_main(["--input", str(src), "--output", str(out), "--id-col", "key", "--answer-col", "A",
                    "--image-col", "img"])


# ---------------------------------------------------------------- k-fold


def _records(n_images: int, per_image: list[int]) -> list[dict]:
    recs = []
    for i in range(n_images):
        for j in range(per_image[i % len(per_image)]):
            recs.append({"id": f"{i}_{j}", "image": f"im{i}.png", "category": "c", "conversations": [
                {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]})
    recs.append({"id": "text", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]})
    return recs


def test_split_by_image_disjoint_covering_balanced():
    recs = _records(23, [1, 3, 2])
    folds = kfold.split_by_image(recs, 5, seed=1)
    flat = [i for f in folds for i in f]
    image_idx = [i for i, r in enumerate(recs) if r.get("image")]
    assert sorted(flat) == image_idx  # covers every image record once; text-only in none
    fold_of = {}
    for fi, f in enumerate(folds):
        for i in f:
            assert fold_of.setdefault(recs[i]["image"], fi) == fi  # one image -> one fold
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 3
    assert folds == kfold.split_by_image(recs, 5, seed=1) and folds != kfold.split_by_image(recs, 5, seed=2)
    with pytest.raises(ValueError, match="distinct images"):
        kfold.split_by_image(_records(3, [1]), 5)


def test_write_fold_no_leakage(tmp_path):
    recs = _records(10, [2])
    folds = kfold.split_by_image(recs, 3)
    for i in range(3):
        p = kfold.write_fold(recs, folds, i, tmp_path / f"f{i}")
        train_imgs = {r.get("image") for r in json.loads(Path(p["train"]).read_text())}
        test_imgs = {r["image"] for r in json.loads(Path(p["test"]).read_text())}
        assert not train_imgs & test_imgs and None in train_imgs  # text-only stays in training
        assert len(Path(p["questions"]).read_text().splitlines()) == len(folds[i])


def test_mean_std_and_aggregate_on_constructed_results():
    assert kfold.mean_std([1.0, 2.0, 3.0, 4.0]) == (2.5, pytest.approx(math.sqrt(5 / 3)))
    assert kfold.mean_std([7.0]) == (7.0, 0.0)
    agg = kfold.aggregate([{"accuracy/overall": 50.0, "accuracy/OPEN": 40.0}, {"accuracy/overall": 70.0},
                           {"accuracy/overall": 60.0, "accuracy/OPEN": 20.0}])
    assert agg["accuracy/overall"]["mean"] == 60.0 and agg["accuracy/overall"]["std"] == pytest.approx(10.0)
    assert agg["accuracy/OPEN"] == {"values": [40.0, 20.0], "n": 2, "mean": 30.0, "std": pytest.approx(math.sqrt(200))}
    md = kfold.report_markdown({"1-2-3": agg}, 3)
    assert "| accuracy/overall | 60.00 ± 10.00 |" in md


def test_run_kfold_fake_runner_shares_stage1_and_reports(tmp_path):
    data = tmp_path / "d.json"
    data.write_text(json.dumps(_records(6, [1, 2])))
    base = config_from_env(_env(tmp_path))
    fake = FakeRunner(answer="a")
    report = kfold.run_kfold(str(data), "/imgs", 3, str(tmp_path / "kf"), [(1, 2, 3), (2, 3)], base, runner=fake,
                             log=lambda _: None)
    stage_calls = [env for _, env in fake.calls if "OUTPUT_DIR" in env]
    assert sum(e["DATA_PATH"] == "/d/general.json" for e in stage_calls) == 1  # stage 1 once, shared
    shared = str((tmp_path / "kf" / "shared_stage1" / "stage1" / "model" / "mm_projector.bin").resolve())
    fold0_123 = [c for c, e in fake.calls if e.get("OUTPUT_DIR", "").endswith("fold0/stage1-2/model")][0]
    assert fold0_123[fold0_123.index("--pretrain_mm_mlp_adapter") + 1] == shared
    fold0_23 = [c for c, e in fake.calls if e.get("OUTPUT_DIR", "").endswith("fold0/stage2/model")][0]
    assert "--pretrain_mm_mlp_adapter" not in fold0_23
    assert all(e["DATA_PATH"].endswith("train.json") for e in stage_calls[1:])
    # the domain stages validate on the held-out fold
    assert all(e["EVAL_DATA_PATH"].endswith("test.json") and e["EVAL_IMAGE_FOLDER"] == "/imgs"
               for e in stage_calls[1:])
    assert "EVAL_DATA_PATH" not in stage_calls[0]
    assert report["results"]["2-3"]["accuracy/overall"] == {"values": [100.0] * 3, "n": 3, "mean": 100.0, "std": 0.0}
    # fake stages: MAX_STEPS 4 (stages 2, 3), EVAL_STEPS 100 -> one eval entry at step 4: 3/4 + LR, accuracy 0.5
    assert report["results"]["1-2-3"]["stage3/eval_loss"]["values"] == [pytest.approx(0.75 + 2e-5)] * 3
    assert report["results"]["2-3"]["stage2/eval_accuracy"]["mean"] == 0.5
    assert (tmp_path / "kf" / "kfold.png").stat().st_size > 0
    assert (tmp_path / "kf" / "kfold_stages.png").stat().st_size > 0
    md = (tmp_path / "kf" / "kfold.md").read_text()
    assert "1-2-3 (mean ± std)" in md and "| stage2/eval_loss |" in md
    assert (tmp_path / "kf" / "fold0" / "chains.png").exists()  # each fold's summary compares 1-2-3 and 2-3


# ---------------------------------------------------------------- probe


def test_stratified_folds_cover_each_class():
    labels = [i % 3 for i in range(30)]
    folds = stratified_folds(labels, 5)
    assert sorted(i for f in folds for i in f) == list(range(30))
    assert all(sorted(labels[i] for i in f) == [0, 0, 1, 1, 2, 2] for f in folds)


def test_probe_on_synthetic_features_decodable_vs_not():
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(80) % 4
    centers = torch.randn(4, 16, generator=gen) * 3
    decodable = centers[y] + torch.randn(80, 16, generator=gen)
    noise = torch.randn(80, 16, generator=gen)
    s = ProbeSettings(hidden_layers=2, hidden_size=32, max_epochs=60, patience=5, batch_size=64, folds=4)
    good = cross_validate(decodable, y, 4, s)
    bad = cross_validate(noise, y, 4, s)
    assert sum(good["f1"]) / 4 > 0.9
    assert sum(bad["f1"]) / 4 < 0.5
    assert all(m == 0.25 for m in good["majority_accuracy"])


def _probe_images(root: Path, task: str, n: int = 40) -> Path:
    from PIL import Image, ImageDraw

    colours = [(220, 30, 30), (30, 60, 220), (30, 180, 60), (230, 210, 20)]
    rng = random.Random(0)
    for i in range(n):
        c = i % 4
        cell = rng.randrange(4) if task == "colour" else c
        fill = colours[c] if task == "colour" else colours[rng.randrange(4)]
        img = Image.new("RGB", (32, 32), (255, 255, 255))
        x0, y0 = (cell % 2) * 16 + rng.randrange(5), (cell // 2) * 16 + rng.randrange(5)
        ImageDraw.Draw(img).rectangle((x0, y0, x0 + 10, y0 + 10), fill=fill)
        (root / task / f"class{c}").mkdir(parents=True, exist_ok=True)
        img.save(root / task / f"class{c}" / f"{i}.png")
    return root / task


def test_probe_detects_position_lost_by_compression(tmp_path, tiny_llama, tiny_clip, llama_tokenizer):
    from llava.probe.__main__ import main as probe_main
    from llava.testing.tiny_llava import build_tiny_llava

    for name, flags in (("full", {}), ("pooled1", dict(compression_after_projection=True, final_spatial_size=1))):
        build_tiny_llava(tiny_llama, tiny_clip, seed=3, **flags).save_pretrained(tmp_path / name)
        llama_tokenizer.save_pretrained(tmp_path / name)
    rows = {}
    for task in ("colour", "position"):
        out = tmp_path / f"probe_{task}"
        probe_main(["--checkpoints", str(tmp_path / "full"), str(tmp_path / "pooled1"), "--image-folder",
                    str(_probe_images(tmp_path, task)), "--output-dir", str(out), "--pooling", "mean", "tokens",
                    "--hidden-size", "64", "--max-epochs", "100", "--patience", "10", "--threads", "1"])
        meta = json.loads((out / "probe.json").read_text())
        rows[task] = {(r["checkpoint"], r["representation"]): r["summary"]["f1_mean"] for r in meta["rows"]}
        assert (out / "probe.png").stat().st_size > 0
        assert "| full | post/tokens | 1024 |" in (out / "probe.md").read_text()
    colour, position = rows["colour"], rows["position"]
    for ckpt in ("full", "pooled1"):
        assert colour[(ckpt, "pre/mean")] > 0.9 and colour[(ckpt, "post/mean")] > 0.9
        assert position[(ckpt, "pre/tokens")] > 0.9  # the tower sees position in both
    assert position[("full", "post/tokens")] > 0.9
    assert position[("pooled1", "post/tokens")] < position[("full", "post/tokens")] - 0.4
