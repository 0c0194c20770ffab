"""The add-on registry: external add-ons end to end, flag checks with exact messages, and the seam's rules."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_data import write_shapes_dataset

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.addons.registry import BUILTIN_ADDONS, AddonRegistry
from llava.model.builder import load_pretrained_model
from llava.testing.tiny_llava import build_tiny_llava
from llava.testing.tiny_models import build_clip
from llava.train.arguments import ModelArguments, check_addons
from llava.train.train import build_parser
from llava.train.trainer import projector_param_ids

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "addon_plugins.position_bias"
IDS = torch.tensor([[1, IMAGE_TOKEN_INDEX, 20, 21, 22]])


@pytest.fixture()
def images():
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# ---- add-ons from outside the package ----

def test_external_flags_appear_in_help_only_when_named():
    with_plugin = build_parser(["--mm_addon_modules", PLUGIN]).format_help()
    assert "--add_position_bias" in with_plugin and "--position_bias_std" in with_plugin
    assert "--add_position_bias" not in build_parser([]).format_help()
    assert "--add_registers" in build_parser([]).format_help()  # built-ins need no flag


def test_external_flags_in_the_real_cli_help():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO)]))
    out = subprocess.run([sys.executable, "-m", "llava.train.train", f"--mm_addon_modules={PLUGIN}", "--help"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--add_position_bias" in out.stdout and "Learned bias per image-token position." in out.stdout


def test_unknown_module_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^--mm_addon_modules no_such_pkg\.addon: cannot import it"):
        AddonRegistry.with_modules("no_such_pkg.addon")
    with pytest.raises(ValueError, match=r"^--mm_addon_modules json: the module must define ADDONS"):
        AddonRegistry.with_modules("json")


def _train(monkeypatch, argv):
    from llava.train.train import train

    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    train()


def test_external_addon_trains_saves_and_reloads(monkeypatch, tmp_path, tiny_llama, tiny_clip, images):
    data = write_shapes_dataset(tmp_path / "data", n=8)
    out = tmp_path / "out"
    _train(monkeypatch, [
        "--model_name_or_path", tiny_llama, "--vision_tower", tiny_clip, "--version", "plain",
        "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2", "--tune_mm_mlp_adapter", "True",
        "--data_path", data.pretrain_json, "--image_folder", data.image_folder, "--output_dir", str(out),
        "--use_cpu", "True", "--max_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2",
        "--report_to", "none", "--save_strategy", "no", "--model_max_length", "128", "--seed", "0",
        "--mm_use_im_patch_token", "False", "--mm_addon_modules", PLUGIN, "--add_position_bias", "True"])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mm_addon_modules"] == [PLUGIN] and cfg["add_position_bias"] is True
    assert cfg["position_bias_tokens"] == 16
    state = torch.load(out / "mm_projector.bin", weights_only=True)
    assert set(state) == {"model.mm_position_bias.bias", *(f"model.mm_projector.{i}.{w}" for i in (0, 2)
                                                            for w in ("weight", "bias"))}
    assert state["model.mm_position_bias.bias"].abs().sum() > 0  # trained with the projector (init 0)

    _, model, _, _ = load_pretrained_model(str(out), tiny_llama, device="cpu", addon_modules=[PLUGIN])
    bias = model.get_model().mm_position_bias.bias
    assert torch.equal(bias.detach(), state["model.mm_position_bias.bias"])
    assert id(bias) in projector_param_ids(model)  # --mm_projector_lr group, freezing with the projector
    with torch.no_grad():
        with_bias = model(input_ids=IDS, images=images).logits
        bias.zero_()
        assert not torch.allclose(with_bias, model(input_ids=IDS, images=images).logits)

    with pytest.raises(ValueError) as err:
        load_pretrained_model(str(out), tiny_llama, device="cpu")
    assert str(err.value) == (
        f"this checkpoint uses the add-on module(s) {PLUGIN}, which are never imported because config.json "
        f"names them: pass addon_modules=['{PLUGIN}'] to load_pretrained_model (--mm_addon_modules {PLUGIN} "
        "on the command line) if you trust that code.")


# ---- flag checks at argument parsing (config.json files only) ----

@pytest.fixture(scope="module")
def clip24(tmp_path_factory):
    return build_clip(tmp_path_factory.mktemp("clip24"), num_layers=24, hidden=16, image_size=32, patch_size=8)


def _check(tower, llm="no-such-llm", **flags):
    check_addons(ModelArguments(model_name_or_path=llm, vision_tower=tower, **flags))


@pytest.mark.parametrize(("flags", "message"), [
    (dict(final_spatial_size=4), "--final_spatial_size has no effect without --compression_after_projection True: "
                                 "add that flag or drop --final_spatial_size."),
    (dict(interleave_sparsity=2), "--interleave_sparsity has no effect without --interleave True: add that flag or "
                                  "drop --interleave_sparsity."),
    (dict(mm_multilayer_select="1,2"), "--mm_multilayer_select has no effect without --use_multilayer_features "
                                       "True: add that flag or drop --mm_multilayer_select."),
    (dict(mm_cosine_lambda=0.5), "--mm_cosine_lambda has no effect without --mm_cosine_loss constrain or "
                                 "self_distill: add that flag or drop --mm_cosine_lambda."),
    (dict(num_registers=2), "--num_registers has no effect without --add_registers True: add that flag or drop "
                            "--num_registers."),
    (dict(mm_cosine_loss="constrain", mm_cosine_lambda=math.nan), "--mm_cosine_lambda must be a finite number "
                                                                  ">= 0, got nan"),
    (dict(mm_cosine_loss="constrain", mm_cosine_lambda=math.inf), "--mm_cosine_lambda must be a finite number "
                                                                  ">= 0, got inf"),
    (dict(interleave=True, interleave_sparsity=17), "--interleave_sparsity 17 is larger than the 16 tokens of each "
                                                    "image, so no coordinate would be inserted; use a value in 1..16."),
    (dict(interleave=True, interleave_sparsity=5, compression_after_projection=True, final_spatial_size=4),
     "--interleave_sparsity 5 is larger than the 4 tokens of each image, so no coordinate would be inserted; use "
     "a value in 1..4."),
    (dict(add_registers=True, num_registers=0), "--num_registers 0 is not valid: give an integer >= 1."),
])
def test_bad_flag_combinations(tiny_clip, flags, message):
    with pytest.raises(ValueError) as err:
        _check(tiny_clip, **flags)
    assert str(err.value) == message


def test_cosine_width_is_checked_before_the_llm_loads(tiny_clip, tiny_llama):
    with pytest.raises(ValueError, match=r"^--mm_cosine_loss constrain embeds the 128-wide vision features "
                                         r"isometrically into the 64-wide LLM space"):
        _check(tiny_clip, llm=tiny_llama, mm_cosine_loss="constrain", use_multilayer_features=True,
               mm_multilayer_select="1,2,3,4")
    _check(tiny_clip, llm=tiny_llama, mm_cosine_loss="constrain", mm_cosine_constrain_mode="gram",
           use_multilayer_features=True, mm_multilayer_select="1,2,3,4")


def test_negative_layer_lists_need_the_equals_form(clip24):
    parser = build_parser([])
    model_args = parser.parse_args_into_dataclasses(
        ["--mm_multilayer_select=-25,24", "--use_multilayer_features", "True", "--output_dir", "x"])[0]
    assert model_args.mm_multilayer_select == "-25,24"
    _check(clip24, use_multilayer_features=True, mm_multilayer_select=model_args.mm_multilayer_select)
    assert "the = form: --mm_multilayer_select=-25,24" in " ".join(parser.format_help().split())


# ---- the multi-layer post-norm (crashed on a transformers 5 CLIPVisionModel) ----

def test_multilayer_post_norm_is_cat_of_post_layernorm_without_cls(tiny_llama, tiny_clip, images):
    model = build_tiny_llava(tiny_llama, tiny_clip, use_multilayer_features=True, mm_multilayer_select="1,2,3",
                             mm_multilayer_post_norm=True)
    clip = model.get_vision_tower().vision_tower
    with torch.no_grad():
        hs = clip(images, output_hidden_states=True).hidden_states
        expected = torch.cat([clip.post_layernorm(hs[i]) for i in (1, 2, 3)], dim=-1)[:, 1:]
        x = model.encode_image_blocks_with_aux(images)[2]
        torch.testing.assert_close(x, expected, atol=1e-6, rtol=1e-6)
        assert not torch.allclose(x, torch.cat([hs[i] for i in (1, 2, 3)], dim=-1)[:, 1:])
        assert model(input_ids=IDS, images=images).logits.shape[:2] == (1, 4 + 16)


# ---- the seam's rules (static) ----

def _sources():
    roots = [REPO / "llava", REPO / "scripts"]
    return [p for root in roots for p in root.rglob("*.py")]


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Fully qualified modules (and module.names) a file imports, relative imports resolved."""
    tree = ast.parse(path.read_text())
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".")
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


