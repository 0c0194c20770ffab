"""End-to-end ``--packing True``: the real stage scripts under 2-process CPU DeepSpeed, killed and resumed.

Stage 1 through ``multiNormpretrain.sh`` under ZeRO-2 (projector and the multiNorm add-ons' parameters),
stage 2 through ``finetune.sh`` under ZeRO-3 (full finetune with ``--group_by_modality_length``): each
script family once, to keep the suite's time down (a stage's two scripts share the trainer and the
packing path; the multiNorm flags are also covered by test_multinorm_e2e). A run killed after a mid-epoch
checkpoint and rerun (it resumes) ends with the same weights, bit for bit, as an uninterrupted run,
and the packs after the resume are the same (the length cache is reused). The killed and resumed runs read the
data through the memory-mapped store (``DATA_STORE_DIR``), the uninterrupted one through the JSON.
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

MULTINORM = dict(use_multilayer_features=True, mm_multilayer_select="2,3,4", mm_multilayer_post_norm=True,
                 normalize_projector=True, mm_norm_style="reference")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama, tiny_clip):
    root = tmp_path_factory.mktemp("packing_e2e")
    data = write_shapes_dataset(root / "data", n=28)
    env = dict(MODEL_NAME=tiny_llama, VISION_TOWER=tiny_clip, IMAGE_FOLDER=data.image_folder, EPOCHS=2,
               BATCH_SIZE=2, SAVE_STEPS=2, MULTILAYER_SELECT="2,3,4")
    return root, data, env


def _straight_and_resumed(script: str, root: Path, name: str, **env) -> tuple[Path, Path]:
    straight, resumed = root / f"{name}_straight", root / f"{name}_resumed"
    _run(script, root / f"{name}_straight.log", "--packing", "True", OUTPUT_DIR=straight, **env)
    # the killed and resumed run read the memory-mapped data store (--data_store_dir), the straight one the JSON:
    # equal weights show the resume and the store change nothing (issue 28)
    store = root / f"{name}_store"
    proc = _start(script, root / f"{name}_killed.log", "--packing", "True", OUTPUT_DIR=resumed, DATA_STORE_DIR=store,
                  **env)
    _kill_once_saved(proc, resumed / "checkpoint-2" / "llava_manifest.json", root / f"{name}_killed.log", poll_s=0.1)
    log = _run(script, root / f"{name}_resumed.log", "--packing", "True", OUTPUT_DIR=resumed, DATA_STORE_DIR=store,
               **env)
    assert "resuming from" in log and "--data_store_dir" in log
    assert len(list(store.glob("*/samples.bin"))) == 1  # converted once, by one rank, reused by the rerun
    assert (resumed / "packing_lengths.json").read_bytes() == (straight / "packing_lengths.json").read_bytes()
    steps = [json.loads((out / "trainer_state.json").read_text())["global_step"] for out in (straight, resumed)]
    assert steps[0] == steps[1] > 2, steps  # the kill came mid-run
    return straight, resumed


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


@pytest.mark.parametrize("script", ["multiNormpretrain.sh"])
def test_stage1_zero2_packed_resume_is_bit_identical(setup, script):
    root, data, env = setup
    name = Path(script).stem
    straight, resumed = _straight_and_resumed(script, root, name, **dict(env, BATCH_SIZE=1), LR=1e-2,
                                              DATA_PATH=data.pretrain_json, MODEL_MAX_LENGTH=96)  # ~3 per row
    a = torch.load(straight / "mm_projector.bin", weights_only=True)
    _same(a, torch.load(resumed / "mm_projector.bin", weights_only=True))
    assert ("model.mm_projector_norm.weight" in a) == (script == "multiNormpretrain.sh")


@pytest.mark.parametrize("script", ["scripts/v1_5/finetune.sh"])
def test_stage2_zero3_packed_resume_is_bit_identical(setup, script, tiny_llama, tiny_clip):
    from llava.model.checkpoints import projector_tensors
    from llava.testing.tiny_llava import build_tiny_llava

    root, data, env = setup
    name = Path(script).stem
    flags = MULTINORM if script == "multiNormfinetune.sh" else {}
    adapter = root / f"{name}_projector.bin"
    model = build_tiny_llava(tiny_llama, tiny_clip, **flags)
    torch.save({k: v.detach().clone() for k, v in projector_tensors(model)}, adapter)
    straight, resumed = _straight_and_resumed(script, root, name, **env, DATA_PATH=data.finetune_json, LR=2e-3,
                                              PRETRAIN_MM_MLP_ADAPTER=adapter)
    a = load_file(straight / "model.safetensors")
    _same(a, load_file(resumed / "model.safetensors"))
    assert ("model.mm_projector_norm.weight" in a) == bool(flags)
