"""Add-on regression: today's code reproduces the snapshots the pre-registry code wrote.

For every case in :data:`addon_snapshot.CASES`: identical state-dict keys/shapes, ``config.json``
fields, ``mm_projector.bin`` keys/shapes, losses, logits (<= 1e-6) and projector gradients; and
the committed projector-only checkpoint saved by the old code loads and gives its logits.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from addon_snapshot import CASES, FIXTURE, IDS, MASK, build, images, snapshot
from safetensors.torch import load_file

from llava.model.builder import load_pretrained_model

TOL = dict(atol=1e-6, rtol=1e-6)


@pytest.fixture(scope="module")
def expected():
    return json.loads((FIXTURE / "snapshot.json").read_text()), load_file(str(FIXTURE / "tensors.safetensors"))


def _without_stamp(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "transformers_version"}


@pytest.mark.parametrize("case", list(CASES))
def test_case_matches_pre_registry_snapshot(case, expected, tiny_llama, tiny_clip, llama_tokenizer, tmp_path):
    facts_exp, tensors_exp = expected
    facts, tensors = snapshot(build(tiny_llama, tiny_clip, llama_tokenizer, CASES[case]), tmp_path)
    exp = facts_exp[case]
    assert facts["state_dict"] == exp["state_dict"]
    # every config field but the writer's version stamp (transformers_version changes with each release)
    assert _without_stamp(facts["config"]) == _without_stamp(exp["config"])
    assert facts["mm_projector"] == exp["mm_projector"]
    assert facts["loss_tp"] == pytest.approx(exp["loss_tp"], abs=1e-6)
    assert facts["aux"].keys() == exp["aux"].keys()
    for k, v in exp["aux"].items():
        assert facts["aux"][k] == pytest.approx(v, abs=1e-6)
    prefix = f"{case}."
    names = {k[len(prefix):] for k in tensors_exp if k.startswith(prefix)}
    assert set(tensors) == names
    for name in names:
        torch.testing.assert_close(tensors[name], tensors_exp[prefix + name], **TOL, msg=f"{case}: {name}")


def test_checkpoint_saved_before_the_registry_loads(expected, tiny_llama, tiny_clip, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(FIXTURE / "checkpoint", ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["mm_vision_tower"] = tiny_clip  # the tower it was trained with, rebuilt here from the same seed
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _, model, _, _ = load_pretrained_model(str(ckpt), tiny_llama, device="cpu")
    with torch.no_grad():
        logits = model(input_ids=IDS, attention_mask=MASK, images=images()).logits
    torch.testing.assert_close(logits, expected[1]["checkpoint.logits"], **TOL)
