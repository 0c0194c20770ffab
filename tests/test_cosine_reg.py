"""Cosine regularizers: exact vanilla at lambda 0, constructed values, gradients, stop-grad, inference independence."""

from __future__ import annotations

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.addons.cosine_reg import orthonormal_embedding
from llava.testing.tiny_llava import build_tiny_llava

IDS = torch.tensor([[1, IMAGE_TOKEN_INDEX, 20, 21, 22], [1, 30, 31, 32, 2]])
MASK = torch.ones_like(IDS)
LABELS = IDS.masked_fill(IDS == IMAGE_TOKEN_INDEX, IGNORE_INDEX)


@pytest.fixture()
def images():
    torch.manual_seed(0)
    return torch.randn(1, 3, 32, 32)


def _loss_and_grads(model, images):
    model.zero_grad()
    out = model(input_ids=IDS, attention_mask=MASK, labels=LABELS, images=images)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("flags", [dict(mm_cosine_loss="none"),
                                   dict(mm_cosine_loss="constrain", mm_cosine_lambda=0.0),
                                   dict(mm_cosine_loss="self_distill", mm_cosine_lambda=0.0)])
def test_lambda_zero_or_none_is_exactly_vanilla(tiny_llama, tiny_clip, images, flags):
    vanilla = build_tiny_llava(tiny_llama, tiny_clip, seed=3).train()
    other = build_tiny_llava(tiny_llama, tiny_clip, seed=3, **flags).train()
    out_v, g_v = _loss_and_grads(vanilla, images)
    out_o, g_o = _loss_and_grads(other, images)
    assert torch.equal(out_v.loss, out_o.loss)
    shared = {n for n in g_v}
    assert all(torch.equal(g_v[n], g_o[n]) for n in shared)


def test_constrain_identity_like_projector_gives_zero(tiny_llama, tiny_clip, images):
    model = build_tiny_llava(tiny_llama, tiny_clip, projector_type="linear", mm_cosine_loss="constrain")
    reg = model.get_model().mm_projector_cos
    embed = reg.embed
    assert embed.shape == (64, 32)
    torch.testing.assert_close(embed.T @ embed, torch.eye(32), atol=1e-5, rtol=0)  # isometric
    assert torch.equal(embed, orthonormal_embedding(32, 64))  # seeded: reproducible
    assert "model.mm_projector_cos.embed" in model.state_dict()
    x = torch.randn(2, 16, 32)
    proj = model.get_model().mm_projector
    with torch.no_grad():
        proj.weight.copy_(embed)
        proj.bias.zero_()
        assert float(reg(x, proj(x))) == pytest.approx(0.0, abs=1e-5)
        proj.weight.normal_()
        assert 0.0 < float(reg(x, proj(x))) < 2.0


def test_gram_mode_zero_for_isometry_and_in_range_otherwise(tiny_llama, tiny_clip):
    model = build_tiny_llava(tiny_llama, tiny_clip, projector_type="linear", mm_cosine_loss="constrain",
                             mm_cosine_constrain_mode="gram")
    reg = model.get_model().mm_projector_cos
    assert not hasattr(reg, "embed")
    x = torch.randn(2, 16, 32)
    q = orthonormal_embedding(32, 64)
    assert float(reg(x, x @ q.T * 3.0)) == pytest.approx(0.0, abs=1e-5)
    assert 0.0 < float(reg(x, torch.randn(2, 16, 64))) < 2.0


def test_self_distill_identity_p2_gives_zero_and_grads_flow(tiny_llama, tiny_clip, images):
    model = build_tiny_llava(tiny_llama, tiny_clip, projector_type="linear", mm_cosine_loss="self_distill",
                             mm_cosine_lambda=1.0).train()
    p2 = model.get_model().mm_projector_cos.p2
    with torch.no_grad():
        p2.weight.copy_(torch.eye(64))
        p2.bias.zero_()
    out = model(input_ids=IDS, attention_mask=MASK, labels=LABELS, images=images)
    assert float(out["aux_losses"]["cos"]) == pytest.approx(0.0, abs=1e-5)
    torch.nn.init.normal_(p2.weight)
    model.zero_grad()
    res = model.prepare_multimodal_splice(IDS, MASK, LABELS, images)
    l_cos = model.auxiliary_losses(res)["cos"]
    assert 0.0 < float(l_cos) < 2.0
    l_cos.backward()
    assert model.get_model().mm_projector.weight.grad.abs().sum() > 0
    assert p2.weight.grad.abs().sum() > 0


def test_stop_grad_blocks_the_target_branch(tiny_llama, tiny_clip, images):
    def grads(stop_grad):
        m = build_tiny_llava(tiny_llama, tiny_clip, projector_type="linear", seed=1, mm_cosine_loss="self_distill",
                             mm_cosine_stop_grad=stop_grad)
        res = m.prepare_multimodal_splice(IDS, MASK, LABELS, images)
        m.auxiliary_losses(res)["cos"].backward()
        # reference: the same loss with the target replaced by a constant copy
        ref = build_tiny_llava(tiny_llama, tiny_clip, projector_type="linear", seed=1, mm_cosine_loss="self_distill")
        rres = ref.prepare_multimodal_splice(IDS, MASK, LABELS, images)
        p1 = rres.projected
        target = p1.detach()
        loss = (1 - torch.nn.functional.cosine_similarity(target, ref.get_model().mm_projector_cos.p2(p1), dim=-1))
        loss.mean().backward()
        return m.get_model().mm_projector.weight.grad, ref.get_model().mm_projector.weight.grad

    with_sg, detached_ref = grads(True)
    without_sg, _ = grads(False)
    torch.testing.assert_close(with_sg, detached_ref)  # only the predictor path reaches P1
    assert not torch.allclose(with_sg, without_sg)


@pytest.mark.parametrize("loss", ["constrain", "self_distill"])
def test_reload_and_inference_ignores_regularizer(tiny_llama, tiny_clip, llama_tokenizer, images, tmp_path, loss):
    from llava.model.builder import load_pretrained_model
    from llava.model.checkpoints import save_mm_projector

    model = build_tiny_llava(tiny_llama, tiny_clip, mm_cosine_loss=loss)
    save_mm_projector(model, tmp_path / "proj")
    state = torch.load(tmp_path / "proj" / "mm_projector.bin", weights_only=True)
    assert any(k.startswith("model.mm_projector_cos.") for k in state)
    _, loaded, _, _ = load_pretrained_model(str(tmp_path / "proj"), tiny_llama, device="cpu")
    for k, v in loaded.get_model().mm_projector_cos.state_dict().items():
        assert torch.equal(v, model.get_model().mm_projector_cos.state_dict()[k])
    with torch.no_grad():
        before = loaded.generate(IDS[:1], images=images, max_new_tokens=4, do_sample=False)
        logits = loaded(input_ids=IDS[:1], images=images).logits
        for t in loaded.get_model().mm_projector_cos.state_dict().values():
            t.normal_()
        assert torch.equal(before, loaded.generate(IDS[:1], images=images, max_new_tokens=4, do_sample=False))
        assert torch.equal(logits, loaded(input_ids=IDS[:1], images=images).logits)
