"""Packing is exact on every path: each registered add-on x attention implementation x pack layout x
``use_cache`` x train/eval.

Each case runs the same four samples padded (upstream's path) and packed (``packed_seq_ids``, several
samples per row, or all of them in one row as training's padding-free path does) and asserts that every
sample's logits and the token loss agree (fp32, <= 1e-5). ``use_cache=False`` is what training passes
(transformers' mask builder then looks at the position ids); ``use_cache=True`` is what ``model(...)``
defaults to. The add-ons come from the registry, so a new one is covered without editing this file.
Implementations that this transformers/torch cannot run are skipped with the reason.

The last test runs ``llava.train.train`` itself with 2D RoPE, the default attention (sdpa) and
``--packing True``: the combination that crashed at step 1 when transformers inferred packed samples
from (2, B, L) position ids.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from helpers_data import write_shapes_dataset
from test_packing_equivalence import SAMPLES, build, images_for, packed_batch, padded_batch

from llava.model.addons.registry import AddonRegistry
from llava.model.packing import PACKED_SDPA

REGISTERED = AddonRegistry().addons
# Only what the tiny model's shapes need (a 4-layer tower, a 4 x 4 grid); everything else is the flag default.
TINY_SHAPES = {"multilayer": dict(mm_multilayer_select="1,2,3"), "compression": dict(final_spatial_size=4)}
# flex_attention compiles on CPU (~6 s a case, ~8 min for its 80 cases): in the slow suite (-m slow), and there
# one cell per add-on (one_row, use_cache=False, train: what training runs) unless LLAVA_FULL_FLEX_MATRIX=1.
ATTENTION = ["eager", "sdpa", PACKED_SDPA, pytest.param("flex_attention", marks=pytest.mark.slow), "flash_attention_2"]
LAYOUTS = {"rows": [[0, 2], [1], [3]], "one_row": [[2, 0, 3, 1]]}
ORDER = [0, 1, 2, 3]


def switch_on(addon) -> dict:
    """The flags that turn ``addon`` on: its switch (``True``, or the first value its hint names) + tiny shapes."""
    field = {f.name: f for f in dataclasses.fields(addon.Args)}[addon.switch]
    value = True if isinstance(field.default, bool) else addon.switch_hint().split()[1]
    return {addon.switch: value, **TINY_SHAPES.get(addon.name, {})}


ADDON_FLAGS = {"vanilla": {}, **{a.name: switch_on(a) for a in REGISTERED}}


def skip_reason(attn: str) -> str | None:
    """Why this environment cannot run ``attn`` (``None`` when it can)."""
    from transformers.utils import is_flash_attn_2_available, is_torch_flex_attn_available

    if attn == "flex_attention" and not is_torch_flex_attn_available():
        return "this torch/transformers has no flex_attention"
    if attn == "flash_attention_2" and not (is_flash_attn_2_available() and torch.cuda.is_available()):
        return "flash_attention_2 needs the flash-attn package and a CUDA device (not installed/present here)"
    return None


@lru_cache(maxsize=4)
def cached_model(name: str, attn: str, llm: str, clip: str):
    """One tiny model per (add-on, attention); the cases of that pair reuse it (they never train it)."""
    from transformers import AutoTokenizer

    return build(llm, clip, AutoTokenizer.from_pretrained(llm, use_fast=False), attn, **ADDON_FLAGS[name])


def per_sample_logits(model, batch: dict, images: torch.Tensor, rows: list[list[int]], use_cache: bool):
    """(loss, {sample index: its logits}) of one forward; positions found from the model's own splice."""
    out = model(**batch, images=images, use_cache=use_cache)
    res = model.prepare_multimodal_splice(batch["input_ids"], batch["attention_mask"], batch["labels"], images,
                                          segments=batch.get("packed_seq_ids"))
    logits = {}
    for r, row in enumerate(rows):
        for k, i in enumerate(row, start=1):
            where = res.segments[r] == k if res.segments is not None else res.attention_mask[r].bool()
            logits[i] = out.logits[r][where]
    return out.loss, logits


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(len(SAMPLES), 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_every_registered_addon_is_in_the_matrix():
    assert set(ADDON_FLAGS) == {"vanilla"} | {a.name for a in AddonRegistry().addons}
    assert len(REGISTERED) >= 9


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("use_cache", [False, True], ids=["no_cache", "cache"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("name", list(ADDON_FLAGS))
def test_packed_logits_and_loss_equal_padded(name, attn, layout, use_cache, mode, tiny_llama, tiny_clip, pixels):
    reason = skip_reason(attn)
    if reason:
        pytest.skip(reason)
    if (attn == "flex_attention" and (layout, use_cache, mode) != ("one_row", False, "train")
            and os.environ.get("LLAVA_FULL_FLEX_MATRIX") != "1"):
        pytest.skip("flex_attention: the training cell per add-on only (CPU compile time); LLAVA_FULL_FLEX_MATRIX=1 "
                    "runs all of them")
    model = cached_model(name, attn, tiny_llama, tiny_clip)
    model.train(mode == "train")
    model.config.tokenizer_model_max_length = 64  # per sample (interleave adds tokens); a one-row pack is longer
    rows = LAYOUTS[layout]
    packed_order = [i for row in rows for i in row]
    with torch.no_grad():
        loss_u, logits_u = per_sample_logits(model, padded_batch(ORDER), images_for(ORDER, pixels),
                                             [[i] for i in ORDER], use_cache)
        loss_p, logits_p = per_sample_logits(model, packed_batch(rows), images_for(packed_order, pixels), rows,
                                             use_cache)
    assert torch.isfinite(loss_u)
    torch.testing.assert_close(loss_p, loss_u, atol=1e-5, rtol=0)
    for i in ORDER:
        assert logits_p[i].shape == logits_u[i].shape and logits_u[i].shape[0] >= len(SAMPLES[i][0])
        torch.testing.assert_close(logits_p[i], logits_u[i], atol=1e-5, rtol=1e-5,
                                   msg=lambda m, i=i: f"sample {i}: {m}")


def test_train_with_2d_rope_sdpa_and_packing_runs_end_to_end(tiny_llama, tiny_clip, tmp_path, monkeypatch):
    """``llava.train.train`` (``use_cache=False``, sdpa -> once per sample, one padding-free row per batch)."""
    from llava.train.train import train

    data = write_shapes_dataset(tmp_path / "data", n=6)
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "train.py", "--model_name_or_path", tiny_llama, "--vision_tower", tiny_clip, "--version", "v1",
        "--mm_use_im_patch_token", "False", "--mm_vision_select_feature", "patch", "--twoD_vision_embedding", "True",
        "--attn_implementation", "sdpa", "--packing", "True", "--data_path", data.finetune_json,
        "--image_folder", data.image_folder, "--output_dir", str(out), "--use_cpu", "True",
        "--num_train_epochs", "1", "--per_device_train_batch_size", "2", "--report_to", "none",
        "--save_strategy", "no", "--logging_steps", "1", "--model_max_length", "128",
        "--dataloader_num_workers", "0", "--seed", "0"])
    train()
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert state["global_step"] >= 1 and losses and all(math.isfinite(x) for x in losses)
    config = json.loads((out / "config.json").read_text())
    assert config["twoD_vision_embedding"] is True
    assert Path(out / "model.safetensors").exists() or any(out.glob("model*.safetensors"))
