"""Shared helpers of the GPU check's parts: results files, the device, the tiny models and data.

Each part is a script run by ``check.py`` in its own process (with its own time cap); it writes
``OUT/parts/<part>.json`` (``status``, ``numbers``, ``detail``) through :func:`write_result`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any


def part_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every part takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", required=True, help="the check's output folder")
    p.add_argument("--work", required=True, help="scratch folder shared by the parts (tiny models, data)")
    p.add_argument("--device", choices=("cuda", "cpu"), required=True)
    p.add_argument("--quick", action="store_true", help="tiny shapes, few steps")
    return p


def parse_part_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse a part's command line and make its output folder."""
    a = p.parse_args()
    (Path(a.out) / "logs").mkdir(parents=True, exist_ok=True)
    return a


def result_path(out: str | os.PathLike, part: str) -> Path:
    """Where a part writes its result."""
    return Path(out) / "parts" / f"{part}.json"


def finite_numbers(numbers: dict[str, Any]) -> bool:
    """True when every float in ``numbers`` is finite."""
    return all(math.isfinite(v) for v in numbers.values() if isinstance(v, float))


def write_result(out: str | os.PathLike, part: str, ok: bool, numbers: dict[str, Any], detail: str = "") -> None:
    """Record a part's outcome: ``pass`` when ``ok`` and its numbers are finite, else ``fail``."""
    status = "pass" if ok and finite_numbers(numbers) else "fail"
    path = result_path(out, part)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(part=part, status=status, numbers=numbers, detail=detail), indent=1))


def tiny_paths(work: str | os.PathLike) -> dict[str, str]:
    """The tiny CLIP tower and Llama (built on first use, once per check) under ``work``."""
    root = Path(work) / "tiny"
    done = root / "done"
    if not done.exists():
        from llava.testing.tiny_models import build_clip, build_llm

        build_clip(root / "clip")
        build_llm(root / "llama", "llama")
        done.write_text("ok\n")
    return dict(clip=str(root / "clip"), llama=str(root / "llama"))
