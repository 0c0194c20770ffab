"""Validation during training (``--eval_data_path``): eval_loss, answer-token accuracy, auxiliary terms.

The accuracy tests use a "copy" model whose predictions are known: every decoder layer's output
projections are zero (attention and MLP add nothing to the residual stream), the embedding rows have
unit norm and the LM head is the embedding matrix, so at every text position the model predicts the
token it reads. A supervised token is then predicted exactly iff it repeats the token before it, which
the test counts by hand from the tokenized samples; projector training leaves text positions alone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_data import write_shapes_dataset

from llava.constants import IGNORE_INDEX
from llava.train.validation import accuracy_counts, token_stats

REPO = Path(__file__).resolve().parents[1]
ANSWERS = ("red red red circle circle.", "blue blue square.", "no", "green green green green.", "yes yes")


def copy_model(tiny_llama: str, out: Path) -> str:
    """The tiny Llama turned into a model that predicts its current input token (module docstring)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.get_input_embeddings().weight
        emb.copy_(emb / emb.norm(dim=1, keepdim=True))
        model.get_output_embeddings().weight.copy_(emb)
    model.save_pretrained(out)
    for f in Path(tiny_llama).iterdir():  # the tokenizer files
        if f.is_file() and not (out / f.name).exists():
            shutil.copy(f, out / f.name)
    return str(out)


def eval_records(image_names: list[str], n_text: int = 1) -> list[dict]:
    """Question/answer records with repeated answer words (known copy-model hits), plus text-only ones."""
    recs = [{"id": f"v{i}", "image": name, "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": ANSWERS[i % len(ANSWERS)]}]}
        for i, name in enumerate(image_names)]
    recs += [{"id": f"vt{j}", "conversations": [{"from": "human", "value": "Say it twice."},
                                                  {"from": "gpt", "value": "again again"}]} for j in range(n_text)]
    return recs


def hand_count(records: list[dict], tokenizer, version: str = "v1") -> tuple[int, int]:
    """(exact hits, supervised tokens) of the copy model: supervised tokens equal to the token before them."""
    from llava.conversation import get_conv_template
    from llava.data.preprocess import preprocess, preprocess_multimodal

    hits = total = 0
    for rec in records:
        sources = [rec["conversations"]]
        if "image" in rec:
            sources = preprocess_multimodal(sources, True, False)
        out = preprocess(sources, tokenizer, get_conv_template(version), has_image="image" in rec)
        ids, labels = out["input_ids"][0].tolist(), out["labels"][0].tolist()
        for t in range(1, len(ids)):
            if labels[t] != IGNORE_INDEX:
                total += 1
                hits += int(ids[t] == ids[t - 1])
    return hits, total


def eval_entries(output_dir: Path) -> list[dict]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [e for e in state["log_history"] if "eval_loss" in e]


# ---------------------------------------------------------------- unit


def test_token_stats_match_cross_entropy_and_a_loop_count():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    labels = torch.randint(0, 11, (3, 7))
    labels[0, :3] = IGNORE_INDEX
    labels[2, :] = IGNORE_INDEX  # a row without supervised tokens
    labels[1, 4] = int(logits[1, 3].argmax())  # at least one exact hit
    stats = token_stats(logits, labels)
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1),
                                           ignore_index=IGNORE_INDEX, reduction="sum")
    n = int((labels[:, 1:] != IGNORE_INDEX).sum())
    hits = sum(int(logits[b, t - 1].argmax()) == int(labels[b, t])
               for b in range(3) for t in range(1, 7) if labels[b, t] != IGNORE_INDEX)
    assert torch.allclose(stats[:, 0].sum(), ce.double(), atol=1e-9)
    assert stats[:, 1].tolist() == [float(int((labels[b, 1:] != IGNORE_INDEX).sum())) for b in range(3)]
    assert stats[2].tolist() == [0.0, 0.0, 0.0] and int(stats[:, 1].sum()) == n
    assert int(stats[:, 2].sum()) == hits >= 1
    correct, total = accuracy_counts(logits, labels)
    assert (int(correct), int(total)) == (hits, n)


@pytest.mark.parametrize(("extra", "expected"), [
    (("--eval_strategy", "steps"), "--eval_strategy steps needs validation data: pass --eval_data_path"),
    (("--eval_data_path", "absent.json", "--eval_strategy", "steps"), "--eval_data_path 'absent.json' does not exist"),
    (("--eval_data_path", "DATA"), "--eval_data_path is set but --eval_strategy is no"),
    (("--eval_image_folder", "."), "--eval_image_folder has no effect without --eval_data_path"),
])
def test_validation_flag_errors_are_one_line(extra, expected, tiny_llama, tiny_clip, tmp_path, monkeypatch, capsys):
    from llava.train.train import train

    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human", "value": "hi"},
                                                               {"from": "gpt", "value": "yo"}]}]))
    extra = [str(data) if a == "DATA" else a for a in extra]
    monkeypatch.setattr(sys, "argv", ["train.py", "--model_name_or_path", tiny_llama, "--vision_tower", tiny_clip,
                                      "--data_path", str(data), "--output_dir", str(tmp_path / "out"),
                                      "--use_cpu", "True", "--report_to", "none", *extra])
    with pytest.raises(SystemExit) as err:
        train()
    assert err.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


