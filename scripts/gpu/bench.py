"""GPU check parts ``bench_stages`` / ``bench_packing``: ``scripts/bench/gpu_throughput.py`` with ``--json``.

Stage 1 and stage 2 rows (fixed batches), or with ``--packing`` stage 2 padded vs packed, on the
LLaVA-1.5-7B shape with random weights (``--quick``: tiny shapes, ``--peak_tflops 1`` so MFU columns
exist on a CPU). The rows are appended to ``OUT/BENCHMARKS.md`` (date and device on each row) by the
benchmark's own ``append_rows``; the JSON goes to ``OUT/bench_<stages|packing>.json``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from gpu_common import parse_part_args, part_parser, write_result

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_throughput.py"
# Timed steps a repeat on a GPU, for the check's budget: stages 2 (warmup 2 + 3 x 2 steps a row, ~3 s a stage-1
# step on an H100); packing 1 (16 samples a row: one padded batch, one batch of ~7 packs).
STEPS = {"stages": "2", "packing": "1"}


def load_bench() -> Any:
    """The benchmark script as a module (for its ``append_rows``)."""
    spec = importlib.util.spec_from_file_location("gpu_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def key_numbers(rows: list[dict[str, Any]]) -> dict[str, float]:
    """samples/s and LLM MFU (medians) per row, short names."""
    numbers: dict[str, float] = {}
    for r in rows:
        name = f"s{r['stage'].replace(' ', '')}{'' if r['batching'] == 'fixed' else '_' + r['batching']}"
        stats = r["stats"]
        numbers[f"{name}_samples_s"] = stats["samples_per_second"]["median"]
        if "mfu_llm" in stats:
            numbers[f"{name}_mfu_llm"] = stats["mfu_llm"]["median"]
    return numbers


def main() -> None:
    p = part_parser(__doc__.splitlines()[0])
    p.add_argument("--packing", action="store_true")
    a = parse_part_args(p)
    kind = "packing" if a.packing else "stages"
    part, json_path = f"bench_{kind}", Path(a.out) / f"bench_{kind}.json"
    json_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(BENCH), "--device", a.device, "--json", str(json_path), "--no-append",
           *(["--packing"] if a.packing else []),
           *(["--quick", "--peak_tflops", "1"] if a.quick else ["--steps", STEPS[kind]])]
    print(f"$ {' '.join(cmd)}", flush=True)
    res = subprocess.run(cmd)
    if not json_path.exists():
        write_result(a.out, part, False, {}, f"gpu_throughput.py exited {res.returncode} without --json output")
        return
    got = json.loads(json_path.read_text())
    rows = got["rows"]
    if rows:
        load_bench().append_rows(Path(a.out) / "BENCHMARKS.md", got["device"], rows)
    numbers = key_numbers(rows)
    expected = 4 if a.packing else 3
    finite = all(math.isfinite(v) and v > 0 for v in numbers.values())
    ok = res.returncode == 0 and len(rows) >= expected and finite  # more: flash-attention-2 rows too
    detail = "" if ok else f"exit {res.returncode}, {len(rows)}/{expected} rows (missing rows: out of memory?)"
    write_result(a.out, part, ok, dict(rows=len(rows), **numbers), detail)


if __name__ == "__main__":
    main()
