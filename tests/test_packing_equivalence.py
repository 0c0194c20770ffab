"""Packed batches compute what the same samples compute unpacked: loss, every gradient, each sample's logits.

For vanilla and each add-on, with ``sdpa`` and ``eager``: the padded batch (upstream's path) and the
packed rows (``packed_seq_ids``) give the same token loss, the same auxiliary losses and the same
gradient on every parameter (fp32, <= 1e-5), and a sample's logits inside a pack equal its logits alone.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model import packing
from llava.model.packing import PACKED_SDPA
from llava.testing.tiny_llava import build_tiny_llava

IMG = IMAGE_TOKEN_INDEX
ADDONS = {
    "vanilla": {},
    "rope2d": dict(twoD_vision_embedding=True),
    "interleave": dict(interleave=True, interleave_sparsity=4),
    "interleave_rope2d": dict(interleave=True, interleave_sparsity=4, twoD_vision_embedding=True),
    "compression": dict(compression_after_projection=True, final_spatial_size=4),
    "coordinates": dict(add_spatial_coordinates=True),
    "normalize": dict(normalize_projector=True),
    "multilayer": dict(use_multilayer_features=True, mm_multilayer_select="1,2,3"),
    "cosine_constrain_embed": dict(mm_cosine_loss="constrain", mm_cosine_lambda=0.5),
    "cosine_constrain_gram": dict(mm_cosine_loss="constrain", mm_cosine_constrain_mode="gram", mm_cosine_lambda=0.5),
    "cosine_self_distill": dict(mm_cosine_loss="self_distill", mm_cosine_lambda=0.5, mm_cosine_stop_grad=True),
    "registers": dict(add_registers=True, num_registers=3),
    "registers_rope2d": dict(add_registers=True, num_registers=2, twoD_vision_embedding=True),
}

# (input_ids, labels, has_image): the third sample's first label is supervised on purpose (a packed row
# must not let the previous sample predict it).
SAMPLES = [
    ([1, IMG, 20, 21, 22, 23], [IGNORE_INDEX, IGNORE_INDEX, 20, 21, 22, 23], True),
    ([1, 5, 6, IMG, 7, 8, 9], [IGNORE_INDEX] * 4 + [7, 8, 9], True),
    ([30, 31, 32, 33, 34], [30, 31, 32, 33, 34], False),
    ([1, 40, IMG, 41, 42], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 41, 42], True),
]
ROWS = [[0, 2], [1], [3]]  # packs: rows of sample indices (padding at the end of the shorter rows)


def padded_batch(order: list[int], samples=SAMPLES) -> dict[str, torch.Tensor]:
    width = max(len(samples[i][0]) for i in order)
    ids = torch.zeros(len(order), width, dtype=torch.long)
    labels = torch.full((len(order), width), IGNORE_INDEX)
    mask = torch.zeros(len(order), width, dtype=torch.bool)
    for r, i in enumerate(order):
        x, y, _ = samples[i]
        ids[r, :len(x)], labels[r, :len(y)], mask[r, :len(x)] = torch.tensor(x), torch.tensor(y), True
    return dict(input_ids=ids, labels=labels, attention_mask=mask)


def packed_batch(rows: list[list[int]], samples=SAMPLES) -> dict[str, torch.Tensor]:
    width = max(sum(len(samples[i][0]) for i in row) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    seg = torch.zeros(len(rows), width, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for k, i in enumerate(row, start=1):
            x, y, _ = samples[i]
            ids[r, at:at + len(x)], labels[r, at:at + len(y)] = torch.tensor(x), torch.tensor(y)
            mask[r, at:at + len(x)], seg[r, at:at + len(x)] = True, k
            at += len(x)
    return dict(input_ids=ids, labels=labels, attention_mask=mask, packed_seq_ids=seg)


def images_for(order: list[int], pixels: torch.Tensor) -> torch.Tensor:
    return torch.stack([pixels[i] for i in order if SAMPLES[i][2]])


def build(tiny_llama, tiny_clip, tokenizer, attn, **flags):
    model = build_tiny_llava(tiny_llama, tiny_clip, **flags)
    model.initialize_vision_tokenizer(SimpleNamespace(), tokenizer)  # interleave records its coordinate ids
    model.set_attn_implementation(attn)
    return model


def loss_and_grads(model, batch, images):
    model.zero_grad(set_to_none=True)
    out = model(**batch, images=images)
    aux = out.get("aux_losses") or {}
    total = out.loss + sum(aux.values())
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), {k: v.detach() for k, v in aux.items()}, grads


@pytest.fixture(scope="module")
def pixels():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(len(SAMPLES), 3, 32, 32, generator=gen)


@pytest.mark.parametrize("rows", [ROWS, [[i for row in ROWS for i in row]]], ids=["rows", "one_row"])
@pytest.mark.parametrize("attn", ["sdpa", "eager", PACKED_SDPA])
@pytest.mark.parametrize("name", list(ADDONS))
def test_packed_equals_unpacked(name, attn, rows, tiny_llama, tiny_clip, llama_tokenizer, pixels):
    model = build(tiny_llama, tiny_clip, llama_tokenizer, attn, **ADDONS[name])
    model.config.tokenizer_model_max_length = 30  # per sample: the one-row pack is longer than that
    order = [i for row in ROWS for i in row]
    loss_u, aux_u, grads_u = loss_and_grads(model, padded_batch(order), images_for(order, pixels))
    loss_p, aux_p, grads_p = loss_and_grads(model, packed_batch(rows), images_for(order, pixels))
    torch.testing.assert_close(loss_p, loss_u, atol=1e-5, rtol=0)
    assert aux_p.keys() == aux_u.keys()
    for k in aux_u:
        torch.testing.assert_close(aux_p[k], aux_u[k], atol=1e-5, rtol=0)
    assert grads_p.keys() == grads_u.keys() and grads_u
    for n in grads_u:
        torch.testing.assert_close(grads_p[n], grads_u[n], atol=1e-5, rtol=1e-5, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("attn", ["sdpa", "eager", PACKED_SDPA])
@pytest.mark.parametrize("name", ["vanilla", "rope2d", "interleave_rope2d", "registers_rope2d", "compression"])
def test_sample_logits_inside_a_pack_equal_its_logits_alone(name, attn, tiny_llama, tiny_clip, llama_tokenizer,
                                                            pixels):
    model = build(tiny_llama, tiny_clip, llama_tokenizer, attn, **ADDONS[name])
    row = [2, 0, 3, 1]
    batch = packed_batch([row])
    images = images_for(row, pixels)
    with torch.no_grad():
        packed = model(**batch, images=images).logits[0]
        res = model.prepare_multimodal_splice(batch["input_ids"], batch["attention_mask"], batch["labels"], images,
                                              segments=batch["packed_seq_ids"])
        for k, i in enumerate(row, start=1):
            alone = padded_batch([i])
            imgs = images_for([i], pixels) if SAMPLES[i][2] else None
            ref = model(**alone, images=imgs).logits[0]
            got = packed[res.segments[0] == k]
            assert got.shape == ref.shape
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_text_only_packed_training_batch_matches_unpacked(tiny_llama, tiny_clip):
    """A micro-batch with no image at all (training: the blank-image path) packs the same way."""
    model = build_tiny_llava(tiny_llama, tiny_clip, mm_cosine_loss="constrain").train()
    samples = [s for s in SAMPLES if not s[2]] + [([1, 50, 51, 52], [IGNORE_INDEX, 50, 51, 52], False)]
    loss_u, _, grads_u = loss_and_grads(model, padded_batch([0, 1], samples), None)
    loss_p, _, grads_p = loss_and_grads(model, packed_batch([[0, 1]], samples), None)
    torch.testing.assert_close(loss_p, loss_u, atol=1e-5, rtol=0)
    assert grads_p.keys() == grads_u.keys()
    for n in grads_u:
        torch.testing.assert_close(grads_p[n], grads_u[n], atol=1e-5, rtol=1e-5)


def test_positions_restart_and_first_labels_are_ignored():
    seg = torch.tensor([[1, 1, 1, 2, 2, 3, 0, 0]])
    assert packing.segment_positions(seg).tolist() == [[0, 1, 2, 0, 1, 0, 0, 0]]
    labels = torch.arange(8).unsqueeze(0)
    assert packing.mask_first_labels(labels, seg).tolist() == [[-100, 1, 2, -100, 4, -100, 6, 7]]
    mask = packing.block_causal_mask(seg)[0, 0]
    assert mask[4].tolist() == [False, False, False, True, True, False, False, False]
    assert mask[7].tolist() == [False] * 6 + [True, True]  # padding attends to itself: no empty row


def test_varlen_boundaries_cover_every_row_and_padding():
    seg = torch.tensor([[1, 1, 2, 0], [1, 1, 1, 1]])
    kw = packing.varlen_kwargs(seg)
    assert kw["cu_seq_lens_q"].tolist() == [0, 2, 3, 4, 8]
    assert kw["max_length_q"] == 4 and kw["cu_seq_lens_q"].dtype == torch.int32


def test_unsupported_attention_is_refused():
    with pytest.raises(ValueError, match="paged_attention"):
        packing.check_packing_implementation("paged_attention")


def test_lora_wrapped_model_packs_the_same(tiny_llama, tiny_clip, llama_tokenizer, pixels):
    """PEFT's wrapper passes ``packed_seq_ids`` through: LoRA gradients agree too."""
    from peft import LoraConfig, get_peft_model

    model = build(tiny_llama, tiny_clip, llama_tokenizer, "sdpa")
    torch.manual_seed(0)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            lora_dropout=0.0, init_lora_weights=False))
    order = [i for row in ROWS for i in row]
    loss_u, _, grads_u = loss_and_grads(lora, padded_batch(order), images_for(order, pixels))
    loss_p, _, grads_p = loss_and_grads(lora, packed_batch(ROWS), images_for(order, pixels))
    torch.testing.assert_close(loss_p, loss_u, atol=1e-5, rtol=0)
    assert any("lora_" in n for n in grads_u)
    for n in grads_u:
        torch.testing.assert_close(grads_p[n], grads_u[n], atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # transformers compiles flex_attention (~20 s on CPU); CPU has no flex backward
def test_flex_attention_block_mask_gives_the_sdpa_logits(tiny_llama, tiny_clip, llama_tokenizer, pixels):
    model = build(tiny_llama, tiny_clip, llama_tokenizer, "sdpa", twoD_vision_embedding=True)
    order = [i for row in ROWS for i in row]
    with torch.no_grad():
        ref = model(**packed_batch(ROWS), images=images_for(order, pixels)).logits
        model.set_attn_implementation("flex_attention")
        got = model(**packed_batch(ROWS), images=images_for(order, pixels)).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_a_packed_sample_over_the_limit_raises_instead_of_being_cut(tiny_llama, tiny_clip, llama_tokenizer, pixels):
    model = build(tiny_llama, tiny_clip, llama_tokenizer, PACKED_SDPA)
    model.config.tokenizer_model_max_length = 20  # sample 0 takes 5 + 16 image positions
    with pytest.raises(ValueError, match="a packed sample takes 21 positions"):
        model(**packed_batch([[0]]), images=images_for([0], pixels))
