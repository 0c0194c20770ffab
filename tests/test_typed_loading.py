"""Loading a base LLM into its LLaVA class is typed (``config_from_llm``): no "You are using a model of type llama
to instantiate a model of type llava_llama" warning in a stage's output, and the same config as before."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers_data import write_shapes_dataset
from transformers import AutoConfig

from llava.model import llava_class_for

WARNING = "to instantiate a model of type"


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_config_from_llm_is_the_llava_type_with_the_llm_fields(family, request):
    llm_config = AutoConfig.from_pretrained(request.getfixturevalue(f"tiny_{family}"))
    cls = llava_class_for(llm_config.model_type)
    config = cls.config_from_llm(llm_config)
    assert type(config) is cls.config_class and config.model_type == f"llava_{family}"
    mine, theirs = config.to_dict(), llm_config.to_dict()
    assert {k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)} == {"model_type"}
    assert cls.config_from_llm(config) is config


def test_pretrain_stage_output_has_no_model_type_warning(tmp_path, tiny_llama, tiny_clip):
    """The pretrain stage's entry point (what pretrain.sh runs), one step, its whole output captured."""
    data = write_shapes_dataset(tmp_path / "data", n=4, text_only=0)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "llava.train.train", "--model_name_or_path", tiny_llama, "--vision_tower",
           tiny_clip, "--version", "plain", "--tune_mm_mlp_adapter", "True", "--mm_projector_type", "mlp2x_gelu",
           "--mm_use_im_patch_token", "False", "--data_path", str(data.pretrain_json), "--image_folder",
           str(data.image_folder), "--output_dir", str(out), "--use_cpu", "True", "--max_steps", "1",
           "--per_device_train_batch_size", "2", "--save_strategy", "no", "--report_to", "none",
           "--dataloader_num_workers", "0", "--model_max_length", "128"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "mm_projector.bin").is_file()
    logs = run.stdout + run.stderr
    assert "Loading weights" in logs or "train_runtime" in logs  # the captured output is the run's
    assert WARNING not in logs, [line for line in logs.splitlines() if WARNING in line]
    assert torch.load(out / "mm_projector.bin", weights_only=True)
