"""End-to-end: pretrain + finetune with each cosine regularizer (CPU, DeepSpeed, 2 processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from e2e_helpers import _generate, _run
from helpers_data import write_shapes_dataset

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("loss", ["constrain", "self_distill"])
def test_cosine_loss_logged_saved_and_reloaded(tmp_path_factory, tiny_llama, tiny_clip, loss):
    work = tmp_path_factory.mktemp(f"cos_{loss}")
    data = write_shapes_dataset(work / "data", n=16)
    env = dict(MODEL_NAME=tiny_llama, VISION_TOWER=tiny_clip, IMAGE_FOLDER=data.image_folder, SAVE_STEPS=100,
               CHECKPOINT_ROOT=work / "ckpt", RUN_NAME="cos", MAX_STEPS=3)
    flags = ["--mm_cosine_loss", loss, "--mm_cosine_lambda", "0.5"]
    _run("pretrain.sh", work / "pretrain.log", *flags, **env, DATA_PATH=data.pretrain_json, LR=1e-2)
    pre = work / "ckpt" / "cos-pretrain"
    state = torch.load(pre / "mm_projector.bin", weights_only=True)
    assert any(k.startswith("model.mm_projector_cos.") for k in state)
    _check_logged(pre)

    _run("finetune.sh", work / "finetune.log", *flags, **env, DATA_PATH=data.finetune_json, LR=2e-3)
    out = work / "ckpt" / "cos"
    _check_logged(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mm_cosine_loss"] == loss and cfg["mm_cosine_lambda"] == 0.5

    from llava.model.builder import load_pretrained_model

    _, model, _, _ = load_pretrained_model(str(out), None, device="cpu")
    reg_state = model.get_model().mm_projector_cos.state_dict()
    assert reg_state, "the regularizer's weights/buffers must come back from the checkpoint"
    if loss == "self_distill":  # P2 was loaded from the pretrain projector file and trained on
        assert not torch.equal(reg_state["p2.0.weight"], state["model.mm_projector_cos.p2.0.weight"])
    assert isinstance(_generate(str(out), str(Path(data.image_folder) / "000.png")), str)


def _check_logged(output_dir: Path) -> None:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "loss" in h]
    assert steps and all({"loss_tp", "loss_cos", "loss_cos_weighted"} <= set(h) for h in steps), steps
    for h in steps:
        assert h["loss_cos_weighted"] == pytest.approx(0.5 * h["loss_cos"], rel=1e-4)
        assert 0.0 <= h["loss_cos"] <= 2.0
        # the Trainer's loss is L_TP + lambda * L_cos (the term is 0 on text-only batches)
        assert h["loss_tp"] <= h["loss"] + 1e-3
        assert h["loss"] - h["loss_tp"] <= h["loss_cos_weighted"] + 1e-3
