"""Add-on flags: vanilla is untouched, each flag does what it claims, every pair trains/generates/reloads."""

from __future__ import annotations

import dataclasses
import itertools
from types import SimpleNamespace

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.addons import compression, multilayer
from llava.model.addons.registry import BUILTIN_ADDONS
from llava.model.addons.rope2d import AxialRotaryEmbedding
from llava.model.builder import load_pretrained_model
from llava.testing.tiny_llava import build_tiny_llava

IMG = IMAGE_TOKEN_INDEX
ADDON_DEFAULTS = {f.name: f.default for a in BUILTIN_ADDONS for f in dataclasses.fields(a.Args)}
ADDON_CONFIG_KEYS = {f.name for a in BUILTIN_ADDONS for f in dataclasses.fields(a.Config)}
FLAGS = {
    "normalize": dict(normalize_projector=True),
    "multilayer": dict(use_multilayer_features=True, mm_multilayer_select="1,2,3"),
    "compression": dict(compression_after_projection=True, final_spatial_size=4),
    "rope2d": dict(twoD_vision_embedding=True),
    "interleave": dict(interleave=True, interleave_sparsity=4),
    "coordinates": dict(add_spatial_coordinates=True),
}
IDS = torch.tensor([[1, IMG, 20, 21, 22, 23], [1, 5, IMG, 7, 8, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])


def _build(tiny_llama, tiny_clip, tokenizer, seed=0, **flags):
    model = build_tiny_llava(tiny_llama, tiny_clip, seed=seed, **flags)
    model.initialize_vision_tokenizer(SimpleNamespace(), tokenizer)
    return model


@pytest.fixture()
def images():
    torch.manual_seed(0)
    return torch.randn(2, 3, 32, 32)


def test_vanilla_is_untouched_by_addon_code(tiny_llama, tiny_clip, llama_tokenizer, images, tmp_path):
    plain = _build(tiny_llama, tiny_clip, llama_tokenizer)
    explicit_off = _build(tiny_llama, tiny_clip, llama_tokenizer, **dict(ADDON_DEFAULTS))
    assert {k: v.shape for k, v in plain.state_dict().items()} == \
        {k: v.shape for k, v in explicit_off.state_dict().items()}
    plain.save_pretrained(tmp_path / "a")
    explicit_off.save_pretrained(tmp_path / "b")
    assert (tmp_path / "a/config.json").read_bytes() == (tmp_path / "b/config.json").read_bytes()
    cfg = plain.config.to_dict()
    assert not ADDON_CONFIG_KEYS & set(cfg), "vanilla config must not carry add-on fields"
    with torch.no_grad():
        out = plain(input_ids=IDS, attention_mask=MASK, images=images).logits
        torch.testing.assert_close(out, explicit_off(input_ids=IDS, attention_mask=MASK, images=images).logits,
                                   atol=0, rtol=0)
        # independent reference path: tower layer -2 without CLS -> projector -> hand-made sequence
        tower = plain.get_vision_tower().vision_tower
        feats = plain.get_model().mm_projector(tower(images, output_hidden_states=True).hidden_states[-2][:, 1:])
        emb = plain.get_model().embed_tokens
        seq0 = torch.cat([emb(torch.tensor([1])), feats[0], emb(torch.tensor([20, 21, 22, 23]))])
        ref0 = plain(inputs_embeds=seq0.unsqueeze(0)).logits[0]
    torch.testing.assert_close(out[0], ref0, atol=1e-5, rtol=1e-5)


def test_normalize_brings_tokens_to_text_norm(tiny_llama, tiny_clip, llama_tokenizer, images):
    model = _build(tiny_llama, tiny_clip, llama_tokenizer, **FLAGS["normalize"])
    rows = model.get_model().embed_tokens.weight.detach().norm(dim=-1)
    assert model.config.mm_norm_target == pytest.approx(float(rows.mean()), rel=1e-6)
    assert model.config.mm_norm_max == pytest.approx(float(rows.max()), rel=1e-6)
    assert "model.mm_projector_norm.gain" in model.state_dict()
    with torch.no_grad():
        norms = model.encode_images(images).norm(dim=-1)
        torch.testing.assert_close(norms, torch.full_like(norms, model.config.mm_norm_target), atol=1e-4, rtol=1e-4)
        model.get_model().mm_projector_norm.gain.fill_(100.0)
        clipped = model.encode_images(images).norm(dim=-1)
    torch.testing.assert_close(clipped, torch.full_like(clipped, model.config.mm_norm_max), atol=1e-4, rtol=1e-4)


def test_multilayer_and_coordinates_widen_projector_input(tiny_llama, tiny_clip, llama_tokenizer, images):
    ml = _build(tiny_llama, tiny_clip, llama_tokenizer, **FLAGS["multilayer"])
    assert ml.config.mm_hidden_size == 3 * 32 and ml.get_model().mm_projector[0].weight.shape[1] == 96
    both = _build(tiny_llama, tiny_clip, llama_tokenizer, **FLAGS["multilayer"], **FLAGS["coordinates"])
    assert both.config.mm_hidden_size == 3 * 32 + 2
    coords = _build(tiny_llama, tiny_clip, llama_tokenizer, **FLAGS["coordinates"], **FLAGS["compression"])
    assert coords.config.mm_hidden_size == 34
    with torch.no_grad():
        hs = ml.get_vision_tower().vision_tower(images, output_hidden_states=True).hidden_states
        expected = torch.cat([hs[1], hs[2], hs[3]], dim=-1)[:, 1:]
        torch.testing.assert_close(ml.encode_image_blocks_with_aux(images)[2], expected)  # projector input x
        assert coords.encode_images(images).shape == (2, 4, 64)
    with pytest.raises(ValueError, match=r"^--mm_multilayer_select has layer\(s\) \[30\] but the vision tower has 4 "
                                         r"layers: valid indices are 0\.\.4 \(0 = embeddings\) or -5\.\.-1\.$"):
        multilayer.validate_layers(multilayer.parse_layers("2,30"), 4)


@pytest.mark.parametrize("mode", ["avg", "max", "bilinear"])
def test_compression_gives_n_tokens(tiny_llama, tiny_clip, llama_tokenizer, images, mode):
    model = _build(tiny_llama, tiny_clip, llama_tokenizer, compression_after_projection=True,
                   final_spatial_size=4, mm_compression_mode=mode)
    with torch.no_grad():
        full = model.get_model().mm_projector(model.get_vision_tower()(images))
        tokens = model.encode_images(images)
    assert tokens.shape == (2, 4, 64)
    if mode == "avg":  # top-left output token = mean of the top-left 2x2 patch window of the 4x4 grid
        torch.testing.assert_close(tokens[:, 0], full[:, [0, 1, 4, 5]].mean(dim=1))
    res = model.prepare_multimodal_splice(IDS, MASK, IDS, images)
    assert res.image_mask.sum(dim=1).tolist() == [4, 4]


def test_compression_rejects_bad_sizes():
    with pytest.raises(ValueError) as err:
        compression.validate(10, 24)
    assert str(err.value) == (
        "--final_spatial_size 10 is not valid: it is the number of image tokens after compression (a perfect "
        "square whose side divides the 24x24 patch grid). Valid values for this vision tower: "
        "1, 4, 9, 16, 36, 64, 144, 576.")
    assert compression.validate(144, 24) == 12


def test_rope2d_angles_follow_row_and_column(tiny_llama, tiny_clip, llama_tokenizer, images):
    model = _build(tiny_llama, tiny_clip, llama_tokenizer, **FLAGS["rope2d"])
    rot = model.get_model().rotary_emb
    assert isinstance(rot, AxialRotaryEmbedding)
    res = model.prepare_multimodal_splice(IDS[:1], MASK[:1], None, images[:1])
    pos = res.position_ids[:, 0]
    # [BOS]=0, 16 image tokens at (1 + r, 1 + c) on the 4x4 grid, text continues at 1 + 4 = 5
    rows = torch.tensor([0] + [1 + i // 4 for i in range(16)] + [5, 6, 7, 8])
    cols = torch.tensor([0] + [1 + i % 4 for i in range(16)] + [5, 6, 7, 8])
    assert torch.equal(pos[0], rows) and torch.equal(pos[1], cols)
    x = torch.zeros(1, 1, 1)
    cos2d, _ = rot(x, res.position_ids)
    cos_row, _ = rot.base(x, res.position_ids[0])
    cos_col, _ = rot.base(x, res.position_ids[1])
    half = cos2d.shape[-1] // 2
    even = torch.arange(half) % 2 == 0
    for part in (slice(0, half), slice(half, 2 * half)):
        torch.testing.assert_close(cos2d[..., part][..., even], cos_row[..., part][..., even])
        torch.testing.assert_close(cos2d[..., part][..., ~even], cos_col[..., part][..., ~even])
    # image token (r=2, c=1) vs (r=1, c=2): same 1D index range, different angles
    assert not torch.allclose(cos2d[0, 1 + 9], cos2d[0, 1 + 6])
    # text-only: 2D positions reduce to plain 1D RoPE exactly
    text_pos = torch.arange(6).unsqueeze(0)
    torch.testing.assert_close(rot(x, torch.stack([text_pos, text_pos]))[0], rot.base(x, text_pos)[0])


def test_interleave_inserts_coordinates_every_k(tiny_llama, tiny_clip, llama_tokenizer, images):
    model = _build(tiny_llama, tiny_clip, llama_tokenizer, **FLAGS["interleave"])
    labels = IDS.masked_fill(IDS == IMG, IGNORE_INDEX)
    res = model.prepare_multimodal_splice(IDS[:1], MASK[:1], labels[:1], images[:1])
    blocks, layout = model.encode_image_blocks(images[:1])
    coord = model.config.mm_interleave_coord_ids
    assert coord[5] == llama_tokenizer("1,1", add_special_tokens=False).input_ids
    expected_len = 16 + sum(len(coord[j]) for j in (3, 7, 11, 15))
    assert blocks.shape[1] == expected_len and int(layout.is_feature.sum()) == 16
    # after feature tokens 4, 8, 12, 16 come the ids of "0,3", "1,3", "2,3", "3,3"
    feat_positions = layout.is_feature.nonzero().squeeze(1).tolist()
    first_insert = feat_positions[3] + 1
    emb = model.get_model().embed_tokens(torch.tensor(coord[3]))
    torch.testing.assert_close(blocks[0, first_insert:first_insert + len(coord[3])], emb)
    block = slice(1, 1 + expected_len)
    assert (res.labels[0, block] == IGNORE_INDEX).all()
    assert res.image_mask[0, block].sum() == 16


PAIRS = list(itertools.combinations(FLAGS, 2))


@pytest.mark.parametrize("pair", PAIRS, ids=["+".join(p) for p in PAIRS])
def test_flag_pairs_train_generate_and_reload(pair, tiny_llama, tiny_clip, llama_tokenizer, images, tmp_path):
    flags = {**FLAGS[pair[0]], **FLAGS[pair[1]]}
    model = _build(tiny_llama, tiny_clip, llama_tokenizer, **flags)
    model.train()
    params = [p for m in model.get_model().projector_modules() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-2)
    labels = IDS.masked_fill((IDS == IMG) | (MASK == 0), IGNORE_INDEX)
    losses = []
    for _ in range(4):
        loss = model(input_ids=IDS, attention_mask=MASK, labels=labels, images=images).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    model.eval()
    gen = model.generate(IDS, attention_mask=MASK, images=images, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert gen.shape == (2, 3)
    model.save_pretrained(tmp_path)
    llama_tokenizer.save_pretrained(tmp_path)
    _, loaded, _, _ = load_pretrained_model(str(tmp_path), None, device="cpu")
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS, attention_mask=MASK, images=images).logits,
                                   model(input_ids=IDS, attention_mask=MASK, images=images).logits)
