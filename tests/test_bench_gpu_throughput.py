"""scripts/bench/gpu_throughput.py runs on a CPU in seconds (``--device cpu --quick``) and reports every row (issue 27).

As a subprocess with no GPU visible: with ``--packing``, stage 2 full fine-tuning and LoRA, each padded
and packed, the packed rows through train()'s padding-free path (``llava_packed_sdpa`` attention,
``PackedCollator(one_row=True)``: one row a step, no padding); without it stage 1, stage 2 full and
stage 2 LoRA. Every row's medians and ranges over 3 repeats (samples/s, tokens/s, MFU of the vision
tower, projector and LLM, step time) and its peak memory are finite and positive.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench" / "gpu_throughput.py"
STATS = ("samples_per_second", "tokens_per_second", "mfu_vision", "mfu_projector", "mfu_llm", "step_s")


def _run(tmp_path: Path, *extra: str) -> tuple[dict, str]:
    out = tmp_path / "rows.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--peak_tflops", "1",
                           "--no-append", "--json", str(out), *extra], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _check_numbers(row: dict) -> None:
    assert row["repeats"] == 3 and row["steps"] >= 1
    assert set(STATS) <= set(row["stats"]), row["stats"].keys()
    for key in STATS:
        s = row["stats"][key]
        assert all(math.isfinite(s[k]) and s[k] > 0 for k in ("median", "min", "max")), (key, s)
        assert s["min"] <= s["median"] <= s["max"]
    assert math.isfinite(row["peak_gib"]) and row["peak_gib"] > 0
    assert 0 <= row["padding_fraction"] < 1


def test_packing_rows_use_the_padding_free_path(tmp_path: Path) -> None:
    got, stdout = _run(tmp_path, "--packing")
    assert got["device"] == "cpu"
    rows = {(r["stage"], r["batching"]): r for r in got["rows"]}
    assert set(rows) == {(s, b) for s in ("2 full", "2 lora") for b in ("padded", "packed")}
    for row in got["rows"]:
        _check_numbers(row)
    for stage in ("2 full", "2 lora"):
        packed, padded = rows[stage, "packed"], rows[stage, "padded"]
        assert packed["attn"] == "llava_packed_sdpa" and packed["collator"] == "PackedCollator(one_row=True)"
        assert packed["rows_per_batch"] == 1 and packed["padding_fraction"] == 0.0
        assert padded["attn"] == "sdpa" and padded["collator"] == "DataCollatorForSupervisedDataset"
        assert padded["padding_fraction"] > 0
    assert rows["2 full", "packed"]["mode"] == "full" and rows["2 lora", "packed"]["mode"] == "lora"
    # full fine-tuning trains the LLM itself; LoRA its adapters (and both the projector)
    assert rows["2 full", "packed"]["trainable"] != rows["2 lora", "packed"]["trainable"]
    lines = stdout.splitlines()
    assert sum(" | stage 2 " in line and "MFU vision" in line for line in lines) == 4
    assert sum("packed / padded" in line for line in lines) == 2


def test_stage_rows_without_packing(tmp_path: Path) -> None:
    got, _ = _run(tmp_path)
    assert [(r["stage"], r["mode"]) for r in got["rows"]] == [("1", "projector"), ("2 full", "full"),
                                                              ("2 lora", "lora")]
    for row in got["rows"]:
        _check_numbers(row)
        assert row["padding_fraction"] == 0.0 and row["attn"] == "sdpa"