ADDON_FILES = sorted(p for p in (REPO / "llava/model/addons").glob("*.py")
                     if p.stem not in ("__init__", "base", "registry"))


def test_only_the_registry_imports_individual_addons():
    addon_modules = {_module_name(p) for p in ADDON_FILES}
    offenders = {str(p.relative_to(REPO)): sorted(_imports(p) & addon_modules) for p in _sources()
                 if p.name != "registry.py" or p.parent.name != "addons"}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_addon_modules_import_nothing_from_train():
    bad = {p.name: sorted(m for m in _imports(p) if m.startswith("llava.train")) for p in ADDON_FILES}
    assert {k: v for k, v in bad.items() if v} == {}
    assert len(ADDON_FILES) == len(BUILTIN_ADDONS)  # one add-on, one module


def test_no_membership_by_name_substring():
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
                consts = [n for n in [node.left, *node.comparators] if isinstance(n, ast.Constant)]
                assert not any(isinstance(c.value, str) and "mm_projector" in c.value for c in consts), \
                    f"{path}:{node.lineno} decides membership by the substring 'mm_projector'"


def test_addon_config_keys_are_read_only_through_the_typed_view():
    keys = {f.name for a in BUILTIN_ADDONS for f in dataclasses.fields(a.Config)}
    allowed = REPO / "llava/model/addons/base.py"
    for path in _sources():
        if path == allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
                assert node.args[1].value not in keys, f"{path}:{node.lineno} reads {node.args[1].value}"


