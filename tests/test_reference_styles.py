"""The paper's exact computations: reference-style normalization and the seed's cosine constrainment."""

from __future__ import annotations

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.testing.tiny_llava import build_tiny_llava
from llava.train.arguments import ModelArguments, check_addons

IDS = torch.tensor([[1, IMAGE_TOKEN_INDEX, 20, 21, 22]])
LABELS = IDS.masked_fill(IDS == IMAGE_TOKEN_INDEX, IGNORE_INDEX)


@pytest.fixture()
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def reference_normalized(p1: torch.Tensor, weight: torch.Tensor, target=0.83, max_norm=1.22) -> torch.Tensor:
    """Hand re-implementation of the reference's NormalizedProjector after the projector (fp32 input)."""
    rms = torch.sqrt(p1.pow(2).mean(-1, keepdim=True) + 1e-6)
    r = weight * (p1 / rms)
    n = r.norm(dim=-1, keepdim=True)
    return target * r * torch.clamp(max_norm / n, max=1.0)


def _reference_model(tiny_llama, tiny_clip, **flags):
    return build_tiny_llava(tiny_llama, tiny_clip, normalize_projector=True, mm_norm_style="reference", **flags)


def test_reference_norm_matches_the_formula_before_and_after_training(tiny_llama, tiny_clip, images):
    model = _reference_model(tiny_llama, tiny_clip)
    base = model.get_model()
    weight = base.mm_projector_norm.weight
    assert weight.shape == (64,) and torch.equal(weight.detach(), torch.ones(64))
    assert "model.mm_projector_norm.weight" in model.state_dict()
    assert (model.config.mm_norm_style, model.config.mm_norm_target, model.config.mm_norm_max) == \
        ("reference", 0.83, 1.22)
    with torch.no_grad():
        tokens, _, _, p1 = model.encode_image_blocks_with_aux(images)
        torch.testing.assert_close(tokens, reference_normalized(p1, weight), atol=1e-6, rtol=1e-6)
        norms = tokens.norm(dim=-1)
        torch.testing.assert_close(norms, torch.full_like(norms, 0.83 * 1.22), atol=1e-5, rtol=0)  # 1.0126

    model.train()
    opt = torch.optim.SGD([weight, *base.mm_projector.parameters()], lr=0.5)
    for _ in range(3):
        model(input_ids=IDS, labels=LABELS, images=images[:1]).loss.backward()
        opt.step()
        opt.zero_grad()
    assert not torch.equal(weight.detach(), torch.ones(64))  # the per-channel weight trained
    with torch.no_grad():
        tokens, _, _, p1 = model.encode_image_blocks_with_aux(images)
        torch.testing.assert_close(tokens, reference_normalized(p1, weight), atol=1e-6, rtol=1e-6)


def test_reference_constants_can_be_overridden_or_measured(tiny_llama, tiny_clip, images):
    model = _reference_model(tiny_llama, tiny_clip, mm_norm_target=0.5, mm_norm_max=2.0)
    with torch.no_grad():
        norms = model.encode_images(images).norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, 1.0), atol=1e-5, rtol=0)
    measured = _reference_model(tiny_llama, tiny_clip, mm_norm_measure=True)
    rows = measured.get_model().embed_tokens.weight.detach().norm(dim=-1)
    assert measured.config.mm_norm_target == pytest.approx(float(rows.mean()), rel=1e-6)
    assert measured.config.mm_norm_max == pytest.approx(float(rows.max()), rel=1e-6)


def test_scalar_style_stays_the_default(tiny_llama, tiny_clip):
    model = build_tiny_llava(tiny_llama, tiny_clip, normalize_projector=True)
    assert "mm_norm_style" not in model.config.to_diff_dict()  # absent = scalar (configs before the styles)
    assert "model.mm_projector_norm.gain" in model.state_dict()


@pytest.mark.parametrize(("flags", "message"), [
    (dict(mm_norm_style="rms"), "--mm_norm_style 'rms' is not supported; choose one of scalar, reference"),
    (dict(mm_norm_measure=True), "--mm_norm_measure is for --mm_norm_style reference (the scalar style always "
                                 "measures unless --mm_norm_target/--mm_norm_max are given); drop it."),
    (dict(mm_norm_target=-1.0), "--mm_norm_target must be a finite number > 0, got -1.0"),
    (dict(mm_norm_target=2.0, mm_norm_max=1.0), "--mm_norm_target 2.0 is above --mm_norm_max 1.0: the scalar style "
                                                "needs target <= max."),
])
def test_bad_norm_flags(tiny_clip, flags, message):
    with pytest.raises(ValueError) as err:
        check_addons(ModelArguments(model_name_or_path="none", vision_tower=tiny_clip, normalize_projector=True,
                                    **flags))
    assert str(err.value) == message


def test_norm_flags_need_the_switch(tiny_clip):
    with pytest.raises(ValueError, match=r"^--mm_norm_style has no effect without --normalize_projector True"):
        check_addons(ModelArguments(model_name_or_path="none", vision_tower=tiny_clip, mm_norm_style="reference"))


# ---- cosine constrainment: the seed's formula when the widths are equal ----

EQUAL = dict(use_multilayer_features=True, mm_multilayer_select="3,4", projector_type="linear",
             mm_cosine_loss="constrain", mm_cosine_lambda=1.0)  # 2 x 32 = 64 = the tiny LLM's width


def test_equal_widths_use_the_seed_formula(tiny_llama, tiny_clip, images):
    model = build_tiny_llava(tiny_llama, tiny_clip, **EQUAL)
    assert model.config.mm_hidden_size == model.config.hidden_size == 64
    assert model.config.mm_cosine_embed == "identity"
    reg = model.get_model().mm_projector_cos
    assert not hasattr(reg, "embed") and not any("mm_projector_cos" in k for k in model.state_dict())
    res = model.prepare_multimodal_splice(IDS, None, LABELS, images[:1])
    x, p1 = res.vision_features, res.projected
    hand = (1 - (x * p1).sum(-1) / (x.norm(dim=-1) * p1.norm(dim=-1))).mean()
    torch.testing.assert_close(model.auxiliary_losses(res)["cos"], hand, atol=1e-6, rtol=1e-6)
    proj = model.get_model().mm_projector
    with torch.no_grad():
        proj.weight.copy_(torch.eye(64))
        proj.bias.zero_()
        res = model.prepare_multimodal_splice(IDS, None, LABELS, images[:1])
        assert float(model.auxiliary_losses(res)["cos"]) == pytest.approx(0.0, abs=1e-6)  # identity -> 0


def test_unequal_widths_keep_the_orthonormal_embedding(tiny_llama, tiny_clip):
    model = build_tiny_llava(tiny_llama, tiny_clip, mm_cosine_loss="constrain")
    assert "mm_cosine_embed" not in model.config.to_diff_dict()
    assert model.get_model().mm_projector_cos.embed.shape == (64, 32)
