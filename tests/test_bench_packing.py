"""Smoke test of ``scripts/bench/packing.py --quick``: it runs and reports both modes and their waste (no speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # ~40 s on 2 cores: two worker processes, each importing torch + transformers

REPO = Path(__file__).resolve().parents[1]


def test_quick_packing_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "packing.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "bench" / "packing.py"), "--quick", "--threads", "1",
                          "--json", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    lines = res.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| image tok | mode | samples"))
    assert "| waste |" in header and "useful tok/s" in header and "peak RSS MiB" in header
    modes = {line.split("|")[2].strip() for line in lines[lines.index(header) + 2:] if line.startswith("| 16 |")}
    assert {"padded", "packed"} <= modes, res.stdout
    assert "| LLaVA conversation | 58K |" in res.stdout and "| ShareGPT | 40K |" in res.stdout  # composition table
    assert "packed / padded ratios" in res.stdout and "Waste at full scale" in res.stdout

    report = json.loads(out.read_text())
    rows = {r["mode"]: r for r in report["results"]}
    assert rows.keys() == {"padded", "packed"}
    assert rows["padded"]["samples"] == rows["packed"]["samples"] > 0  # the same samples in both modes
    assert rows["padded"]["real"] == rows["packed"]["real"]
    for r in rows.values():
        assert 0.0 <= r["waste"] < 1.0 and r["processed"] >= r["real"] > 0
        assert r["tokens_per_s"] > 0 and r["rss_peak"] > 0
    assert len(report["ratios"]) == 1 and report["ratios"][0]["mode"] == "packed"
    ratio, padded = report["ratios"][0], rows["padded"]
    assert ratio["limit"] == padded["processed"] / padded["real"]  # the speedup's limit: padded tokens / real tokens
    assert ratio["of_limit"] == ratio["speedup"] / ratio["limit"]
    assert "| limit (of it) |" in res.stdout
    for r in rows.values():  # one run (--quick): the median is the run, the range collapses onto it
        assert r["tokens_per_s_spread"]["median"] == r["tokens_per_s"] == r["real"] / r["repeat_seconds"][0]