# ---- the one owner of the auxiliary losses ----

def _projector_after_one_step(monkeypatch, tmp_path, tiny_llama, tiny_clip, data, batch, accum):
    out = tmp_path / f"b{batch}x{accum}"
    _train(monkeypatch, [
        "--model_name_or_path", tiny_llama, "--vision_tower", tiny_clip, "--version", "plain",
        "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2", "--tune_mm_mlp_adapter", "True",
        "--data_path", data.pretrain_json, "--image_folder", data.image_folder, "--output_dir", str(out),
        "--use_cpu", "True", "--max_steps", "1", "--per_device_train_batch_size", str(batch),
        "--gradient_accumulation_steps", str(accum), "--optim", "sgd", "--learning_rate", "0.5",
        "--lr_scheduler_type", "constant", "--report_to", "none", "--save_strategy", "no", "--seed", "0",
        "--model_max_length", "128", "--mm_use_im_patch_token", "False", "--logging_steps", "1",
        "--mm_cosine_loss", "self_distill", "--mm_cosine_lambda", "2.0"])
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return torch.load(out / "mm_projector.bin", weights_only=True), history[0]


def test_lambda_means_the_same_at_any_accumulation(monkeypatch, tmp_path, tiny_llama, tiny_clip):
    data = write_shapes_dataset(tmp_path / "data", n=4)  # one optimizer step sees all 4 samples
    one, log_one = _projector_after_one_step(monkeypatch, tmp_path, tiny_llama, tiny_clip, data, 4, 1)
    two, log_two = _projector_after_one_step(monkeypatch, tmp_path, tiny_llama, tiny_clip, data, 2, 2)
    assert set(one) == set(two)
    for k in one:
        torch.testing.assert_close(one[k], two[k], atol=2e-6, rtol=1e-5, msg=k)
    for key in ("loss_tp", "loss_cos", "loss_cos_weighted", "loss"):
        assert log_one[key] == pytest.approx(log_two[key], rel=1e-4), key
    assert log_one["loss_cos_weighted"] == pytest.approx(2.0 * log_one["loss_cos"], rel=1e-5)
    assert log_one["loss"] == pytest.approx(log_one["loss_tp"] + log_one["loss_cos_weighted"], rel=1e-4)
    assert log_one["mm_cosine_lambda"] == 2.0
