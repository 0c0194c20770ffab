"""Register tokens (``--add_registers``): training, save/reload, 2D RoPE positions, token counting.

The slow test runs them, together with an add-on from outside the package, through the real
stage scripts under DeepSpeed (ZeRO-2 pretrain, ZeRO-3 finetune) and reloads the result.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from e2e_helpers import REPO, _losses, _run
from helpers_data import write_shapes_dataset

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.builder import load_pretrained_model
from llava.model.checkpoints import save_mm_projector
from llava.testing.tiny_llava import build_tiny_llava

IMG = IMAGE_TOKEN_INDEX
IDS = torch.tensor([[1, IMG, 20, 21, 22], [1, 5, IMG, 7, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
LABELS = IDS.masked_fill((IDS == IMG) | (MASK == 0), IGNORE_INDEX)


@pytest.fixture()
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _registers(model):
    return model.get_model().mm_registers.tokens


def test_registers_follow_each_image_and_train(tiny_llama, tiny_clip, images):
    model = build_tiny_llava(tiny_llama, tiny_clip, add_registers=True, num_registers=3).train()
    reg = _registers(model)
    assert reg.shape == (3, 64) and 0.005 < float(reg.std()) < 0.05  # N(0, 0.02) init
    blocks, layout = model.encode_image_blocks(images)
    assert blocks.shape == (2, 16 + 3, 64)
    torch.testing.assert_close(blocks[:, 16:], reg.detach().expand(2, -1, -1))
    assert layout.is_feature.tolist() == [True] * 16 + [False] * 3
    res = model.prepare_multimodal_splice(IDS, MASK, LABELS, images)
    assert res.image_mask.sum(dim=1).tolist() == [16, 16]  # registers are not image features
    assert (res.labels[0, 1:20] == IGNORE_INDEX).all()
    torch.testing.assert_close(res.inputs_embeds[0, 17:20], reg.detach())

    start = reg.detach().clone()
    params = [p for m in model.get_model().projector_modules() for p in m.parameters()]
    assert any(p is reg for p in params)  # travels with the projector
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(4):
        loss = model(input_ids=IDS, attention_mask=MASK, labels=LABELS, images=images).loss
        loss.backward()
        assert reg.grad is not None and reg.grad.abs().sum() > 0
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] and not torch.equal(start, reg.detach())


def test_register_positions_1d_and_2d(tiny_llama, tiny_clip, images):
    one_d = build_tiny_llava(tiny_llama, tiny_clip, add_registers=True, num_registers=3)
    pos = one_d.prepare_multimodal_splice(IDS[:1], MASK[:1], None, images[:1]).position_ids[0]
    assert pos.tolist() == list(range(1 + 16 + 3 + 3))
    two_d = build_tiny_llava(tiny_llama, tiny_clip, add_registers=True, num_registers=3, twoD_vision_embedding=True)
    rows, cols = two_d.prepare_multimodal_splice(IDS[:1], MASK[:1], None, images[:1]).position_ids[:, 0]
    grid_r = [1 + i // 4 for i in range(16)]
    grid_c = [1 + i % 4 for i in range(16)]
    # BOS 0, grid at (1 + r, 1 + c), registers at 1 + 4 + i on both streams, text continues at 1 + 4 + 3
    assert rows.tolist() == [0, *grid_r, 5, 6, 7, 8, 9, 10]
    assert cols.tolist() == [0, *grid_c, 5, 6, 7, 8, 9, 10]


def test_token_count_with_compression_and_interleave(tiny_llama, tiny_clip, llama_tokenizer, images):
    from types import SimpleNamespace

    model = build_tiny_llava(tiny_llama, tiny_clip, add_registers=True, num_registers=2,
                             compression_after_projection=True, final_spatial_size=4, interleave=True,
                             interleave_sparsity=2)
    model.initialize_vision_tokenizer(SimpleNamespace(), llama_tokenizer)
    coord = model.config.mm_interleave_coord_ids
    expected = 4 + len(coord[1]) + len(coord[3]) + 2
    assert model.get_model().addon_pipeline().tokens_per_image(16) == expected
    res = model.prepare_multimodal_splice(IDS[:1], MASK[:1], None, images[:1])
    assert res.inputs_embeds.shape[1] == IDS.shape[1] - 1 + expected


def test_save_and_reload_projector_only_and_full(tiny_llama, tiny_clip, llama_tokenizer, images, tmp_path):
    model = build_tiny_llava(tiny_llama, tiny_clip, add_registers=True, num_registers=2)
    with torch.no_grad():
        _registers(model).normal_()
        expected = model(input_ids=IDS, attention_mask=MASK, images=images).logits
    save_mm_projector(model, tmp_path / "proj")
    state = torch.load(tmp_path / "proj" / "mm_projector.bin", weights_only=True)
    assert torch.equal(state["model.mm_registers.tokens"], _registers(model).detach())
    _, loaded, _, _ = load_pretrained_model(str(tmp_path / "proj"), tiny_llama, device="cpu")
    model.save_pretrained(tmp_path / "full")
    llama_tokenizer.save_pretrained(tmp_path / "full")
    _, full, _, _ = load_pretrained_model(str(tmp_path / "full"), None, device="cpu")
    with torch.no_grad():
        for m in (loaded, full):
            torch.testing.assert_close(m(input_ids=IDS, attention_mask=MASK, images=images).logits, expected)


@pytest.mark.slow
def test_registers_and_an_external_addon_through_the_stage_scripts(tmp_path_factory, tiny_llama, tiny_clip):
    work = tmp_path_factory.mktemp("registers")
    data = write_shapes_dataset(work / "data", n=16)
    plugin = "addon_plugins.position_bias"
    flags = ["--add_registers", "True", "--num_registers", "2", "--mm_addon_modules", plugin,
             "--add_position_bias", "True"]
    env = dict(MODEL_NAME=tiny_llama, VISION_TOWER=tiny_clip, IMAGE_FOLDER=data.image_folder, SAVE_STEPS=100,
               PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    pre = work / "pretrain"
    _run("pretrain.sh", work / "pretrain.log", *flags, **env, DATA_PATH=data.pretrain_json, OUTPUT_DIR=pre,
         MAX_STEPS=3, LR=1e-2)  # ZeRO-2
    state = torch.load(pre / "mm_projector.bin", weights_only=True)
    assert {"model.mm_registers.tokens", "model.mm_position_bias.bias"} <= set(state)
    assert state["model.mm_position_bias.bias"].abs().sum() > 0 and len(_losses(pre)) == 3

    out = work / "finetune"
    _run("finetune.sh", work / "finetune.log", *flags, **env, DATA_PATH=data.finetune_json, OUTPUT_DIR=out,
         MAX_STEPS=2, LR=2e-3, PRETRAIN_MM_MLP_ADAPTER=pre / "mm_projector.bin")  # ZeRO-3
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["add_registers"] is True and cfg["num_registers"] == 2 and cfg["mm_addon_modules"] == [plugin]
    _, model, processor, _ = load_pretrained_model(str(out), None, device="cpu", addon_modules=[plugin])
    from PIL import Image

    pixels = processor(images=Image.open(Path(data.image_folder) / "000.png").convert("RGB"),
                       return_tensors="pt")["pixel_values"]
    gen = model.generate(IDS[:1], images=pixels, max_new_tokens=3, do_sample=False)
    assert gen.shape == (1, 3)
    with pytest.raises(ValueError, match="pass addon_modules="):
        load_pretrained_model(str(out), None, device="cpu")
