"""The token-norm diagnostic: CSV numbers match norms computed directly, the PNG is drawn, input errors are one line."""

from __future__ import annotations

import csv

import pytest
import torch
from PIL import Image

from llava.diagnostics.token_norms import CSV_COLUMNS, KINDS, main, quantile, summarize
from llava.mm_utils import load_image, process_images
from llava.model.builder import load_pretrained_model
from llava.testing.tiny_llava import build_tiny_llava

TOKENS_PER_IMAGE = 16  # tiny CLIP: 32 px, patch 8 -> 4x4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_llama, tiny_clip, llama_tokenizer):
    out = tmp_path_factory.mktemp("norm_ckpt")
    model = build_tiny_llava(tiny_llama, tiny_clip, normalize_projector=True)
    model.save_pretrained(out)
    llama_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("norm_images")
    (folder / "sub").mkdir()
    gen = torch.Generator().manual_seed(0)
    names = ["a.png", "b.png", "sub/c.png", "d.png"]
    for i, name in enumerate(names):
        size = (48, 32) if i == 3 else (32, 32)  # one non-square image exercises image_aspect_ratio='pad'
        pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"not read")
    return folder, sorted(names)


def _direct_norms(checkpoint, paths) -> dict[str, torch.Tensor]:
    _, model, processor, _ = load_pretrained_model(str(checkpoint), None, device="cpu")
    images = process_images([load_image(p) for p in paths], processor, model.config)
    with torch.no_grad():
        blocks, layout, x, p1 = model.encode_image_blocks_with_aux(images)
    return {"tower": x.float().reshape(-1, x.shape[-1]).norm(dim=-1),
            "projector": p1.float().reshape(-1, p1.shape[-1]).norm(dim=-1),
            "llm_input": blocks[:, layout.is_feature].float().reshape(-1, blocks.shape[-1]).norm(dim=-1),
            "text_embeddings": model.get_input_embeddings().weight.detach().float().norm(dim=-1)}


def _read_csv(path) -> list[dict[str, str]]:
    with path.open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        return list(reader)


def test_csv_matches_direct_norms_and_png_is_drawn(checkpoint, image_folder, tmp_path, capsys):
    folder, names = image_folder
    out = tmp_path / "out"
    main(["--model-path", str(checkpoint), "--image-folder", str(folder), "--output-dir", str(out),
          "--batch-size", "3"])
    stdout = capsys.readouterr().out
    assert "images 3/4" in stdout and "images 4/4" in stdout
    assert stdout.count("kind,n,mean,median,p95,max") == 1

    rows = _read_csv(out / "token_norms.csv")
    assert [r["kind"] for r in rows] == list(KINDS)
    direct = _direct_norms(checkpoint, [folder / n for n in names])
    expected = {r["kind"]: r for r in summarize(direct)}
    for row in rows:
        ref = direct[row["kind"]]
        assert int(row["n"]) == ref.numel() == expected[row["kind"]]["n"]
        assert float(row["mean"]) == pytest.approx(float(ref.mean()), rel=1e-4)
        assert float(row["median"]) == pytest.approx(float(torch.quantile(ref, 0.5)), rel=1e-4)
        assert float(row["p95"]) == pytest.approx(float(torch.quantile(ref, 0.95)), rel=1e-4)
        assert float(row["max"]) == pytest.approx(float(ref.max()), rel=1e-4)
    n = {r["kind"]: int(r["n"]) for r in rows}
    assert n["tower"] == n["projector"] == n["llm_input"] == len(names) * TOKENS_PER_IMAGE
    assert n["text_embeddings"] == direct["text_embeddings"].shape[0]
    # normalize_projector rescales the projected tokens: LLM-input norms differ from the raw projector's
    means = {r["kind"]: float(r["mean"]) for r in rows}
    assert means["llm_input"] != pytest.approx(means["projector"], rel=1e-2)

    with Image.open(out / "token_norms.png") as png:
        assert png.format == "PNG"
        assert png.width >= 600 and png.height >= 300
        assert len(png.convert("RGB").getcolors(maxcolors=1 << 16) or ()) > 3  # something was drawn
    assert sorted(p.name for p in out.iterdir()) == ["token_norms.csv", "token_norms.png"]  # no temp files left


def test_max_images_limits_the_images(checkpoint, image_folder, tmp_path, capsys):
    folder, _ = image_folder
    main(["--model-path", str(checkpoint), "--image-folder", str(folder), "--output-dir", str(tmp_path),
          "--max-images", "2"])
    assert "images 2/2" in capsys.readouterr().out
    n = {r["kind"]: int(r["n"]) for r in _read_csv(tmp_path / "token_norms.csv")}
    assert n["tower"] == n["llm_input"] == 2 * TOKENS_PER_IMAGE


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_bad_image_folder_is_one_line_exit_2(make, tmp_path, capsys):
    folder = tmp_path / "nowhere"
    if make == "empty":
        folder.mkdir()
        (folder / "readme.txt").write_text("no images here")
    with pytest.raises(SystemExit) as exc:
        main(["--model-path", str(tmp_path / "no-model"), "--image-folder", str(folder),
              "--output-dir", str(tmp_path / "out")])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(folder) in lines[0] and "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()


def test_quantile_fallback_matches_torch(monkeypatch):
    import llava.diagnostics.token_norms as tn

    v = torch.rand(1001, generator=torch.Generator().manual_seed(1))
    ref = [float(torch.quantile(v, q)) for q in (0.5, 0.95)]
    monkeypatch.setattr(tn, "QUANTILE_MAX_NUMEL", 10)
    assert [quantile(v, q) for q in (0.5, 0.95)] == pytest.approx(ref, rel=1e-6)


def test_projector_only_without_base_is_one_line_exit_2(tmp_path, capsys):
    ckpt, images = tmp_path / "proj", tmp_path / "images"
    ckpt.mkdir()
    images.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "mm_projector.bin").write_bytes(b"")
    Image.new("RGB", (32, 32)).save(images / "a.png")
    with pytest.raises(SystemExit) as exc:
        main(["--model-path", str(ckpt), "--image-folder", str(images)])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(ckpt) in lines[0] and "--model-base" in lines[0]
