"""End-to-end ``--packing True``: the real stage scripts under 2-process CPU DeepSpeed, killed and resumed.

multiNormpretrain.sh (ZeRO-2, projector only) and the vanilla finetune.sh (ZeRO-3, full finetune,
``--group_by_modality_length``): a run killed after a mid-epoch checkpoint and rerun (it resumes)
ends with the same weights, bit for bit, as an uninterrupted run; the packs are the same after the
resume (the length cache is reused) and the runs log the throughput fields.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from e2e_helpers import _kill_once_saved, _run, _start
from helpers_data import write_shapes_dataset
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama, tiny_clip):
    root = tmp_path_factory.mktemp("packing_e2e")
    data = write_shapes_dataset(root / "data", n=28)
    env = dict(MODEL_NAME=tiny_llama, VISION_TOWER=tiny_clip, IMAGE_FOLDER=data.image_folder, EPOCHS=2,
               BATCH_SIZE=2, SAVE_STEPS=2)
    return root, data, env


def _straight_and_resumed(script: str, root: Path, name: str, **env) -> tuple[Path, Path, str]:
    straight, resumed = root / f"{name}_straight", root / f"{name}_resumed"
    _run(script, root / f"{name}_straight.log", "--packing", "True", OUTPUT_DIR=straight, **env)
    proc = _start(script, root / f"{name}_killed.log", "--packing", "True", OUTPUT_DIR=resumed, **env)
    _kill_once_saved(proc, resumed / "checkpoint-2" / "llava_manifest.json", root / f"{name}_killed.log", poll_s=0.1)
    log = _run(script, root / f"{name}_resumed.log", "--packing", "True", OUTPUT_DIR=resumed, **env)
    assert "resuming from" in log
    assert (resumed / "packing_lengths.json").read_bytes() == (straight / "packing_lengths.json").read_bytes()
    return straight, resumed, log


def _steps(out: Path) -> int:
    return json.loads((out / "trainer_state.json").read_text())["global_step"]


def test_multinorm_pretrain_zero2_packed_resume_is_bit_identical(setup):
    root, data, env = setup
    straight, resumed, _ = _straight_and_resumed(
        "multiNormpretrain.sh", root, "mn", **dict(env, BATCH_SIZE=1), DATA_PATH=data.pretrain_json, LR=1e-2,
        MULTILAYER_SELECT="2,3,4", MODEL_MAX_LENGTH=96)  # ~3 captions per row: 5 steps per epoch
    assert _steps(straight) == _steps(resumed) > 2  # the kill came mid-run
    a = torch.load(straight / "mm_projector.bin", weights_only=True)
    b = torch.load(resumed / "mm_projector.bin", weights_only=True)
    assert sorted(a) == sorted(b) and "model.mm_projector_norm.weight" in a
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_vanilla_finetune_zero3_packed_resume_is_bit_identical(setup, tiny_llama, tiny_clip):
    from llava.model.checkpoints import projector_tensors
    from llava.testing.tiny_llava import build_tiny_llava

    root, data, env = setup
    adapter = root / "projector.bin"
    torch.save({k: v.detach().clone() for k, v in projector_tensors(build_tiny_llava(tiny_llama, tiny_clip))},
               adapter)
    straight, resumed, _ = _straight_and_resumed(
        "finetune.sh", root, "ft", **env, DATA_PATH=data.finetune_json, LR=2e-3, PRETRAIN_MM_MLP_ADAPTER=adapter)
    assert _steps(straight) == _steps(resumed) > 2
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
