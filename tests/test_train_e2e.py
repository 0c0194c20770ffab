"""End-to-end: the real v1.5 stage scripts under DeepSpeed on 2 CPU processes with tiny models.

pretrain.sh (ZeRO-2, projector only) -> finetune.sh (ZeRO-3, killed after a checkpoint and rerun:
it resumes) -> load_pretrained_model + generate; finetune_lora.sh (ZeRO-3) -> rerun resumes and
keeps the projector -> merge_lora_weights.py -> load + generate. Kept tiny: a few steps each.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from e2e_helpers import (
    PROJECTOR_KEYS,
    REPO,
    STAGE_TIMEOUT_S,
    _generate,
    _global_step,
    _kill_once_saved,
    _losses,
    _run,
    _stage_env,
    _start,
)
from helpers_data import write_shapes_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def data(workdir):
    # 28 image + 4 text-only samples: 4 optimizer steps per epoch at 2 ranks x batch 4, so checkpoint-4
    # sits on an epoch boundary (transformers runs one extra step when resuming at max_steps mid-epoch).
    return write_shapes_dataset(workdir / "data", n=28)


@pytest.fixture(scope="module")
def base_env(tiny_llama, tiny_clip, data):
    return dict(MODEL_NAME=tiny_llama, VISION_TOWER=tiny_clip, IMAGE_FOLDER=data.image_folder)


@pytest.fixture(scope="module")
def pretrained(workdir, base_env, data) -> Path:
    out = workdir / "pretrain"
    _run("pretrain.sh", workdir / "pretrain.log", **base_env, DATA_PATH=data.pretrain_json, OUTPUT_DIR=out,
         MAX_STEPS=6, SAVE_STEPS=3, LR=1e-2)
    return out


def test_pretrain_writes_upstream_projector(pretrained):
    losses = _losses(pretrained)
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    state = torch.load(pretrained / "mm_projector.bin", weights_only=True)
    assert sorted(state) == PROJECTOR_KEYS
    assert json.loads((pretrained / "config.json").read_text())["mm_projector_type"] == "mlp2x_gelu"
    assert not (pretrained / "model.safetensors").exists()
    ckpt = pretrained / "checkpoint-6"
    assert sorted(torch.load(ckpt / "mm_projector.bin", weights_only=True)) == PROJECTOR_KEYS
    assert (ckpt / "trainer_state.json").exists() and (ckpt / "global_step6").is_dir()  # resumable


def test_finetune_killed_then_resumed_loads_and_generates(workdir, pretrained, base_env, data):
    out = workdir / "finetune"
    env = dict(base_env, DATA_PATH=data.finetune_json, OUTPUT_DIR=out, MAX_STEPS=8, SAVE_STEPS=3, LR=2e-3,
               PRETRAIN_MM_MLP_ADAPTER=pretrained / "mm_projector.bin")
    proc = _start("finetune.sh", workdir / "finetune_killed.log", **env)
    # the manifest is written last: the save is complete
    _kill_once_saved(proc, out / "checkpoint-3" / "llava_manifest.json", workdir / "finetune_killed.log")
    assert not (out / "model.safetensors").exists()  # really stopped before the end

    log = _run("finetune.sh", workdir / "finetune_resumed.log", **env)
    assert "resuming from" in log and "checkpoint-" in log
    assert _global_step(out) == 8
    losses = _losses(out)
    assert losses[-1] < losses[0], losses
    assert (out / "model.safetensors").exists()
    text = _generate(str(out), str(Path(data.image_folder) / "000.png"))
    assert isinstance(text, str)

    res = subprocess.run([sys.executable, str(REPO / "scripts" / "extract_mm_projector.py"), "--model-path",
                          str(out), "--output", str(workdir / "extracted.bin")],
                         cwd=REPO, env=_stage_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-4000:]
    assert sorted(torch.load(workdir / "extracted.bin", weights_only=True)) == PROJECTOR_KEYS


def test_lora_resume_keeps_projector_then_merge(workdir, pretrained, base_env, data, tiny_llama):
    out = workdir / "lora"
    env = dict(base_env, DATA_PATH=data.finetune_json, OUTPUT_DIR=out, MAX_STEPS=4, SAVE_STEPS=2, LR=2e-3,
               MM_PROJECTOR_LR=1e-3, LORA_R=8, LORA_ALPHA=16,
               PRETRAIN_MM_MLP_ADAPTER=pretrained / "mm_projector.bin")
    _run("finetune_lora.sh", workdir / "lora.log", **env)
    losses = _losses(out)
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    ckpt = out / "checkpoint-4"
    for folder in (ckpt, out):
        names = {p.name for p in folder.iterdir()}
        assert {"adapter_config.json", "non_lora_trainables.bin", "config.json"} <= names
    at_ckpt = torch.load(ckpt / "non_lora_trainables.bin", weights_only=True)
    pre = torch.load(pretrained / "mm_projector.bin", weights_only=True)
    proj_key = "base_model.model.model.mm_projector.0.weight"
    assert not torch.equal(at_ckpt[proj_key], pre["model.mm_projector.0.weight"])  # the projector trained

    # Rerun the same command: it resumes from checkpoint-4 with nothing left to do, and the projector it
    # saves must be the trained one from the checkpoint, not the stage-1 projector it starts from.
    log = _run("finetune_lora.sh", workdir / "lora_rerun.log", **env)
    assert f"resuming from {ckpt}" in log
    assert _global_step(out) == 4
    resumed = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    assert sorted(resumed) == sorted(at_ckpt)
    assert all(torch.equal(resumed[k], at_ckpt[k]) for k in at_ckpt)

    merged = workdir / "merged"
    cmd = [sys.executable, str(REPO / "scripts" / "merge_lora_weights.py"),
           "--model-path", str(out), "--model-base", tiny_llama, "--save-model-path", str(merged)]
    res = subprocess.run(cmd, cwd=REPO, env=_stage_env(), capture_output=True, text=True,
                         timeout=STAGE_TIMEOUT_S)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert (merged / "model.safetensors").exists() and not (merged / "adapter_config.json").exists()
    assert isinstance(_generate(str(merged), str(Path(data.image_folder) / "001.png")), str)


def test_resume_refuses_a_planted_payload(workdir, pretrained, base_env, data):
    """A payload in the newest checkpoint's DeepSpeed model states: resume refuses (one line, exit 2) and the
    payload never runs, whether the manifest was left alone (digest mismatch) or rewritten (restricted load)."""
    import shutil

    from test_checkpoint_trust import Payload

    from llava.train.checkpoint_trust import CONVERTER_WARNING, MANIFEST, write_manifest

    out = workdir / "planted"
    shutil.copytree(pretrained, out)
    newest = out / "checkpoint-6"
    assert (newest / MANIFEST).is_file() and CONVERTER_WARNING in (newest / "zero_to_fp32.py").read_text()
    states = newest / "global_step6" / "mp_rank_00_model_states.pt"
    marker = workdir / "PWNED"
    state = torch.load(states, weights_only=True)
    torch.save({**state, "payload": Payload(marker)}, states)
    env = dict(base_env, DATA_PATH=data.pretrain_json, OUTPUT_DIR=out, MAX_STEPS=8, SAVE_STEPS=3, LR=1e-2)
    for expected in ("does not match its SHA-256", "needs more than tensors and plain data"):
        log = workdir / "planted.log"
        proc = _start("pretrain.sh", log, **env)
        assert proc.wait(timeout=STAGE_TIMEOUT_S) == 2, log.read_text()[-3000:]
        errors = [x for x in log.read_text().splitlines() if x.startswith("error: not resuming")]
        assert len(errors) == 1 and expected in errors[0] and str(states) in errors[0], errors
        assert "Traceback" not in log.read_text() and not marker.exists()
        write_manifest(newest)  # second round: an attacker who rewrites the manifest too


def test_resume_refuses_latest_outside_the_checkpoint(workdir, pretrained, base_env, data):
    """Issue 26 row 1 under DeepSpeed: ``latest`` names an absolute folder holding crafted model states, the
    manifest rewritten to match. The real stage script's automatic resume refuses it (one line naming
    ``latest``, exit 2) before DeepSpeed opens anything, and the payload never runs."""
    import shutil

    from test_checkpoint_trust import Payload

    from llava.train.checkpoint_trust import write_manifest

    out = workdir / "latest_outside"
    shutil.copytree(pretrained, out)
    newest = out / "checkpoint-6"
    elsewhere = workdir / "elsewhere" / "global_step6"
    shutil.copytree(newest / "global_step6", elsewhere)
    states = elsewhere / "mp_rank_00_model_states.pt"
    marker = workdir / "PWNED_LATEST"
    torch.save({**torch.load(states, weights_only=True), "payload": Payload(marker)}, states)
    (newest / "latest").write_text(str(elsewhere))
    write_manifest(newest)
    log = workdir / "latest_outside.log"
    env = dict(base_env, DATA_PATH=data.pretrain_json, OUTPUT_DIR=out, MAX_STEPS=8, SAVE_STEPS=3, LR=1e-2)
    proc = _start("pretrain.sh", log, **env)
    assert proc.wait(timeout=STAGE_TIMEOUT_S) == 2, log.read_text()[-3000:]
    errors = [x for x in log.read_text().splitlines() if x.startswith("error: not resuming")]
    assert len(errors) == 1 and f"{newest / 'latest'} names {str(elsewhere)!r}, not the plain name" in errors[0]
    assert "Traceback" not in log.read_text() and not marker.exists()


def test_pretrain_killed_writing_the_manifest_resumes_bit_identical(workdir, base_env, data):
    """The DeepSpeed case of the kill-in-every-phase test (tests/test_save_kill.py has every phase in-process):
    pretrain.sh on 2 ranks, ``SAVE_TOTAL_LIMIT=1``, SIGKILLed with checkpoint-8's manifest half-written. The
    previous checkpoint survives (rotation waits for the manifest); the rerun resumes from it and ends with
    the uninterrupted run's projector, byte for byte (the killed and resumed runs read the memory-mapped data
    store, the uninterrupted one the JSON: the store changes nothing)."""
    from llava.train.checkpoint_check import MANIFEST
    from llava.train.save_hook import ENV

    env = dict(base_env, DATA_PATH=data.pretrain_json, MAX_STEPS=8, SAVE_STEPS=4, LR=1e-2)
    straight, out = workdir / "ds_straight", workdir / "ds_killed"
    _run("pretrain.sh", workdir / "ds_straight.log", **env, OUTPUT_DIR=straight)
    log = workdir / "ds_killed.log"
    store = dict(DATA_STORE_DIR=workdir / "ds_store")  # killed + resumed read the data store: padded, 2 ranks
    proc = _start("pretrain.sh", log, **env, OUTPUT_DIR=out, **store, **{ENV: "manifest@8"})
    assert proc.wait(timeout=STAGE_TIMEOUT_S) != 0, log.read_text()[-3000:]
    assert (out / "checkpoint-4" / MANIFEST).is_file() and not (out / "checkpoint-8" / MANIFEST).exists()
    resumed = _run("pretrain.sh", workdir / "ds_resumed.log", **env, OUTPUT_DIR=out, **store)
    assert "--data_store_dir" in resumed and len(list((workdir / "ds_store").glob("*/samples.bin"))) == 1
    assert f"resuming from {out / 'checkpoint-4'}" in resumed
    assert (out / "mm_projector.bin").read_bytes() == (straight / "mm_projector.bin").read_bytes()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-8"]
