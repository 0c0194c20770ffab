"""Embedding alignment (issue 7): generate_embeddings over both checkpoint kinds, memmap store + resume,
bad images, metric definitions, and train_mlp on a synthetic non-linear map. Tiny models, CPU, no network."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from llava.embedding_alignment.generate import GenerateConfig, generate_embeddings
from llava.embedding_alignment.metrics import MetricAccumulator, alignment_variance, check_targets
from llava.embedding_alignment.models import load_embedding_model, preprocess_mismatches, probe_shape
from llava.embedding_alignment.store import EmbeddingPairs, EmbeddingWriter, read_manifest
from llava.embedding_alignment.train import iter_batches, split_by_image

T = 16  # tiny CLIP: 32 px, patch 8 -> 4x4 patch tokens


def _save_project_llava(llm_path, clip_path, out, seed=0):
    from transformers import AutoTokenizer

    from llava.testing.tiny_llava import build_tiny_llava

    model = build_tiny_llava(llm_path, clip_path, seed=seed)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(llm_path, use_fast=False).save_pretrained(out)
    return model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tiny_llama, tiny_clip):
    """Project checkpoints of width 64 (X) and 96 (y) sharing one tower, plus a llava-hf one that copies
    the tower and the width-64 projector (so its embeddings must equal the X model's)."""
    from transformers import CLIPModel, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaImageProcessor

    from llava.testing.tiny_models import build_llm

    root = tmp_path_factory.mktemp("ea_ckpts")
    wide_llm = build_llm(root / "llama96", hidden=96, seed=1)
    small = _save_project_llava(tiny_llama, tiny_clip, root / "small", seed=0)
    _save_project_llava(wide_llm, tiny_clip, root / "wide", seed=1)
    clip = CLIPModel.from_pretrained(tiny_clip)
    cfg = LlavaConfig(vision_config=clip.config.vision_config, image_token_index=600,
                      text_config=LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                              num_attention_heads=4, num_key_value_heads=2, vocab_size=640))
    native = LlavaForConditionalGeneration(cfg).eval()
    native.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    proj, src = native.model.multi_modal_projector, small.get_model().mm_projector
    proj.linear_1.load_state_dict(src[0].state_dict())
    proj.linear_2.load_state_dict(src[2].state_dict())
    # the folder name claims a project LoRA checkpoint: the loader must go by config.model_type
    hf_dir = root / "llava_llama-7b-lora"
    native.save_pretrained(hf_dir)
    LlavaImageProcessor(do_pad=True, size={"shortest_edge": 32},
                        crop_size={"height": 32, "width": 32}).save_pretrained(hf_dir)
    return {"small": str(root / "small"), "wide": str(root / "wide"), "hf": str(hf_dir), "llm96": wide_llm,
            "clip": tiny_clip}


