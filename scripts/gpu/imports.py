"""GPU check part ``imports``: ``llava`` (and what the check runs) imports with only the image's packages.

The repository is on PYTHONPATH (no install needed). A module that is missing is installed from the
carried wheel folder (``scripts/gpu/wheelhouse.sh``) into ``WORK/deps`` (on every part's PYTHONPATH)
with ``pip install --no-index --no-deps``; then the imports are tried again.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from gpu_common import parse_part_args, part_parser, write_result

MODULES = ("llava", "llava.train.train", "llava.model.builder", "llava.testing.tiny_models",
           "llava.testing.tiny_llava", "llava.testing.shapes_data", "llava.model.addons.registry",
           "llava.data.packing", "sentencepiece")
DISTRIBUTION = {"google": "protobuf", "PIL": "pillow", "yaml": "pyyaml", "sentencepiece": "sentencepiece",
                "tqdm": "tqdm"}
MISSING = re.compile(r"No module named '([\w.]+)'")
MAX_ROUNDS = 4


def probe() -> tuple[bool, str]:
    """Import every module of :data:`MODULES` in a fresh interpreter: (ok, its output)."""
    code = "; ".join(f"import {m}" for m in MODULES)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return res.returncode == 0, res.stdout + res.stderr


def install(dist: str, wheelhouse: Path, target: Path) -> str:
    """``pip install`` one distribution from the wheel folder into ``target``; pip's output."""
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(wheelhouse),
           "--target", str(target), "--upgrade", dist]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return f"$ {' '.join(cmd)} -> {res.returncode}\n{res.stdout[-1500:]}{res.stderr[-1500:]}"


def main() -> None:
    p = part_parser(__doc__.splitlines()[0])
    p.add_argument("--wheelhouse", required=True)
    a = parse_part_args(p)
    wheelhouse, target = Path(a.wheelhouse), Path(a.work) / "deps"
    installed: list[str] = []
    ok, text = probe()
    for _ in range(MAX_ROUNDS):
        if ok:
            break
        found = MISSING.search(text)
        if not found or not wheelhouse.is_dir():
            break
        top = found.group(1).split(".")[0]
        dist = DISTRIBUTION.get(top, top)
        if dist in installed:
            break
        print(install(dist, wheelhouse, target), flush=True)
        installed.append(dist)
        ok, text = probe()
    print(text[-4000:])
    detail = "" if ok else text.strip().splitlines()[-1] if text.strip() else "import failed"
    if not ok and not wheelhouse.is_dir():
        detail += f" (no wheel folder at {wheelhouse}: build it with scripts/gpu/wheelhouse.sh)"
    write_result(a.out, "imports", ok, dict(modules=len(MODULES), installed=",".join(installed) or "none"),
                 detail)


if __name__ == "__main__":
    main()
