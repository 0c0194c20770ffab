"""The CI-sized demo: ``bash scripts/demo.sh --quick --output_dir DIR`` writes ablation.md/.png, one row per variant."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from llava.eval import ablation_table, permutation_report
from llava.serve import permutation

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("vanilla", "multinorm", "multinorm_ref", "compression", "rope2d")
CATEGORIES = ("colour", "absolute_position", "relative_position", "counting")


def test_quick_demo(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, LLAVA_SKIP_INSTALL="1", OMP_NUM_THREADS="1")
    # two variants side by side, one thread each: both cores busy (the table does not depend on it)
    res = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "--quick", "--output_dir", str(out),
                          "--threads", "1", "--jobs", "2"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    md = (out / "ablation.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")]
    names = [line.split("|")[1].strip() for line in rows[1:]]
    assert names == [*VARIANTS, "majority baseline"], md
    assert "tokens/image" in rows[0] and "train time (s)" in rows[0]
    assert "failed" not in md
    report = json.loads((out / "ablation.json").read_text())
    tokens = {r["name"]: r["tokens"] for r in report["rows"]}
    assert tokens["vanilla"] == 16 and tokens["compression"] == 4 and tokens["rope2d"] == 16
    check_probe_columns(out, rows, report, md)
    png = (out / "ablation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "| vanilla |" in res.stdout  # the table is printed
    assert "(n=12)" in rows[0] and "[" in rows[1] and ", p" in rows[2]  # n, Wilson interval, McNemar p
    assert md.splitlines()[0].startswith("# Spatial benchmark ablation (CPU demo) — SMOKE TEST")

    # same seed, same table: vanilla and multinorm (the variant with trained add-on parameters) again into a
    # fresh folder give the same rows (timing excluded) and the same stage-1 projectors; the other two
    # variants go through the same seeded stage scripts (the whole demo again cost ~4 minutes of CI)
    again = tmp_path / "again"
    rerun = ("vanilla", "multinorm")
    res2 = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "--quick", "--output_dir", str(again),
                           "--threads", "1", "--jobs", "2", "--variants", ",".join(rerun)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert res2.returncode == 0, (res2.stdout[-3000:], res2.stderr[-3000:])
    first, second = (table_rows(without_timing(d / "ablation.md", d)) for d in (out, again))
    assert list(second) == [*rerun, "majority baseline"]
    assert all(second[name] == first[name] for name in second), (first, second)
    for name in rerun:
        projector = [(d / "runs" / name / "pretrain" / "mm_projector.bin").read_bytes() for d in (out, again)]
        assert projector[0] == projector[1], name


def check_probe_columns(out: Path, rows: list[str], report: dict, md: str) -> None:
    """The permutation-drop and norm-ratio columns hold what the variant's own answer files and token norms give."""
    head = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert [f"perm. drop {c}" for c in CATEGORIES] + ["norm ratio"] == head[6:11], head
    annotations = out / "data" / "test_answers.jsonl"
    differs = []
    for r, line in zip(report["rows"], rows[1:]):
        run = out / "runs" / r["name"]
        normal, permuted = (run / "answers.jsonl").read_text(), (run / "answers_permuted.jsonl").read_text()
        differs.append(normal != permuted)
        probe = permutation_report.compare_files(run / "answers.jsonl", run / "answers_permuted.jsonl", annotations)
        cells = [c.strip() for c in line.split("|")[1:-1]]
        drops = ablation_table.permutation_drops(r["hits"], r["permuted_hits"], CATEGORIES)
        for i, cat in enumerate(CATEGORIES):  # the table's drop is the report CLI's drop on the same files
            assert drops[cat].drop == pytest.approx(probe["rows"][cat]["drop"]), (r["name"], cat)
            assert cells[6 + i] == drops[cat].markdown()
        with (run / "token_norms" / "token_norms.csv").open() as f:
            means = {m["kind"]: float(m["mean"]) for m in csv.DictReader(f)}
        assert r["norm_ratio"] == pytest.approx(means["llm_input"] / means["text_embeddings"]) and r["norm_ratio"] > 0
        assert cells[10] == f"{r['norm_ratio']:.2g}"
    # At this size the smoke models answer nearly constantly ("yes" to every question), so the permuted
    # answers may equal the normal ones; that the permuted evaluation saw other inputs is checked on the
    # evaluated checkpoint itself: with the probe on, its LLM-input image tokens are a permutation of the
    # normal ones, not the same order.
    print("permuted answers differ from the normal ones:", dict(zip(VARIANTS, differs)))
    assert_probe_permutes(out / "runs" / "vanilla" / "finetune", out / "data" / "images" / "test_00000.png")
    assert "What the table shows" in md and "What this cannot show" in md
    assert all(f"- **{name}**: absolute_position " in md for name in VARIANTS)


def assert_probe_permutes(checkpoint: Path, image: Path) -> None:
    """The checkpoint the demo evaluated, with the probe switched on as model_vqa_loader does: permuted rows."""
    import torch

    from llava.mm_utils import load_image, process_images
    from llava.model.builder import load_pretrained_model

    _, model, processor, _ = load_pretrained_model(str(checkpoint), None, None, device="cpu")
    pixels = process_images([load_image(image)], processor, model.config)
    with torch.no_grad():
        normal = model.encode_image_blocks(pixels)[0][0]
        permutation.enable_permutation(model, 0)
        permuted = model.encode_image_blocks(pixels)[0][0]
    assert not torch.equal(normal, permuted)
    match = (permuted[:, None, :] == normal[None, :, :]).all(-1)
    assert match.sum(0).tolist() == [1] * normal.shape[0] == match.sum(1).tolist()


def table_rows(lines: list[str]) -> dict[str, str]:
    """The ablation table's rows by variant name (header and separator left out)."""
    rows = [line for line in lines if line.startswith("| ")][1:]
    return {line.split("|")[1].strip(): line for line in rows}


def without_timing(path: Path, folder: Path) -> list[str]:
    """ablation.md's lines without the train-time column, the total time and the output folder's name."""
    lines = []
    for line in path.read_text().replace(str(folder), "OUT").splitlines():
        if line.startswith("|"):
            line = "|".join(line.split("|")[:-2]) + "|"
        lines.append(re.sub(r"Total demo time \d+s", "Total demo time <t>", line))
    return lines
