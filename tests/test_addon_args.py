"""Bad add-on flag values fail at argument parsing, before any model is loaded, with exact messages."""

from __future__ import annotations

import contextlib
import io
import json
import sys

import pytest

from llava.testing.tiny_models import build_clip


@pytest.fixture(scope="module")
def clip24(tmp_path_factory):
    return build_clip(tmp_path_factory.mktemp("clip24"), num_layers=24, hidden=16, image_size=32, patch_size=8)


def _run_train(monkeypatch, tmp_path, tower, *flags):
    from llava.train.train import train

    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": "0", "conversations": [{"from": "human", "value": "hi"},
                                                               {"from": "gpt", "value": "yo"}]}]))
    argv = ["train.py", "--model_name_or_path", str(tmp_path / "no-such-llm"), "--vision_tower", tower,
            "--data_path", str(data), "--output_dir", str(tmp_path / "out"), "--use_cpu", "True", *flags]
    monkeypatch.setattr(sys, "argv", argv)
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as err, contextlib.redirect_stderr(stderr):
        train()
    assert err.value.code == 2
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines  # one line, no traceback
    return lines[0][len("error: "):]


def test_bad_final_spatial_size(monkeypatch, tmp_path, clip24):
    msg = _run_train(monkeypatch, tmp_path, clip24, "--compression_after_projection", "True",
                     "--final_spatial_size", "10")
    assert msg == ("--final_spatial_size 10 is not valid: it is the number of image tokens after compression (a "
                   "perfect square whose side divides the 4x4 patch grid). Valid values for this vision tower: "
                   "1, 4, 16.")


def test_layer_beyond_tower_depth(monkeypatch, tmp_path, clip24):
    msg = _run_train(monkeypatch, tmp_path, clip24, "--use_multilayer_features", "True",
                     "--mm_multilayer_select", "12,16,20,30")
    assert msg == ("--mm_multilayer_select has layer(s) [30] but the vision tower has 24 layers: valid indices are "
                   "0..24 (0 = embeddings) or -25..-1.")


def test_zero_interleave_sparsity(monkeypatch, tmp_path, clip24):
    msg = _run_train(monkeypatch, tmp_path, clip24, "--interleave", "True", "--interleave_sparsity", "0")
    assert msg == ("--interleave_sparsity 0 is not valid: it is the number of image tokens between two inserted "
                   "coordinate strings and must be an integer >= 1 (1 = after every image token).")


def test_default_multilayer_picks_fit_a_24_layer_tower(clip24):
    from types import SimpleNamespace

    from llava.train.arguments import ModelArguments, check_addons

    args = SimpleNamespace(**{**ModelArguments().__dict__, "use_multilayer_features": True,
                              "vision_tower": clip24, "mm_vision_select_feature": "patch"})
    check_addons(args)
