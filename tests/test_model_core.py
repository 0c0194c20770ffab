"""Core LLaVA model: splice correctness against a per-sample reference, keys/config, errors, generation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.testing.tiny_llava import build_tiny_llava

IMG = IMAGE_TOKEN_INDEX


@pytest.fixture(scope="module")
def model(tiny_llama, tiny_clip):
    return build_tiny_llava(tiny_llama, tiny_clip)


def _samples():
    """(token ids, labels, n_images) per sample: two images, one image, text-only."""
    return [
        ([1, 20, IMG, 30, 31, IMG, 40, 41, 2], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 30, 31,
                                                IGNORE_INDEX, 40, 41, 2]),
        ([1, IMG, 50, 51, 52, 2], [IGNORE_INDEX, IGNORE_INDEX, 50, 51, 52, 2]),
        ([1, 60, 61, 62, 2], [IGNORE_INDEX, IGNORE_INDEX, 61, 62, 2]),
    ]


def _batch(side: str, pad_id: int = 0):
    samples = _samples()
    width = max(len(s[0]) for s in samples)
    ids = torch.full((len(samples), width), pad_id)
    labels = torch.full((len(samples), width), IGNORE_INDEX)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, (toks, labs) in enumerate(samples):
        sl = slice(width - len(toks), width) if side == "left" else slice(0, len(toks))
        ids[i, sl], labels[i, sl], mask[i, sl] = torch.tensor(toks), torch.tensor(labs), 1
    return ids, mask, labels


def _reference(model, images):
    """Per-sample loop: build each sequence by hand, run the plain LM, compute summed token losses."""
    feats = model.encode_images(images)
    img_i, total_loss, total_count, per_sample_logits = 0, 0.0, 0, []
    for toks, labs in _samples():
        parts, lab_parts = [], []
        for t, lab in zip(toks, labs):
            if t == IMG:
                parts.append(feats[img_i])
                lab_parts += [IGNORE_INDEX] * feats.shape[1]
                img_i += 1
            else:
                parts.append(model.get_model().embed_tokens(torch.tensor([t])))
                lab_parts.append(lab)
        emb = torch.cat(parts).unsqueeze(0)
        logits = model(inputs_embeds=emb).logits[0]
        lab_t = torch.tensor(lab_parts)
        shift_logits, shift_labels = logits[:-1], lab_t[1:]
        total_loss = total_loss + F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX,
                                                  reduction="sum")
        total_count += int((shift_labels != IGNORE_INDEX).sum())
        per_sample_logits.append((logits, lab_t))
    return total_loss / total_count, per_sample_logits


@pytest.mark.parametrize("side", ["right", "left"])
def test_forward_matches_per_sample_reference(model, side):
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    ids, mask, labels = _batch(side)
    model.config.tokenizer_padding_side = side
    try:
        out = model(input_ids=ids, attention_mask=mask, labels=labels, images=images)
        res = model.prepare_multimodal_splice(ids, mask, labels, images)
    finally:
        model.config.tokenizer_padding_side = "right"
    ref_loss, ref = _reference(model, images)
    assert torch.allclose(out.loss, ref_loss, atol=1e-5), (out.loss, ref_loss)
    for i, (ref_logits, ref_labels) in enumerate(ref):
        valid = res.attention_mask[i].bool()
        assert int(valid.sum()) == ref_logits.shape[0]
        torch.testing.assert_close(out.logits[i][valid], ref_logits, atol=1e-5, rtol=1e-5)
        assert torch.equal(res.labels[i][valid], ref_labels)
        # every image position is unsupervised and marked in image_mask
        assert (res.labels[i][res.image_mask[i]] == IGNORE_INDEX).all()
    assert int(res.image_mask.sum()) == 3 * 16


def test_backward_reaches_projector_not_tower(model):
    model.train()
    try:
        model.zero_grad()
        ids, mask, labels = _batch("right")
        out = model(input_ids=ids, attention_mask=mask, labels=labels, images=torch.randn(3, 3, 32, 32))
        out.loss.backward()
        proj = model.get_model().mm_projector
        assert proj[0].weight.grad is not None and proj[0].weight.grad.abs().sum() > 0
        assert all(p.grad is None for p in model.get_vision_tower().parameters())
        # text-only batch in training still puts the projector in the graph (gradient exactly zero)
        model.zero_grad()
        ids2, mask2, labels2 = ids[2:], mask[2:], labels[2:]
        out2 = model(input_ids=ids2, attention_mask=mask2, labels=labels2)
        out2.loss.backward()
        assert proj[0].weight.grad is not None and proj[0].weight.grad.abs().sum() == 0
    finally:
        model.zero_grad()
        model.eval()


def test_truncation_to_tokenizer_model_max_length(model):
    ids, mask, labels = _batch("right")
    model.config.tokenizer_model_max_length = 12
    try:
        res = model.prepare_multimodal_splice(ids, mask, labels, torch.randn(3, 3, 32, 32))
    finally:
        model.config.tokenizer_model_max_length = 2048
    assert res.inputs_embeds.shape[1] == 12
    assert res.attention_mask.sum(1).tolist() == [12, 12, 5]


def test_projector_keys_and_config_fields(model):
    keys = [k for k in model.state_dict() if "mm_projector" in k]
    assert keys == ["model.mm_projector.0.weight", "model.mm_projector.0.bias",
                    "model.mm_projector.2.weight", "model.mm_projector.2.bias"]
    cfg = model.config.to_dict()
    for field in ["mm_vision_tower", "use_mm_proj", "mm_projector_type", "mm_hidden_size",
                  "mm_vision_select_layer", "mm_vision_select_feature", "mm_patch_merge_type",
                  "image_aspect_ratio", "tokenizer_padding_side", "tokenizer_model_max_length",
                  "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "mm_use_im_start_end", "mm_projector_lr",
                  "mm_use_im_patch_token"]:
        assert field in cfg, field
    assert cfg["model_type"] == "llava_llama"
    assert cfg["mm_hidden_size"] == 32 and cfg["mm_projector_type"] == "mlp2x_gelu"


def test_unknown_projector_type_lists_valid_ones():
    from llava.model.multimodal_projector.builder import make_projector

    with pytest.raises(ValueError, match=r"Unknown mm_projector_type 'mlp2x_relu'; valid types: linear, "
                                         r"identity, mlp\{N\}x_gelu \(e\.g\. mlp2x_gelu\)"):
        make_projector("mlp2x_relu", 4, 8)
    with pytest.raises(ValueError, match="Unknown mm_projector_type 'xmlp2x_gelu'"):
        make_projector("xmlp2x_gelu", 4, 8)
    assert len(make_projector("mlp3x_gelu", 4, 8)) == 5


def test_more_placeholders_than_images_fails_clearly(model):
    ids, mask, labels = _batch("right")
    with pytest.raises(ValueError, match=r"The batch has 3 <image> placeholders \(per sample: \[2, 1, 0\]\) "
                                         r"but 2 images were given"):
        model(input_ids=ids, attention_mask=mask, labels=labels, images=torch.randn(2, 3, 32, 32))


def test_wrong_image_size_fails_clearly(model):
    ids, mask, labels = _batch("right")
    with pytest.raises(ValueError, match=r"images have shape \(3, 3, 48, 48\) but the vision tower expects "
                                         r"\(N, 3, 32, 32\)"):
        model(input_ids=ids, attention_mask=mask, labels=labels, images=torch.randn(3, 3, 48, 48))


def test_greedy_generation_same_with_and_without_cache(model):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[1, IMG, 20, 21, 22], [0, 0, 1, IMG, 30]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    kw = dict(images=images, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    with_cache = model.generate(ids, use_cache=True, **kw)
    without = model.generate(ids, use_cache=False, **kw)
    assert with_cache.shape == (2, 8)
    assert torch.equal(with_cache, without)
    # a left-padded batch row equals the same prompt generated alone
    alone = model.generate(ids[1:, 2:], images=images[1:], max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(alone[0], with_cache[1])


@pytest.mark.parametrize("family", ["qwen2"])
def test_other_family_forward_and_generate(tiny_qwen2, tiny_clip, family):
    m = build_tiny_llava(tiny_qwen2, tiny_clip, projector_type="linear")
    assert type(m).__name__ == "LlavaQwen2ForCausalLM" and m.config.model_type == "llava_qwen2"
    ids = torch.tensor([[1, IMG, 20, 21, 22]])
    out = m(input_ids=ids, labels=ids.masked_fill(ids == IMG, IGNORE_INDEX), images=torch.randn(1, 3, 32, 32))
    assert out.logits.shape[1] == 4 + 16 and torch.isfinite(out.loss)
    gen = m.generate(ids, images=torch.randn(1, 3, 32, 32), max_new_tokens=3, do_sample=False)
    assert gen.shape == (1, 3)


def test_mistral_family_registered():
    from transformers import AutoConfig, AutoModelForCausalLM

    from llava.model import LlavaMistralConfig, LlavaMistralForCausalLM, llava_class_for

    cfg = LlavaMistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2)
    assert isinstance(AutoConfig.for_model("llava_mistral"), LlavaMistralConfig)
    m = AutoModelForCausalLM.from_config(cfg)
    assert isinstance(m, LlavaMistralForCausalLM)
    assert llava_class_for("mistral") is LlavaMistralForCausalLM
    with pytest.raises(ValueError, match="LLM model_type 'gpt2' has no LLaVA class; supported: "):
        llava_class_for("gpt2")