@pytest.mark.parametrize("bad", ["no_answer", "missing_image", "too_long"])
def test_bad_sample_in_the_eval_file_is_refused_at_launch(bad, tiny_llama, tiny_clip, tmp_path, monkeypatch,
                                                          capsys):
    """A structural problem or a missing image stops the launch before any weights load (the training file's
    checks); a sample longer than --model_max_length once the dataset exists (before the first step)."""
    from llava.train.train import train

    data = write_shapes_dataset(tmp_path / "data", n=2, text_only=0)
    sample = {
        "no_answer": {"id": "broken", "conversations": [{"from": "human", "value": "hi"}]},
        "missing_image": {"id": "broken", "image": "absent.png", "conversations": [
            {"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "yo"}]},
        "too_long": {"id": "broken", "conversations": [
            {"from": "human", "value": "hi " * 400}, {"from": "gpt", "value": "yo"}]},
    }[bad]
    path = tmp_path / "eval.json"
    path.write_text(json.dumps([sample]))
    monkeypatch.setattr(sys, "argv", [
        "train.py", "--model_name_or_path", tiny_llama, "--vision_tower", tiny_clip, "--data_path",
        data.finetune_json, "--image_folder", data.image_folder, "--eval_data_path", str(path), "--eval_strategy",
        "steps", "--output_dir", str(tmp_path / "out"), "--use_cpu", "True", "--report_to", "none",
        "--model_max_length", "256"])
    with pytest.raises(SystemExit) as err:
        train()
    assert err.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    errors = [ln for ln in lines if "error" in ln.lower()]
    assert len(errors) == 1 and str(path) in errors[0] and "--skip_bad_samples" in errors[0], errors
    if bad == "missing_image":  # the launch image check: before any weights load, one line per category
        assert lines == [f"error: 1 sample(s) in {path} have a bad image; fix them (python -m llava.data.doctor "
                         "lists them all) or pass --skip_bad_samples True to skip and list them in "
                         "skipped_samples.json", lines[1]] and lines[1].startswith(
            "  missing_image: 1 sample(s): 'broken' (index 0); first: image file not found:"), lines
        return
    assert "'broken'" in errors[0], errors
    if bad == "no_answer":
        assert lines == errors and "no 'gpt' answer" in errors[0]  # nothing else printed: no weights loaded
    else:
        assert errors[0].startswith(f"error: validation set: {bad}: ")
        # the run lock may have made the folder; nothing was trained or saved in it
        assert not list((tmp_path / "out").glob("checkpoint-*")) and not (tmp_path / "out" / "config.json").exists()


# ---------------------------------------------------------------- training runs


def test_eval_accuracy_equals_the_hand_count(tiny_llama, tiny_clip, llama_tokenizer, tmp_path, monkeypatch):
    """In process: eval every step + a final one; a missing image with --skip_bad_samples is left out."""
    from llava.train.train import train

    model = copy_model(tiny_llama, tmp_path / "copy")
    data = write_shapes_dataset(tmp_path / "data", n=6, text_only=0)
    names = sorted(p.name for p in Path(data.image_folder).iterdir())[:5]
    records = eval_records(names)
    (tmp_path / "eval.json").write_text(json.dumps([*records, {**records[0], "id": "gone", "image": "absent.png"}]))
    hits, total = hand_count(records, llama_tokenizer)
    assert 0 < hits < total
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "train.py", "--model_name_or_path", model, "--vision_tower", tiny_clip, "--version", "v1",
        "--tune_mm_mlp_adapter", "True", "--mm_use_im_patch_token", "False", "--data_path", data.finetune_json,
        "--image_folder", data.image_folder, "--eval_data_path", str(tmp_path / "eval.json"), "--eval_strategy",
        "steps", "--eval_steps", "2", "--skip_bad_samples", "True", "--output_dir", str(out), "--use_cpu", "True",
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4", "--max_steps", "3",
        "--learning_rate", "1e-2", "--save_strategy", "no", "--dataloader_num_workers", "0",
        "--model_max_length", "256", "--logging_steps", "1", "--report_to", "none", "--mm_cosine_loss", "constrain"])
    train()
    entries = eval_entries(out)
    assert [e["step"] for e in entries] == [2, 3]  # every 2 steps, and once at the end
    for e in entries:
        assert e["eval_accuracy"] == round(hits / total, 6)
        assert e["eval_tokens"] == total and e["eval_samples"] == len(records)  # the missing image left out
        assert e["eval_loss"] > 0 and e["eval_loss_cos"] > 0
        assert e["eval_loss_cos_weighted"] == pytest.approx(0.1 * e["eval_loss_cos"], abs=1e-6)
    train_logs = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(train_logs) == 3 and all(0.0 <= e["accuracy"] <= 1.0 for e in train_logs)


@pytest.mark.slow
@pytest.mark.parametrize(("zero", "packing"), [("zero2", "False"), ("zero3", "True")])
def test_eval_under_two_process_deepspeed(zero, packing, tiny_llama, tiny_clip, llama_tokenizer, tmp_path):
    """pretrain.sh with EVAL_DATA_PATH: 2 CPU processes, ZeRO-2 padded / ZeRO-3 packed; 5 eval samples over
    2 ranks (the Trainer pads the last batch with duplicates, which must not be counted)."""
    from e2e_helpers import _run

    model = copy_model(tiny_llama, tmp_path / "copy")
    data = write_shapes_dataset(tmp_path / "data", n=8, text_only=0)
    names = sorted(p.name for p in Path(data.image_folder).iterdir())[:4]
    records = eval_records(names)
    (tmp_path / "eval.json").write_text(json.dumps(records))
    hits, total = hand_count(records, llama_tokenizer)
    out = tmp_path / "out"
    log = _run("pretrain.sh", tmp_path / "pretrain.log", "--version", "v1", MODEL_NAME=model,
               VISION_TOWER=tiny_clip, DATA_PATH=data.finetune_json, IMAGE_FOLDER=data.image_folder,
               OUTPUT_DIR=out, DS_CONFIG=REPO / "scripts" / f"{zero}.json", PACKING=packing, MAX_STEPS=2,
               SAVE_STEPS=100, BATCH_SIZE=1, EVAL_DATA_PATH=tmp_path / "eval.json", EVAL_STEPS=1,
               EVAL_BATCH_SIZE=2, LR=1e-2)
    entries = eval_entries(out)
    assert [e["step"] for e in entries] == [1, 2], log[-3000:]
    for e in entries:
        assert e["eval_accuracy"] == round(hits / total, 6) and e["eval_tokens"] == total
        assert e["eval_samples"] == len(records)
    assert "--eval_data_path" in log and "validation at step 2/2" in log


def test_stage_script_without_eval_data_keeps_eval_off(tmp_path):
    """No EVAL_DATA_PATH: the launch line still says --eval_strategy no (today's behaviour)."""
    fake = tmp_path / "fake_launcher"
    fake.write_text("#!/usr/bin/env bash\nexit 0\n")
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "LAUNCHER": str(fake), "DEVICE": "cpu", "MASTER_PORT": "1",
           "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(REPO / "scripts/v1_5/pretrain.sh")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "--eval_strategy no" in res.stderr and "--eval_data_path" not in res.stderr
    env["EVAL_DATA_PATH"] = "val.json"
    res = subprocess.run(["bash", str(REPO / "scripts/v1_5/pretrain.sh")], env=env, capture_output=True, text=True)
    assert "--eval_strategy steps --eval_steps 100 --eval_data_path val.json" in res.stderr, res.stderr


def test_evaluating_leaves_training_untouched(tiny_llama, tiny_clip, tmp_path, monkeypatch):
    """Same seed with and without --eval_data_path: bit-identical projector (eval draws no random numbers,
    changes no state the training sees)."""
    from llava.train.train import train

    data = write_shapes_dataset(tmp_path / "data", n=6, text_only=2)
    base = ["train.py", "--model_name_or_path", tiny_llama, "--vision_tower", tiny_clip, "--version", "v1",
            "--tune_mm_mlp_adapter", "True", "--mm_use_im_patch_token", "False", "--data_path", data.finetune_json,
            "--image_folder", data.image_folder, "--use_cpu", "True", "--per_device_train_batch_size", "2",
            "--max_steps", "3", "--learning_rate", "1e-2", "--save_strategy", "no", "--dataloader_num_workers", "0",
            "--model_max_length", "256", "--logging_steps", "1", "--report_to", "none", "--seed", "3"]
    runs = {"plain": [], "eval": ["--eval_data_path", data.finetune_json, "--eval_strategy", "steps",
                                  "--eval_steps", "1"]}
    weights = {}
    for name, extra in runs.items():
        monkeypatch.setattr(sys, "argv", [*base, "--output_dir", str(tmp_path / name), *extra])
        train()
        weights[name] = torch.load(tmp_path / name / "mm_projector.bin", weights_only=True)
    assert len(eval_entries(tmp_path / "eval")) == 3 and not (tmp_path / "plain" / "trainer_state.json").read_text() \
        .count("eval_loss")
    assert weights["plain"].keys() == weights["eval"].keys()
    assert all(torch.equal(weights["plain"][k], weights["eval"][k]) for k in weights["plain"])
