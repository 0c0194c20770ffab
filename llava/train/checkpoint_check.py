"""Is a ``checkpoint-N`` folder complete enough to resume from? Which file is broken if not?

transformers writes ``trainer_state.json`` and the weight files in place, so a run killed while saving
can leave a checkpoint whose JSON is empty or truncated, whose weight index names a shard that was never
written, or an interrupted temp file of our atomic writes. Resuming from it fails on every rerun, although
the previous checkpoint is fine. :func:`checkpoint_problem` names the first broken file;
:func:`newest_complete_checkpoint` walks the checkpoints newest first and returns the first complete one.
Nothing here unpickles anything: JSON is parsed, other files are only checked to exist and be non-empty.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

logger = logging.getLogger("llava.train")

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TEMP_SUFFIX = ".tmp"  # llava.utils.atomic's temp names end with it
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{path.name} does not parse as JSON ({type(err).__name__}: {err})"
    return None


def _index_problem(folder: Path, index: Path) -> str | None:
    """A ``*.index.json`` whose ``weight_map`` names a shard that is missing."""
    weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
    for shard in sorted(set(weight_map.values()) if isinstance(weight_map, dict) else ()):
        if not (folder / shard).is_file():
            return f"{index.name} names {shard}, which is missing"
    return None


def _deepspeed_problem(folder: Path) -> str | None:
    """DeepSpeed's ``latest`` file names a ``global_stepN`` folder that must exist and hold its states."""
    latest = folder / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text(encoding="utf-8", errors="replace").strip()
    states = folder / tag
    if not tag or not states.is_dir():
        return f"latest names {tag!r}, which is not a folder here"
    if not any(p.name.endswith("model_states.pt") for p in states.iterdir()):
        return f"{tag}/ holds no *model_states.pt"
    return None


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """``None`` when ``folder`` looks complete, else one line naming the broken or missing file."""
    folder = Path(folder)
    if not (folder / "trainer_state.json").is_file():
        return "trainer_state.json is missing (killed mid-save?)"
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.name.endswith(TEMP_SUFFIX) or path.name.startswith(".tmp"):
            return f"{rel} is a half-written temp file (killed mid-save?)"
        if not path.is_file():
            continue
        if path.suffix == ".json":
            problem = _json_problem(path)
            if problem is None and path.name.endswith(".index.json"):
                problem = _index_problem(path.parent, path)
            if problem is not None:
                return problem if path.parent == folder else f"{rel}: {problem}"
        elif path.suffix in WEIGHT_SUFFIXES and path.stat().st_size == 0:
            return f"{rel} is empty"
    return _deepspeed_problem(folder) or _manifest_problem(folder)


def _manifest_problem(folder: Path) -> str | None:
    """A file our trainer's manifest lists is missing (its digests are checked at resume, not here)."""
    from llava.train.checkpoint_trust import MANIFEST

    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None
    for rel in sorted(json.loads(manifest.read_text(encoding="utf-8")).get("sha256", {})):
        if not (folder / rel).is_file():
            return f"{rel} is missing (listed in {MANIFEST})"
    return None


def newest_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` in ``output_dir`` that passes :func:`checkpoint_problem`; warns per skip.

    When any checkpoint here carries ``llava_manifest.json`` (written last by our trainer), one without it
    is unfinished too. Foreign checkpoints (none has one) are returned as they are; resume then refuses
    them unless ``--trust_checkpoint True`` (:mod:`llava.train.checkpoint_trust`).
    """
    if not os.path.isdir(output_dir):
        return None
    from llava.train.checkpoint_trust import MANIFEST

    found = sorted(((int(m.group(1)), name) for name in os.listdir(output_dir)
                    if (m := CHECKPOINT_RE.match(name))), reverse=True)
    # our trainer writes the manifest last: once one checkpoint here has it, one without it is unfinished
    ours = any(os.path.isfile(os.path.join(output_dir, name, MANIFEST)) for _, name in found)
    for _, name in found:
        path = os.path.join(output_dir, name)
        problem = checkpoint_problem(path)
        if problem is None and ours and not os.path.isfile(os.path.join(path, MANIFEST)):
            problem = f"{MANIFEST} is missing (killed before the save finished?)"
        if problem is None:
            return path
        logger.warning("not resuming from %s: %s; trying the previous checkpoint", path, problem)
    return None
