"""End-to-end: multiNormpretrain.sh then multiNormfinetune.sh (CPU, DeepSpeed, 2 processes) restore their flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from e2e_helpers import _generate, _losses, _run
from helpers_data import write_shapes_dataset

pytestmark = pytest.mark.slow


def test_multinorm_stages_train_save_and_reload(tmp_path_factory, tiny_llama, tiny_clip):
    work = tmp_path_factory.mktemp("multinorm")
    data = write_shapes_dataset(work / "data", n=16)
    env = dict(MODEL_NAME=tiny_llama, VISION_TOWER=tiny_clip, IMAGE_FOLDER=data.image_folder,
               CHECKPOINT_ROOT=work / "ckpt", RUN_NAME="tiny-multinorm", MULTILAYER_SELECT="2,3,4",
               SAVE_STEPS=100)
    _run("multiNormpretrain.sh", work / "pretrain.log", **env, DATA_PATH=data.pretrain_json, MAX_STEPS=4, LR=1e-2)
    pre = work / "ckpt" / "tiny-multinorm-pretrain"
    state = torch.load(pre / "mm_projector.bin", weights_only=True)
    assert state["model.mm_projector_norm.weight"].shape == (64,)  # reference style: per-channel RMSNorm
    assert state["model.mm_projector.0.weight"].shape[1] == 3 * 32  # 3 layers x tower width
    assert len(_losses(pre)) == 4

    _run("multiNormfinetune.sh", work / "finetune.log", **env, DATA_PATH=data.finetune_json, MAX_STEPS=4, LR=2e-3)
    out = work / "ckpt" / "tiny-multinorm"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["normalize_projector"] is True and cfg["use_multilayer_features"] is True
    assert cfg["mm_multilayer_select"] == [2, 3, 4] and cfg["mm_hidden_size"] == 96
    assert cfg["mm_norm_style"] == "reference" and cfg["mm_multilayer_post_norm"] is True
    assert (cfg["mm_norm_target"], cfg["mm_norm_max"]) == (0.83, 1.22)

    from llava.model.builder import load_pretrained_model

    _, model, _, _ = load_pretrained_model(str(out), None, device="cpu")
    assert model.get_model().mm_projector_norm is not None
    enabled = {a.name: c for a, c in model.get_model().addon_pipeline().enabled}
    assert enabled["multilayer"].mm_multilayer_select == [2, 3, 4] and "normalize" in enabled
    assert isinstance(_generate(str(out), str(Path(data.image_folder) / "000.png")), str)
