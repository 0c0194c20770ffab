"""Fast unit tests for training arguments, validation, optimizer groups, saving/resume helpers."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os

import pytest
import torch
from torch import nn
from transformers import GenerationConfig, HfArgumentParser

from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments, validate_args
from llava.train.train import find_all_linear_names, find_resume_checkpoint
from llava.train.trainer import LLaVATrainer, build_param_groups
from llava.utils.generation_config import sanitize_generation_config
from llava.utils.zero import (
    gather_named,
    get_peft_state_maybe_zero_3,
    get_peft_state_non_lora_maybe_zero_3,
    maybe_zero_3,
)


def _parse(tmp_path, *extra: str):
    data = tmp_path / "data.json"
    data.write_text("[]")
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    return parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path / "out"), "--data_path", str(data), "--report_to", "none",
         "--version", "v1", *extra]
    )


# ---- arguments ----

def test_upstream_defaults(tmp_path):
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    m, d, t = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path)])
    assert (m.version, m.mm_vision_select_layer, m.mm_projector_type) == ("v1", -1, "linear")
    assert m.mm_use_im_patch_token is True and m.mm_use_im_start_end is False
    assert (m.mm_patch_merge_type, m.mm_vision_select_feature) == ("flat", "patch")
    assert m.tune_mm_mlp_adapter is False and m.pretrain_mm_mlp_adapter is None
    assert (d.image_aspect_ratio, d.lazy_preprocess, d.skip_bad_samples) == ("square", False, False)
    assert getattr(t.optim, "value", t.optim) == "adamw_torch"
    assert t.remove_unused_columns is False
    assert (t.model_max_length, t.bits, t.double_quant, t.quant_type) == (512, 16, True, "nf4")
    lora = (t.lora_enable, t.lora_r, t.lora_alpha, t.lora_dropout, t.lora_bias)
    assert lora == (False, 64, 16, 0.05, "none")
    assert t.mm_projector_lr is None and t.group_by_modality_length is False
    assert t.freeze_mm_mlp_adapter is False and t.lora_weight_path == ""


def test_upstream_aliases_for_renamed_flags(tmp_path):
    _, _, t = _parse(tmp_path, "--warmup_ratio", "0.03", "--evaluation_strategy", "no")
    assert t.warmup_steps == 0.03 and str(getattr(t.eval_strategy, "value", t.eval_strategy)) == "no"
    with pytest.raises(ValueError, match="--warmup_ratio and --warmup_steps are both set"):
        _parse(tmp_path, "--warmup_ratio", "0.03", "--warmup_steps", "5")


def test_runtime_data_fields_are_not_flags():
    names = {f.name for f in dataclasses.fields(DataArguments) if f.init}
    assert "image_processor" not in names and "conv_version" not in names
    parser = HfArgumentParser(DataArguments)
    with pytest.raises(ValueError, match="not used by the HfArgumentParser"):
        parser.parse_args_into_dataclasses(["--image_processor", "x"])


def test_validate_accepts_v15_flags(tmp_path):
    m, d, t = _parse(tmp_path, "--mm_projector_type", "mlp2x_gelu", "--image_aspect_ratio", "pad",
                     "--mm_vision_select_layer", "-2", "--version", "plain")
    validate_args(m, d, t)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image_aspect_ratio", "anyres"],
         "--image_aspect_ratio 'anyres' is not supported; valid values: square, pad"),
        (["--mm_vision_select_feature", "cls"], "--mm_vision_select_feature 'cls' is not supported"),
        (["--mm_projector_type", "mlp2x_relu"],
         "--mm_projector_type: Unknown mm_projector_type 'mlp2x_relu'"),
        (["--bits", "3"], "--bits 3 is not supported; valid values: 4, 8, 16"),
        (["--lora_bias", "some"], "--lora_bias 'some' is not supported"),
        (["--tune_mm_mlp_adapter", "True", "--freeze_mm_mlp_adapter", "True", "--vision_tower", "x"],
         "--tune_mm_mlp_adapter True and --freeze_mm_mlp_adapter True contradict"),
        (["--tune_mm_mlp_adapter", "True"], "need a projector, which needs --vision_tower"),
        (["--pretrain_mm_mlp_adapter", "/nonexistent/mm_projector.bin", "--vision_tower", "x"],
         "--pretrain_mm_mlp_adapter '/nonexistent/mm_projector.bin' does not exist"),
        (["--image_folder", "/nonexistent/images"],
         "--image_folder '/nonexistent/images' is not a directory"),
        (["--mm_projector_lr", "-1"], "--mm_projector_lr must be positive"),
        (["--model_max_length", "0"], "--model_max_length must be positive"),
    ],
)
def test_validate_rejects(tmp_path, extra, message):
    m, d, t = _parse(tmp_path, *extra)
    with pytest.raises(ValueError) as err:
        validate_args(m, d, t)
    assert message in str(err.value)


def test_validate_missing_data(tmp_path):
    m, d, t = _parse(tmp_path)
    d.data_path = str(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="--data_path '.*missing.json' does not exist"):
        validate_args(m, d, t)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes installed")
def test_validate_bits_without_bitsandbytes(tmp_path):
    m, d, t = _parse(tmp_path, "--bits", "4")
    with pytest.raises(ValueError, match=r"--bits 4 needs the `bitsandbytes` package"):
        validate_args(m, d, t)


# ---- generation config ----

def test_sanitize_generation_config_fixes_vicuna_style(tmp_path):
    gen = GenerationConfig(do_sample=False, temperature=0.9, top_p=0.6, max_length=4096, pad_token_id=0)
    with pytest.raises(ValueError):
        gen.save_pretrained(tmp_path / "before")
    changes = sanitize_generation_config(gen)
    assert changes == [
        "temperature: 0.9 -> None (sampling-only value while do_sample is False)",
        "top_p: 0.6 -> None (sampling-only value while do_sample is False)",
    ]
    assert gen.do_sample is False and gen.max_length == 4096
    gen.save_pretrained(tmp_path / "after")
    assert sanitize_generation_config(gen) == []


def test_sanitize_keeps_sampling_configs_and_handles_none():
    gen = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9, top_k=20)
    assert sanitize_generation_config(gen) == []
    assert (gen.temperature, gen.top_p, gen.top_k) == (0.7, 0.9, 20)
    assert sanitize_generation_config(None) == []


def test_sanitize_beam_and_neutral_values():
    gen = GenerationConfig(num_beams=1, length_penalty=2.0, temperature=1.0, top_k=50)
    assert sanitize_generation_config(gen) == ["length_penalty: 2.0 -> None (beam-search-only value while "
                                               "num_beams is 1)"]
    assert gen.temperature == 1.0


# ---- optimizer groups ----

class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.mm_projector = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 4))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_param_groups_with_projector_lr():
    toy = _Toy()
    decay = ["body.weight", "mm_projector.0.weight", "mm_projector.2.weight", "frozen.weight"]
    projector_ids = {id(p) for p in toy.mm_projector.parameters()}  # membership by identity, not by name
    groups = build_param_groups(toy.named_parameters(), decay, 0.1, 2e-5, projector_ids)
    ids = {id(p): n for n, p in toy.named_parameters()}
    summary = sorted((tuple(sorted(ids[id(p)] for p in g["params"])), g["weight_decay"], g.get("lr"))
                     for g in groups)
    assert summary == [
        (("body.bias", "norm.bias", "norm.weight"), 0.0, None),
        (("body.weight",), 0.1, None),
        (("mm_projector.0.bias", "mm_projector.2.bias"), 0.0, 2e-5),
        (("mm_projector.0.weight", "mm_projector.2.weight"), 0.1, 2e-5),
    ]


def test_param_groups_without_projector_lr_and_empty_groups_dropped():
    toy = _Toy()
    toy.requires_grad_(False)
    toy.mm_projector.requires_grad_(True)
    decay = ["mm_projector.0.weight", "mm_projector.2.weight"]
    projector_ids = {id(p) for p in toy.mm_projector.parameters()}
    groups = build_param_groups(toy.named_parameters(), decay, 0.0, None, projector_ids)
    assert len(groups) == 2 and all("lr" not in g for g in groups)


# ---- ZeRO helpers (plain tensors) ----

def test_zero_helpers_without_deepspeed():
    lin = nn.Linear(2, 2)
    copy = maybe_zero_3(lin.weight)
    assert torch.equal(copy, lin.weight) and copy.data_ptr() != lin.weight.data_ptr()
    named = [("model.mm_projector.0.weight", torch.ones(2)),
             ("model.layers.0.q_proj.lora_A.weight", torch.ones(1)),
             ("model.layers.0.q_proj.bias", torch.ones(1)),
             ("model.layers.0.k_proj.bias", torch.ones(1))]
    assert list(gather_named(named[:1])) == ["model.mm_projector.0.weight"]
    assert list(get_peft_state_maybe_zero_3(named, "none")) == ["model.layers.0.q_proj.lora_A.weight"]
    assert len(get_peft_state_maybe_zero_3(named, "all")) == 3
    assert sorted(get_peft_state_maybe_zero_3(named, "lora_only")) == [
        "model.layers.0.q_proj.bias", "model.layers.0.q_proj.lora_A.weight"]
    non_lora = get_peft_state_non_lora_maybe_zero_3([(k, nn.Parameter(v)) for k, v in named])
    assert "model.layers.0.q_proj.lora_A.weight" not in non_lora and len(non_lora) == 3
    with pytest.raises(ValueError, match="lora_bias 'x'"):
        get_peft_state_maybe_zero_3(named, "x")


# ---- resume discovery ----

def test_find_resume_checkpoint_skips_incomplete(tmp_path):
    assert find_resume_checkpoint(str(tmp_path / "none")) is None
    for step, complete in ((2, True), (4, True), (6, False)):
        ck = tmp_path / f"checkpoint-{step}"
        ck.mkdir()
        if complete:
            (ck / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert find_resume_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")


# ---- trainer with a tiny LLaVA model ----

@pytest.fixture()
def tiny_llava(tiny_llama, tiny_clip):
    from llava.testing.tiny_llava import build_tiny_llava

    return build_tiny_llava(tiny_llama, tiny_clip).train()


def _trainer(model, tmp_path, **kw):
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", **kw)
    return LLaVATrainer(model=model, args=args)


def test_lora_targets_exclude_projector_tower_and_head(tiny_llava):
    names = find_all_linear_names(tiny_llava)
    assert "lm_head" not in names and {"q_proj", "v_proj", "down_proj"} <= set(names)
    assert not {"fc1", "fc2", "out_proj"} & set(names)  # CLIP tower linears
    assert not {"0", "2"} & set(names)  # mm_projector.0 / .2


def test_trainer_projector_lr_groups(tiny_llava, tmp_path):
    trainer = _trainer(tiny_llava, tmp_path, learning_rate=1e-3, mm_projector_lr=5e-5, weight_decay=0.1)
    opt = trainer.create_optimizer()
    proj = {id(p) for p in tiny_llava.get_model().mm_projector.parameters()}
    for group in opt.param_groups:
        in_proj = {id(p) in proj for p in group["params"]}
        assert len(in_proj) == 1
        assert group["lr"] == (5e-5 if in_proj.pop() else 1e-3)


def test_projector_only_save_and_resume(tiny_llava, tmp_path):
    tiny_llava.config.tune_mm_mlp_adapter = True
    tiny_llava.generation_config = GenerationConfig(do_sample=False, temperature=0.6)
    trainer = _trainer(tiny_llava, tmp_path)
    ckpt = tmp_path / "checkpoint-1"
    trainer.save_model(str(ckpt))
    state = torch.load(ckpt / "mm_projector.bin", weights_only=True)
    assert sorted(state) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                             "model.mm_projector.2.bias", "model.mm_projector.2.weight"]
    assert json.loads((ckpt / "config.json").read_text())["mm_projector_type"] == "mlp2x_gelu"
    assert not (ckpt / "model.safetensors").exists()
    before = {k: v.clone() for k, v in tiny_llava.state_dict().items() if "mm_projector" in k}
    with torch.no_grad():
        for p in tiny_llava.get_model().mm_projector.parameters():
            p.add_(1.0)
    trainer._load_from_checkpoint(str(ckpt))
    after = {k: v for k, v in tiny_llava.state_dict().items() if "mm_projector" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_full_save_sanitizes_generation_config(tiny_llava, tmp_path, caplog):
    tiny_llava.generation_config = GenerationConfig(do_sample=False, temperature=0.6, top_p=0.9)
    trainer = _trainer(tiny_llava, tmp_path)
    trainer.save_model(str(tmp_path / "full"))
    assert os.path.isfile(tmp_path / "full" / "model.safetensors")
    saved = json.loads((tmp_path / "full" / "generation_config.json").read_text())
    assert "temperature" not in saved and "top_p" not in saved
    assert "temperature: 0.6 -> None" in caplog.text


def test_lora_save_writes_non_lora_and_resume_restores(tiny_llava, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llava, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  task_type="CAUSAL_LM"))
    tiny_llava.get_model().mm_projector.requires_grad_(True)
    trainer = _trainer(model, tmp_path, lora_enable=True)
    ckpt = tmp_path / "checkpoint-3"
    trainer.save_model(str(ckpt))
    non_lora = torch.load(ckpt / "non_lora_trainables.bin", weights_only=True)
    assert sorted(non_lora) == sorted(f"base_model.model.model.mm_projector.{i}.{w}"
                                      for i in (0, 2) for w in ("weight", "bias"))
    assert (ckpt / "adapter_model.safetensors").exists() and (ckpt / "config.json").exists()
    proj = tiny_llava.get_model().mm_projector
    before = [p.detach().clone() for p in proj.parameters()]
    with torch.no_grad():
        for p in proj.parameters():
            p.mul_(0.0)
    trainer._load_from_checkpoint(str(ckpt))
    assert all(torch.equal(a, b) for a, b in zip(before, proj.parameters()))


def test_text_only_batch_uses_image_batch_module_order(tiny_llava):
    from llava.constants import IMAGE_TOKEN_INDEX

    order: list[str] = []
    tiny_llava.get_model().embed_tokens.register_forward_pre_hook(lambda *a: order.append("embed"))
    tiny_llava.get_model().mm_projector.register_forward_pre_hook(lambda *a: order.append("projector"))
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5, 6]])
    tiny_llava(input_ids=ids, labels=ids.clamp(min=0), images=torch.zeros(1, 3, 32, 32))
    image_order, order[:] = list(order), []
    tiny_llava(input_ids=torch.tensor([[1, 5, 6]]), labels=torch.tensor([[1, 5, 6]]))
    assert order == image_order


# ---- stage scripts (dry run through a fake launcher) ----

def _dry_run(tmp_path, script: str, *args: str, **env: str) -> list[str]:
    import subprocess
    from pathlib import Path

    fake = tmp_path / "fake_launcher.sh"
    fake.write_text('#!/usr/bin/env bash\necho "DS_ACCELERATOR=${DS_ACCELERATOR:-}"\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    repo = Path(__file__).resolve().parents[1]
    full_env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}  # no stray stage variables
    full_env.update(LAUNCHER=str(fake), **env)
    res = subprocess.run(["bash", str(repo / "scripts" / "v1_5" / script), *args], env=full_env,
                         capture_output=True, text=True, timeout=30, check=True)
    return res.stdout.splitlines()


def _flag(argv: list[str], name: str) -> str:
    return argv[len(argv) - 1 - argv[::-1].index(name) + 1]  # last occurrence wins, like argparse


@pytest.mark.parametrize("script", ["pretrain.sh", "finetune.sh", "finetune_lora.sh", "finetune_task.sh",
                                    "finetune_task_lora.sh"])
def test_stage_scripts_cpu_mode_and_overrides(tmp_path, script):
    out = _dry_run(tmp_path, script, "--learning_rate", "7e-7", DEVICE="cpu", NUM_GPUS="2",
                   HOSTFILE="/etc/hostfile", BATCH_SIZE="3", OUTPUT_DIR="/tmp/o", VISION_TOWER="/tmp/clip")
    assert out[0] == "DS_ACCELERATOR=cpu"
    argv = out[1:]
    assert argv[:4] == ["--hostfile", "/etc/hostfile", "--num_gpus", "2"]
    assert argv[4].endswith("llava/train/train_mem.py")
    assert _flag(argv, "--use_cpu") == "True" and "--bf16" not in argv and "--tf32" not in argv
    assert _flag(argv, "--per_device_train_batch_size") == "3" and _flag(argv, "--output_dir") == "/tmp/o"
    assert _flag(argv, "--vision_tower") == "/tmp/clip" and _flag(argv, "--learning_rate") == "7e-7"
    assert _flag(argv, "--mm_projector_type") == "mlp2x_gelu"
    assert _flag(argv, "--mm_vision_select_layer") == "-2"


def test_stage_script_recipes_on_gpu(tmp_path):
    pre = _dry_run(tmp_path, "pretrain.sh")[1:]
    assert "--num_gpus" not in pre and "--hostfile" not in pre
    assert (_flag(pre, "--bf16"), _flag(pre, "--tf32")) == ("True", "True")
    assert _flag(pre, "--deepspeed").endswith("scripts/zero2.json") and _flag(pre, "--version") == "plain"
    assert (_flag(pre, "--per_device_train_batch_size"), _flag(pre, "--learning_rate")) == ("32", "1e-3")
    assert _flag(pre, "--tune_mm_mlp_adapter") == "True"
    assert _flag(pre, "--output_dir") == "./checkpoints/llava-v1.5-13b-pretrain"
    ft = _dry_run(tmp_path, "finetune.sh")[1:]
    assert _flag(ft, "--deepspeed").endswith("scripts/zero3.json") and _flag(ft, "--version") == "v1"
    assert (_flag(ft, "--per_device_train_batch_size"), _flag(ft, "--learning_rate")) == ("16", "2e-5")
    assert _flag(ft, "--pretrain_mm_mlp_adapter") == "./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin"
    assert (_flag(ft, "--image_aspect_ratio"), _flag(ft, "--group_by_modality_length")) == ("pad", "True")
    lora = _dry_run(tmp_path, "finetune_lora.sh")[1:]
    assert (_flag(lora, "--lora_r"), _flag(lora, "--lora_alpha"), _flag(lora, "--mm_projector_lr")) == (
        "128", "256", "2e-5")
    assert _flag(lora, "--learning_rate") == "2e-4"


def test_single_node_without_master_port_takes_a_free_port(tmp_path):
    ports = []
    for _ in range(2):
        argv = _dry_run(tmp_path, "pretrain.sh", DEVICE="cpu", NUM_GPUS="2")[1:]
        ports.append(int(_flag(argv, "--master_port")))
    assert all(1024 < p < 65536 and p != 29500 for p in ports), ports
    assert _flag(_dry_run(tmp_path, "pretrain.sh", DEVICE="cpu", MASTER_PORT="31337")[1:], "--master_port") == "31337"
    assert "--master_port" not in _dry_run(tmp_path, "pretrain.sh", HOSTFILE="/etc/hostfile")  # multi-node: theirs