@pytest.fixture(scope="module")
def models(ckpts):
    return (load_embedding_model(ckpts["small"], device="cpu", flag="--model_7b"),
            load_embedding_model(ckpts["wide"], device="cpu", flag="--model_13b"))


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory):
    """Two categories of odd-sized PNGs plus a truncated PNG and a text file named .jpg."""
    root = tmp_path_factory.mktemp("ea_images")
    rng = np.random.default_rng(0)
    for cat, colour in (("animals", (200, 40, 40)), ("vehicles", (40, 40, 200))):
        (root / cat).mkdir()
        for i in range(5):
            arr = (rng.random((20 + 3 * i, 28, 3)) * 80 + np.array(colour) * 0.6).astype(np.uint8)
            Image.fromarray(arr).save(root / cat / f"{i}.png")
    good = (root / "vehicles" / "0.png").read_bytes()
    (root / "vehicles" / "broken.png").write_bytes(good[: len(good) // 2])
    (root / "animals" / "notes.jpg").write_text("not an image")
    (root / "animals" / "readme.txt").write_text("ignored: not an image extension")
    return root


def _cfg(ckpts, images_dir, out, **kw):
    base = dict(model_7b=ckpts["small"], model_13b=ckpts["wide"], images_dir=str(images_dir), output_dir=str(out),
                batch_size=3, storage_dtype="float32", device="cpu", num_workers=1, progress=False)
    return GenerateConfig(**{**base, **kw})


def test_generate_shapes_manifest_and_bad_images(ckpts, models, images_dir, tmp_path):
    manifest = generate_embeddings(_cfg(ckpts, images_dir, tmp_path / "emb"), models=models)
    X, y = np.load(tmp_path / "emb" / "X.npy"), np.load(tmp_path / "emb" / "y.npy")
    assert X.shape == (10, T, 64) and y.shape == (10, T, 96) and X.dtype == y.dtype == np.float32
    assert manifest == read_manifest(tmp_path / "emb") and manifest["status"] == "complete"
    assert manifest["num_rows"] == 10 and manifest["categories"] == {"animals": 5, "vehicles": 5}
    assert [r["path"] for r in manifest["images"]][:2] == ["animals/0.png", "animals/1.png"]
    skipped = {s["path"]: s["error"] for s in manifest["skipped"]}
    assert set(skipped) == {"animals/notes.jpg", "vehicles/broken.png"}
    assert "UnidentifiedImageError" in skipped["animals/notes.jpg"] and "truncated" in skipped["vehicles/broken.png"]
    assert manifest["models"]["X"]["kind"] == "llava_project" and manifest["models"]["y"]["hidden_size"] == 96
    assert manifest["pooling"] == "none" and manifest["storage_dtype"] == "float32"
    # the stored rows are exactly encode_images(process_images(load_image(path))) of each model
    from llava.mm_utils import load_image, process_images

    for which, (m, arr) in enumerate(zip(models, (X, y))):
        pix = process_images([load_image(images_dir / "vehicles" / "3.png")], m.image_processor, m.model.config)
        with torch.no_grad():
            ref = m.model.encode_images(pix).numpy()
        row = [r["path"] for r in manifest["images"]].index("vehicles/3.png")
        np.testing.assert_allclose(arr[row], ref[0], rtol=1e-5, atol=1e-6, err_msg=f"model {which}")


def test_pooling_mean_vs_none(ckpts, models, images_dir, tmp_path):
    generate_embeddings(_cfg(ckpts, images_dir, tmp_path / "none"), models=models)
    manifest = generate_embeddings(_cfg(ckpts, images_dir, tmp_path / "mean", pooling="mean"), models=models)
    Xn, Xm = np.load(tmp_path / "none" / "X.npy"), np.load(tmp_path / "mean" / "X.npy")
    ym = np.load(tmp_path / "mean" / "y.npy")
    assert Xm.shape == (10, 64) and ym.shape == (10, 96) and manifest["pooling"] == "mean"
    np.testing.assert_allclose(Xm, Xn.mean(axis=1), rtol=1e-5, atol=1e-6)
    pairs = EmbeddingPairs(tmp_path / "mean")
    assert pairs.tokens_per_image == 1 and pairs.read_pairs(np.arange(3))[0].shape == (3, 64)


def test_interrupted_run_resumes_to_identical_arrays(ckpts, models, images_dir, tmp_path):
    full = generate_embeddings(_cfg(ckpts, images_dir, tmp_path / "full"), models=models)
    out = tmp_path / "partial"
    part = generate_embeddings(_cfg(ckpts, images_dir, out, stop_after_batches=2), models=models)
    # batches of 3 candidates: animals/0-4 + notes.jpg -> 2 batches hold 5 readable images, 1 skipped
    assert part["status"] == "in_progress" and part["next_index"] == 6 and part["num_rows"] == 5
    assert [s["path"] for s in part["skipped"]] == ["animals/notes.jpg"]
    on_disk = np.load(out / "X.npy", mmap_mode="r")  # pre-allocated, first rows already written
    assert on_disk.shape[0] == 12
    np.testing.assert_array_equal(on_disk[:5], np.load(tmp_path / "full" / "X.npy")[:5])
    with pytest.raises(ValueError, match="unfinished embedding dataset"):
        EmbeddingPairs(out)
    with pytest.raises(ValueError, match="pass --overwrite"):
        generate_embeddings(_cfg(ckpts, images_dir, out, pooling="mean"), models=models)
    resumed = generate_embeddings(_cfg(ckpts, images_dir, out), models=models)
    assert resumed["images"] == full["images"] and resumed["skipped"] == full["skipped"]
    assert len({r["path"] for r in resumed["images"]}) == resumed["num_rows"] == 10
    for name in ("X.npy", "y.npy"):
        np.testing.assert_array_equal(np.load(out / name), np.load(tmp_path / "full" / name))
    again = generate_embeddings(_cfg(ckpts, images_dir, out), models=models)  # complete: no-op
    assert again["num_rows"] == 10


class _CrashingModel:
    """Delegates to a real model; its ``embed`` raises on call number ``crash_at`` (a simulated crash)."""

    def __init__(self, model, crash_at):
        self._model, self._crash_at, self.calls = model, crash_at, 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def embed(self, pixels):
        self.calls += 1
        if self.calls == self._crash_at:
            raise RuntimeError("simulated crash")
        return self._model.embed(pixels)


@pytest.mark.parametrize("commit_every_s", [0.0, 1e9])
def test_crash_mid_run_resumes_from_last_commit(ckpts, models, images_dir, tmp_path, commit_every_s):
    out = tmp_path / "crashy"
    crashing = _CrashingModel(models[1], crash_at=4)  # 1 probe + 2 batches succeed, the 3rd batch dies
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_embeddings(_cfg(ckpts, images_dir, out, commit_every_s=commit_every_s), models=(models[0], crashing))
    committed = read_manifest(out)
    assert committed["status"] == "in_progress"
    assert committed["num_rows"] == (5 if commit_every_s == 0 else 0)  # every batch vs never committed
    resumed = generate_embeddings(_cfg(ckpts, images_dir, out, commit_every_s=commit_every_s), models=models)
    full = generate_embeddings(_cfg(ckpts, images_dir, tmp_path / "full"), models=models)
    assert resumed["images"] == full["images"] and resumed["skipped"] == full["skipped"]
    for name in ("X.npy", "y.npy"):
        np.testing.assert_array_equal(np.load(out / name), np.load(tmp_path / "full" / name))


def test_llava_hf_checkpoint_same_pixels_same_embeddings(ckpts, models, images_dir, tmp_path):
    hf = load_embedding_model(ckpts["hf"], device="cpu", flag="--model_7b")
    assert hf.kind == "llava_hf" and hf.aspect == "pad"
    assert preprocess_mismatches(hf, models[1]) == []
    ours = generate_embeddings(_cfg(ckpts, images_dir, tmp_path / "ours"), models=models)
    mixed = generate_embeddings(_cfg(ckpts, images_dir, tmp_path / "mixed", model_7b=ckpts["hf"]),
                                models=(hf, models[1]))
    assert mixed["models"]["X"]["kind"] == "llava_hf" and mixed["images"] == ours["images"]
    assert mixed["models"]["X"]["vision_feature_layer"] == -2
    # identical tower + projector weights and identical pixels -> identical embeddings
    np.testing.assert_allclose(np.load(tmp_path / "mixed" / "X.npy"), np.load(tmp_path / "ours" / "X.npy"),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.load(tmp_path / "mixed" / "y.npy"), np.load(tmp_path / "ours" / "y.npy"))


def test_llava_hf_honours_feature_layer_and_strategy(ckpts, tmp_path):
    from transformers import AutoConfig

    hf_dir = tmp_path / "hf_full"
    shutil.copytree(ckpts["hf"], hf_dir)
    cfg = AutoConfig.from_pretrained(hf_dir)
    cfg.vision_feature_select_strategy, cfg.vision_feature_layer = "full", -1
    cfg.save_pretrained(hf_dir)
    default = load_embedding_model(ckpts["hf"], device="cpu")
    full = load_embedding_model(str(hf_dir), device="cpu")
    pix = default.preprocess([Image.new("RGB", (40, 30), (10, 200, 30))])
    assert probe_shape(default, pix) == (T, 64) and probe_shape(full, pix) == (T + 1, 64)
    assert not torch.allclose(full.embed(pix)[:, 1:], default.embed(pix))


def test_loader_errors_name_the_flag(ckpts, tiny_llama):
    with pytest.raises(ValueError, match=r"--model_13b .*model_type 'llama' is not a LLaVA checkpoint"):
        load_embedding_model(tiny_llama, device="cpu", flag="--model_13b")
    with pytest.raises(ValueError, match="--model_7b .*native llava-hf checkpoint.*Drop it"):
        load_embedding_model(ckpts["hf"], model_base=tiny_llama, device="cpu", flag="--model_7b")


def test_preprocess_mismatch_is_refused_unless_allowed(ckpts, models, images_dir, tmp_path):
    hf = load_embedding_model(ckpts["hf"], device="cpu")
    hf.aspect = None  # as if its processor had do_pad=False
    with pytest.raises(ValueError, match="image_aspect_ratio: X=None y='pad'.*--allow_preprocess_mismatch"):
        generate_embeddings(_cfg(ckpts, images_dir, tmp_path / "a", model_7b=ckpts["hf"]), models=(hf, models[1]))
    m = generate_embeddings(_cfg(ckpts, images_dir, tmp_path / "b", model_7b=ckpts["hf"],
                                 allow_preprocess_mismatch=True), models=(hf, models[1]))
    assert m["preprocessing"]["mismatches"] == ["image_aspect_ratio: X=None y='pad'"]


def test_cli_end_to_end_with_projector_only_checkpoint(ckpts, images_dir, tmp_path):
    """The real entry point loads both checkpoints; y is a projector-only folder + --model_base_13b."""
    import importlib.util

    from llava.model.checkpoints import save_mm_projector
    from llava.testing.tiny_llava import build_tiny_llava

    proj_dir = tmp_path / "wide_projector"
    save_mm_projector(build_tiny_llava(ckpts["llm96"], ckpts["clip"], seed=1), proj_dir)
    spec = importlib.util.spec_from_file_location("gen_cli", "scripts/generate_embeddings.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "cli"
    args = ["--model_7b", ckpts["small"], "--model_13b", str(proj_dir), "--model_base_13b", ckpts["llm96"],
            "--images_dir", str(images_dir), "--output_dir", str(out), "--pooling", "mean", "--device", "cpu",
            "--batch_size", "4", "--no_progress", "--export_pt"]
    assert cli.main(args) == 0
    manifest = read_manifest(out)
    assert manifest["models"]["y"]["model_base"] == ckpts["llm96"] and manifest["storage_dtype"] == "float16"
    full = generate_embeddings(_cfg(ckpts, images_dir, tmp_path / "ref", pooling="mean", storage_dtype="float16"))
    np.testing.assert_array_equal(np.load(out / "y.npy"), np.load(tmp_path / "ref" / "y.npy"))
    exported = torch.load(out / "embeddings.pt", weights_only=True)
    assert exported["X"].shape == (10, 64) and exported["categories"] == [r["category"] for r in full["images"]]


# ---------------------------------------------------------------- metrics, split, training


def test_metrics_match_hand_computed_values():
    pred = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    acc = MetricAccumulator(["a", "b", "unused"])
    acc.update(pred[:2], target[:2], np.array([0, 1]))
    acc.update(pred[2:], target[2:], np.array([1, 1]))
    m = acc.compute()
    # cosines: 1, 1, 0, 1 -> overall 0.75; per category a: 1, b: (1 + 0 + 1) / 3
    assert m["cosine"] == pytest.approx(0.75) and m["rows"] == 4
    assert m["per_category"]["a"]["cosine"] == pytest.approx(1.0)
    assert m["per_category"]["b"]["cosine"] == pytest.approx(2 / 3)
    assert "unused" not in m["per_category"]
    # squared errors: 0, 1, 2, 4 over 8 elements -> 7/8; b: 7 / 6
    assert m["mse"] == pytest.approx(7 / 8) and m["per_category"]["b"]["mse"] == pytest.approx(7 / 6)
    # population variance of (1, 2/3): ((1/6)^2 + (1/6)^2) / 2
    assert m["alignment_variance"] == pytest.approx(1 / 36)
    assert alignment_variance([0.5]) == 0.0 and alignment_variance([0.0, 1.0]) == pytest.approx(0.25)
    checks = check_targets({"cosine": 0.95, "mse": 0.02, "alignment_variance": 0.01})
    assert [checks[k]["pass"] for k in ("cosine", "mse", "alignment_variance")] == [True, False, True]


def _write_synthetic(out, x, y, categories):
    """An embedding dataset from arrays, through the same writer generation uses."""
    writer = EmbeddingWriter.create(out, {"pooling": "none" if x.ndim == 3 else "mean"}, len(x), x.shape[1:],
                                    y.shape[1:], "float32")
    for i in range(0, len(x), 64):
        recs = [{"path": f"{categories[j]}/{j}.png", "category": categories[j]} for j in range(i, min(i + 64, len(x)))]
        writer.commit(x[i:i + 64], y[i:i + 64], recs, [], i + len(recs))
    return writer.finalize()


def test_split_is_by_image_and_streaming_covers_each_token_once(tmp_path):
    n, t = 40, 5
    x = np.zeros((n, t, 3), np.float32)
    x[:, :, 0] = np.arange(n)[:, None]  # every token row carries its image id
    cats = ["a" if i % 3 else "b" for i in range(n)]
    _write_synthetic(tmp_path / "ds", x, np.zeros((n, t, 2), np.float32), cats)
    pairs = EmbeddingPairs(tmp_path / "ds")
    train, val = split_by_image(pairs.image_category_ids, 0.25, seed=0)
    assert set(train).isdisjoint(val) and len(train) + len(val) == n
    assert {cats[i] for i in val} == {"a", "b"}
    seen = np.concatenate([b[0][:, 0] for b in iter_batches(pairs, train, 7, np.random.default_rng(0), 12)])
    assert sorted(seen.astype(int).tolist()) == sorted(np.repeat(train, t).tolist())
    assert set(seen.astype(int)).isdisjoint(val)
    sizes = [len(b[0]) for b in iter_batches(pairs, train, 7, None, 12)]
    assert all(s == 7 for s in sizes[:-1]) and sum(sizes) == len(train) * t


def test_train_mlp_learns_nonlinear_map_and_reports(tmp_path):
    import importlib.util

    from llava.embedding_alignment.mlp import load_mlp

    rng = np.random.default_rng(0)
    n, t, d_in, d_out = 600, 2, 12, 20
    w1, w2 = rng.normal(size=(d_in, 32)) / np.sqrt(d_in), rng.normal(size=(32, d_out)) / np.sqrt(32)
    x = rng.normal(size=(n, t, d_in))
    y = np.tanh(x @ w1) @ w2 + 1.0 + 0.05 * rng.normal(size=(n, t, d_out))
    cats = [("indoor", "outdoor", "text")[i % 3] for i in range(n)]
    _write_synthetic(tmp_path / "ds", x.astype(np.float32), y.astype(np.float32), cats)
    spec = importlib.util.spec_from_file_location("train_cli", "scripts/train_mlp.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "mlp"
    assert cli.main(["--dataset_path", str(tmp_path / "ds"), "--output_dir", str(out), "--epochs", "25",
                     "--batch_size", "64", "--lr", "3e-3", "--device", "cpu", "--no_progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    history = json.loads((out / "metrics.json").read_text())
    assert report["val"]["cosine"] > 0.9, report["val"]
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 2
    assert set(report["val"]["per_category"]) == {"indoor", "outdoor", "text"}
    assert set(history[0]["val_per_category"]) == {"indoor", "outdoor", "text"}
    assert set(report["targets"]) == {"cosine", "mse", "alignment_variance"} and report["targets"]["cosine"]["pass"]
    assert report["val_images"] == 90 and report["train_images"] == 510
    for name in ("metrics.csv", "curves.png", "report.md", "run_config.json"):
        assert (out / name).stat().st_size > 0
    assert Image.open(out / "curves.png").size[0] > 600
    mlp, mcfg = load_mlp(out)
    assert (mcfg["d_in"], mcfg["d_out"], mcfg["epoch"]) == (d_in, d_out, report["best_epoch"])
    assert mcfg["val"]["cosine"] == pytest.approx(max(r["val_cosine"] for r in history))
    assert "| cosine |" in (out / "report.md").read_text()


def _mlp_cli():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_cli", "scripts/train_mlp.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def _small_pairs(root):
    rng = np.random.default_rng(1)
    n, t, d_in, d_out = 120, 2, 6, 8
    x = rng.normal(size=(n, t, d_in)).astype(np.float32)
    y = (np.tanh(x @ rng.normal(size=(d_in, d_out))) + 0.05 * rng.normal(size=(n, t, d_out))).astype(np.float32)
    _write_synthetic(root, x, y, [("a", "b")[i % 2] for i in range(n)])
    return root


def test_train_mlp_refuses_to_overwrite_a_finished_run(tmp_path, capsys):
    cli, ds, out = _mlp_cli(), _small_pairs(tmp_path / "ds"), tmp_path / "mlp"
    base = ["--dataset_path", str(ds), "--output_dir", str(out), "--batch_size", "32", "--device", "cpu",
            "--no_progress", "--no_final_train_eval"]
    assert cli.main(base + ["--epochs", "4"]) == 0
    before = (out / "mlp.safetensors").read_bytes()
    capsys.readouterr()
    assert cli.main(base + ["--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already holds a finished run" in err[0] and "--overwrite" in err[0], err
    assert (out / "mlp.safetensors").read_bytes() == before
    assert cli.main(base + ["--epochs", "2", "--overwrite"]) == 0
    assert json.loads((out / "report.json").read_text())["epochs"] == 2


def test_train_mlp_interrupted_then_resumed_is_bit_identical(tmp_path, capsys):
    cli, ds = _mlp_cli(), _small_pairs(tmp_path / "ds")

    def run(out, *extra):
        return cli.main(["--dataset_path", str(ds), "--output_dir", str(out), "--batch_size", "16", "--epochs", "5",
                         "--device", "cpu", "--no_progress", "--lr", "3e-3", "--shuffle_buffer_rows", "40", *extra])

    assert run(tmp_path / "straight") == 0
    assert run(tmp_path / "resumed", "--stop_after_epochs", "2") == 0
    assert (tmp_path / "resumed" / "train_state.pt").exists() and not (tmp_path / "resumed" / "report.json").exists()
    capsys.readouterr()
    assert run(tmp_path / "resumed", "--lr", "1e-3") == 2  # other settings: refused, differences listed
    assert "--lr 0.003 -> 0.001" in capsys.readouterr().err
    assert run(tmp_path / "resumed") == 0
    weights = [(tmp_path / d / "mlp.safetensors").read_bytes() for d in ("straight", "resumed")]
    assert weights[0] == weights[1]
    timing = ("train_seconds", "pairs_per_s")
    hist = [[{k: v for k, v in r.items() if k not in timing} for r in json.loads((tmp_path / d / "metrics.json")
                                                                                  .read_text())]
            for d in ("straight", "resumed")]
    assert hist[0] == hist[1] and len(hist[0]) == 5


@pytest.mark.slow
def test_train_mlp_killed_then_resumed_is_bit_identical(tmp_path):
    """SIGKILL once the first epoch's state is written; the rerun resumes there and ends like a straight run."""
    import signal
    import subprocess
    import sys
    import time

    ds = _small_pairs(tmp_path / "ds")

    def cmd(out):
        return [sys.executable, "scripts/train_mlp.py", "--dataset_path", str(ds), "--output_dir", str(out),
                "--batch_size", "8", "--epochs", "30", "--device", "cpu", "--no_progress", "--no_final_train_eval"]

    assert subprocess.run(cmd(tmp_path / "straight"), capture_output=True, timeout=300).returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "train_state.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "report.json").exists(), "the run finished before the kill"
    res = subprocess.run(cmd(out), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "resuming" in res.stderr, res.stderr[-2000:]
    assert (out / "mlp.safetensors").read_bytes() == (tmp_path / "straight" / "mlp.safetensors").read_bytes()
