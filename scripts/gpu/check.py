"""The GPU check in one command: environment, imports, bf16 vs fp32, a short training run, throughput.

Each part runs in its own process under its own time cap (and the check's overall budget); a part
that fails, crashes or runs out of time is recorded and the check goes on. At the end a summary
table (part, status, seconds, key numbers) is printed and written to ``OUT/summary.md``. Nothing
is downloaded: tiny models are built from configs, the 7B-shaped benchmark has random weights.

    bash scripts/gpu/check.sh                          # on the GPU machine (OUT=$OUT or ./gpu_check_out)
    bash scripts/gpu/check.sh --device cpu --quick     # the same parts on tiny shapes on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from gpu_common import result_path  # noqa: E402


@dataclass(frozen=True)
class Part:
    """One part of the check: its script (under scripts/gpu/), extra arguments and time caps (s)."""

    name: str
    script: str
    args: tuple[str, ...] = ()
    cap_gpu: int = 60
    cap_cpu: int = 60


PARTS = (
    Part("env", "env_report.py", cap_gpu=45, cap_cpu=45),
    Part("imports", "imports.py", cap_gpu=90, cap_cpu=90),
    Part("precision", "precision.py", cap_gpu=90, cap_cpu=90),
    Part("train", "train_run.py", cap_gpu=150, cap_cpu=120),
    Part("bench_stages", "bench.py", cap_gpu=150, cap_cpu=90),
    Part("bench_packing", "bench.py", ("--packing",), cap_gpu=210, cap_cpu=90),
)
BUDGET_S = {"cuda": 480, "cpu": 175}  # the whole check; a part gets at most what is left
KEY_LIMIT = 6  # key numbers shown per part in the table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="output folder ($OUT wins when set; default ./gpu_check_out)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--quick", action="store_true", help="tiny shapes (the CPU rehearsal)")
    p.add_argument("--wheelhouse", default=str(HERE / "wheelhouse"),
                   help="carried wheels for missing pure-Python dependencies (scripts/gpu/wheelhouse.sh)")
    p.add_argument("--parts", default=",".join(p.name for p in PARTS), help="comma-separated subset")
    p.add_argument("--budget_s", type=float, default=None, help="overall time budget (default 480 GPU, 175 CPU)")
    p.add_argument("--keep_work", action="store_true", help="keep the scratch folder (tiny models, checkpoints)")
    p.add_argument("--hide", default=None, help="comma-separated modules the parts cannot import, to rehearse the "
                   "GPU image on a CPU machine (default with --quick: deepspeed,flash_attn; else none)")
    a = p.parse_args(argv)
    a.hide = ("deepspeed,flash_attn" if a.quick else "") if a.hide is None else a.hide
    a.out = os.environ.get("OUT") or a.out or "gpu_check_out"
    return a


def pick_device(choice: str) -> str:
    """``cuda`` or ``cpu`` (``auto``: CUDA when torch sees a GPU)."""
    if choice != "auto":
        return choice
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def hide_modules(work: Path, names: list[str]) -> list[str]:
    """A ``sitecustomize`` that makes ``names`` unimportable (as on the GPU image); its folder, or none."""
    if not names:
        return []
    folder = work / "hide"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ['"""GPU check rehearsal: modules the GPU image lacks (find_spec returns None, import fails)."""',
             "import sys", *(f"sys.modules[{n!r}] = None" for n in names)]
    (folder / "sitecustomize.py").write_text("\n".join(lines) + "\n")
    return [str(folder)]


def child_env(work: Path, hide: str = "") -> dict[str, str]:
    """The parts' environment: the repository and the installed carried wheels importable, offline."""
    env = dict(os.environ)
    hidden = hide_modules(work, [n for n in hide.split(",") if n])
    paths = [*hidden, str(work / "deps"), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    env.update(PYTHONPATH=os.pathsep.join(paths), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="disabled",
               HF_HOME=str(work / "hf_home"), PYTHONUNBUFFERED="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    return env


def run_part(part: Part, a: argparse.Namespace, device: str, work: Path, cap: float) -> dict:
    """Run one part under ``cap`` seconds; its result (a failure when it wrote none)."""
    out = Path(a.out)
    log = out / "logs" / f"{part.name}.log"
    cmd = [sys.executable, str(HERE / part.script), "--out", str(out), "--work", str(work), "--device", device,
           *(["--quick"] if a.quick else []), *part.args]
    if part.name == "imports":
        cmd += ["--wheelhouse", a.wheelhouse]
    result_path(out, part.name).unlink(missing_ok=True)
    start = time.monotonic()
    with log.open("w") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(work, a.hide), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(cap, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            rc = None
    seconds = time.monotonic() - start
    path = result_path(out, part.name)
    if rc is None:
        res = dict(status="timeout", numbers={}, detail=f"killed after the {cap:.0f} s cap")
    elif path.exists():
        res = json.loads(path.read_text())
        if rc != 0 and res["status"] == "pass":
            res["status"], res["detail"] = "fail", f"exit {rc} after writing a pass; {res['detail']}"
    else:
        res = dict(status="fail", numbers={}, detail=f"exit {rc}, no result; see logs/{part.name}.log")
    res.update(part=part.name, seconds=round(seconds, 1))
    return res


def fmt_value(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summary_table(results: list[dict], device: str, quick: bool) -> str:
    """The summary as a markdown table."""
    lines = [f"# GPU check summary ({device}{', quick' if quick else ''}, {time.strftime('%Y-%m-%d %H:%M')})", "",
             "| part | status | seconds | key numbers |", "|---|---|---|---|"]
    for r in results:
        nums = list(r["numbers"].items())[:KEY_LIMIT]
        key = ", ".join(f"{k}={fmt_value(v)}" for k, v in nums)
        if r["status"] != "pass" and r.get("detail"):
            key = f"{key}; {r['detail']}" if key else r["detail"]
        lines.append(f"| {r['part']} | {r['status']} | {r['seconds']:.1f} | {key.replace('|', '/')} |")
    passed = sum(r["status"] == "pass" for r in results)
    lines += ["", f"{passed}/{len(results)} parts passed; total {sum(r['seconds'] for r in results):.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    device = pick_device(a.device)
    out = Path(a.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="llava_gpu_check_"))
    wanted = set(a.parts.split(","))
    deadline = time.monotonic() + (a.budget_s or BUDGET_S[device])
    results = []
    try:
        for part in PARTS:
            if part.name not in wanted:
                continue
            cap = min(part.cap_gpu if device == "cuda" else part.cap_cpu, deadline - time.monotonic())
            if cap < 5:
                res = dict(part=part.name, status="skipped", numbers={}, detail="check budget spent", seconds=0.0)
            else:
                print(f"[gpu-check] {part.name} (cap {cap:.0f} s) ...", flush=True)
                res = run_part(part, a, device, work, cap)
            print(f"[gpu-check] {part.name}: {res['status']} in {res['seconds']:.1f} s", flush=True)
            results.append(res)
    finally:
        if not a.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        table = summary_table(results, device, a.quick)
        (out / "summary.md").write_text(table)
        (out / "summary.json").write_text(json.dumps(results, indent=1))
        print(table, flush=True)
    return 0 if results and all(r["status"] == "pass" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
