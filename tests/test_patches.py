"""patches/ fix-ups on crafted inputs: dry-run changes nothing (byte for byte), apply fixes, backups exist."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import GenerationConfig

import llava.utils.generation_config as shared
from patches import fix_generation_config, fix_image_formats, scan_images


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- generation_config.json ----

BAD_CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": False, "temperature": 0.9, "top_p": 0.6,
              "max_length": 4096, "pad_token_id": 0}


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "vicuna"
    folder.mkdir()
    (folder / "generation_config.json").write_text(json.dumps(BAD_CONFIG, indent=2))
    (folder / "config.json").write_text("{}")
    return folder


def test_generation_config_cli_shares_the_trainer_sanitizer() -> None:
    assert fix_generation_config.sanitize_generation_config is shared.sanitize_generation_config


def test_generation_config_dry_run_changes_nothing(model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(model_dir)
    assert fix_generation_config.main([str(model_dir)]) == 0
    assert snapshot(model_dir) == before
    out = capsys.readouterr().out
    assert "would change 2 value(s)" in out and "temperature: 0.9 -> None" in out and "--apply" in out


def test_generation_config_apply_fixes_and_backs_up(model_dir: Path, tmp_path: Path) -> None:
    config_path = model_dir / "generation_config.json"
    original = config_path.read_bytes()
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig.from_dict(json.loads(original)).save_pretrained(tmp_path / "before")
    assert fix_generation_config.main([str(config_path), "--apply"]) == 0
    assert (model_dir / "generation_config.json.bak").read_bytes() == original
    fixed = json.loads(config_path.read_text())
    assert fixed == {k: v for k, v in BAD_CONFIG.items() if k not in ("temperature", "top_p")}
    GenerationConfig.from_dict(fixed).save_pretrained(tmp_path / "after")  # saves now
    assert fix_generation_config.main([str(model_dir), "--apply"]) == 0  # idempotent: nothing left to change
    assert not (model_dir / "generation_config.json.bak.1").exists()


def test_generation_config_backup_dir_and_bad_inputs(model_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    backups = tmp_path / "backups"
    assert fix_generation_config.main([str(model_dir), "--apply", "--backup_dir", str(backups)]) == 0
    assert json.loads((backups / "generation_config.json").read_text()) == BAD_CONFIG
    assert fix_generation_config.main([str(tmp_path / "nope")]) == 1
    assert "no such file or folder" in capsys.readouterr().err
    empty = tmp_path / "no_gen_config"
    empty.mkdir()
    assert fix_generation_config.main([str(empty)]) == 0


# ---- images ----


def _save_as(image: Image.Image, path: Path, fmt: str) -> Path:
    image.save(path, format=fmt)
    return path


@pytest.fixture()
def image_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    picture = Image.effect_noise((48, 48), 40).convert("RGB")
    _save_as(picture, folder / "good.jpg", "JPEG")
    _save_as(picture, folder / "good.png", "PNG")
    _save_as(picture.convert("P"), folder / "sub" / "gif_named.jpg", "GIF")
    _save_as(picture, folder / "png_named.jpeg", "PNG")
    data = (folder / "good.png").read_bytes()
    (folder / "sub" / "truncated.png").write_bytes(data[: len(data) // 2])
    data = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "error_page.jpg").write_bytes(b"<html>404 not found</html>")
    return folder


def test_fix_image_formats_dry_run_changes_nothing(image_dir: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(image_dir)
    assert fix_image_formats.main([str(image_dir)]) == 0
    assert snapshot(image_dir) == before
    out = capsys.readouterr().out
    assert "gif_named.jpg: GIF data named like JPEG; would convert" in out
    assert "png_named.jpeg: PNG data named like JPEG" in out
    assert "error_page.jpg: unreadable" in out


def test_fix_image_formats_apply_converts_and_backs_up(image_dir: Path) -> None:
    before = snapshot(image_dir)
    expected_pixels = Image.open(image_dir / "sub" / "gif_named.jpg").convert("RGB")
    assert fix_image_formats.main([str(image_dir), "--apply"]) == 0
    after = snapshot(image_dir)
    for name in ("sub/gif_named.jpg", "png_named.jpeg"):
        with Image.open(image_dir / name) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
        assert after[name + ".bak"] == before[name]
    with Image.open(image_dir / "sub" / "gif_named.jpg") as image:
        diff = np.abs(np.asarray(image, dtype=np.float32) - np.asarray(expected_pixels, dtype=np.float32))
    assert diff.mean() < 12  # same picture, up to JPEG loss
    for name in ("good.jpg", "good.png", "truncated.jpg", "error_page.jpg", "sub/truncated.png"):
        assert after[name] == before[name]  # matching or unreadable files are left alone
    assert set(after) == set(before) | {"sub/gif_named.jpg.bak", "png_named.jpeg.bak"}
    assert fix_image_formats.main([str(image_dir), "--apply"]) == 0  # idempotent
    assert snapshot(image_dir) == after


def test_fix_image_formats_backup_dir_mirrors_paths(image_dir: Path, tmp_path: Path) -> None:
    original = (image_dir / "sub" / "gif_named.jpg").read_bytes()
    backups = tmp_path / "backups"
    assert fix_image_formats.main([str(image_dir), "--apply", "--backup_dir", str(backups)]) == 0
    assert (backups / "sub" / "gif_named.jpg").read_bytes() == original
    assert not (image_dir / "sub" / "gif_named.jpg.bak").exists()


def _report(path: Path) -> dict[str, str]:
    return {Path(row["path"]).name: row["error"] for row in map(json.loads, path.read_text().splitlines())}


BAD_FILES = {"truncated.png", "truncated.jpg", "error_page.jpg"}


def test_scan_images_dry_run_reports_and_changes_nothing(image_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    before = snapshot(image_dir)
    report = tmp_path / "bad.jsonl"
    rc = scan_images.main([str(image_dir), "--report", str(report), "--quarantine", str(tmp_path / "q"),
                           "--workers", "1"])
    assert rc == 1  # bad files remain in place
    assert snapshot(image_dir) == before and not (tmp_path / "q").exists()
    found = _report(report)
    assert set(found) == BAD_FILES
    assert "truncated" in found["truncated.png"] and "cannot identify" in found["error_page.jpg"]
    assert "would move to" in capsys.readouterr().out


def test_scan_images_apply_quarantines(image_dir: Path, tmp_path: Path) -> None:
    quarantine = tmp_path / "q"
    rc = scan_images.main([str(image_dir), "--report", str(tmp_path / "bad.jsonl"), "--quarantine",
                           str(quarantine), "--apply", "--workers", "2"])
    assert rc == 0
    assert set(snapshot(quarantine)) == {"truncated.jpg", "error_page.jpg", "sub/truncated.png"}
    assert not any((image_dir / rel).exists() for rel in ("truncated.jpg", "error_page.jpg", "sub/truncated.png"))
    assert (image_dir / "good.png").exists() and (image_dir / "sub" / "gif_named.jpg").exists()


def test_scan_images_no_decode_and_flag_errors(image_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "bad.jsonl"
    assert scan_images.main([str(image_dir), "--report", str(report), "--no_decode", "--workers", "1"]) == 1
    assert set(_report(report)) == BAD_FILES  # verify() + JPEG end marker catch all three without decoding
    with pytest.raises(SystemExit):
        scan_images.main([str(image_dir), "--apply"])  # --apply without --quarantine is refused
