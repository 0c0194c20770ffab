"""The CI-sized demo: ``bash scripts/demo.sh --quick --output_dir DIR`` writes ablation.md/.png, one row per variant."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("vanilla", "multinorm", "compression", "rope2d")


def test_quick_demo(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, LLAVA_SKIP_INSTALL="1", OMP_NUM_THREADS="1")
    res = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "--quick", "--output_dir", str(out),
                          "--threads", "1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
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
                           "--threads", "1", "--variants", ",".join(rerun)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert res2.returncode == 0, (res2.stdout[-3000:], res2.stderr[-3000:])
    first, second = (table_rows(without_timing(d / "ablation.md", d)) for d in (out, again))
    assert list(second) == [*rerun, "majority baseline"]
    assert all(second[name] == first[name] for name in second), (first, second)
    for name in rerun:
        projector = [(d / "runs" / name / "pretrain" / "mm_projector.bin").read_bytes() for d in (out, again)]
        assert projector[0] == projector[1], name


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
