"""Make a base LLM's ``generation_config.json`` consistent so ``save_pretrained`` stops refusing it.

Symptom: training runs for hours, then saving fails with ``GenerationConfig is invalid: ...
`do_sample` is not set to `True`. However, `temperature` is set to ...``. The base LLM (Vicuna,
Llama-2 chat, ...) ships sampling values with ``do_sample`` false. This command applies the same
policy as the trainer's save-time fix (:func:`llava.utils.generation_config.sanitize_generation_config`):
greedy stays greedy, values that only matter in another decoding mode are unset.

    python -m patches.fix_generation_config MODEL_DIR_OR_JSON [...] [--dry-run | --apply] [--backup_dir DIR]

Only the keys that change are edited in the JSON file (removed when the new value is the library
default ``None``); every other key and the key order are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from transformers import GenerationConfig
from transformers.utils import logging as hf_logging

from llava.utils.generation_config import sanitize_generation_config
from patches._common import add_mode_args, atomic_write_bytes, backup_file

CONFIG_NAME = "generation_config.json"


class FixError(Exception):
    """A file this command cannot handle; the message says which and what to do."""


def resolve_config_path(path: str | Path) -> Path | None:
    """``path`` itself if it is a file, ``path/generation_config.json`` for a model folder, else None."""
    path = Path(path)
    if path.is_dir():
        candidate = path / CONFIG_NAME
        return candidate if candidate.is_file() else None
    if path.is_file():
        return path
    raise FixError(f"{path}: no such file or folder; pass a model folder or its {CONFIG_NAME}")


def plan_fix(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The fixed JSON dict and one line per change (empty when ``raw`` is already consistent)."""
    gen = GenerationConfig.from_dict(dict(raw))
    before = gen.to_dict()
    changes = sanitize_generation_config(gen)
    after = gen.to_dict()
    fixed = dict(raw)
    for key in sorted(set(before) | set(after)):
        if before.get(key) == after.get(key):
            continue
        if after.get(key) is None:
            fixed.pop(key, None)
        else:
            fixed[key] = after[key]
    return fixed, changes


def remaining_problems(raw: dict[str, Any]) -> str | None:
    """The strict validation error transformers would raise on save, or None when it saves fine."""
    try:
        GenerationConfig.from_dict(dict(raw)).validate(strict=True)
    except ValueError as err:
        return str(err)
    return None


def fix_file(config_path: Path, apply: bool, backup_dir: str | None) -> bool:
    """Report (and with ``apply`` fix) one file; returns True when the file is (or would be) consistent."""
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FixError(f"{config_path}: cannot read it as JSON ({err}); fix or delete the file") from None
    if not isinstance(raw, dict):
        raise FixError(f"{config_path}: expected a JSON object, found {type(raw).__name__}")
    fixed, changes = plan_fix(raw)
    if not changes:
        print(f"{config_path}: consistent, nothing to change")
        return remaining_problems(raw) is None
    verb = "changing" if apply else "would change"
    print(f"{config_path}: {verb} {len(changes)} value(s):")
    for line in changes:
        print(f"  - {line}")
    problem = remaining_problems(fixed)
    if problem is not None:
        print(f"  ! still invalid after the fix, edit by hand: {problem}")
    if apply:
        backup = backup_file(config_path, backup_dir, config_path.parent)
        atomic_write_bytes(config_path, (json.dumps(fixed, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        print(f"  wrote {config_path} (backup: {backup})")
    else:
        print("  (dry run: nothing written; rerun with --apply)")
    return problem is None


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (1 when a file could not be made consistent)."""
    parser = argparse.ArgumentParser(prog="python -m patches.fix_generation_config", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help=f"model folders or {CONFIG_NAME} files")
    add_mode_args(parser)
    args = parser.parse_args(argv)
    hf_logging.set_verbosity_error()  # from_dict warns about the very values we are about to fix
    ok = True
    for path in args.paths:
        try:
            config_path = resolve_config_path(path)
            if config_path is None:
                print(f"{path}: no {CONFIG_NAME}, nothing to change")
                continue
            ok &= fix_file(config_path, args.apply, args.backup_dir)
        except FixError as err:
            print(f"error: {err}", file=sys.stderr)
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
