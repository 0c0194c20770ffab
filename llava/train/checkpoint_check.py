"""Is a ``checkpoint-N`` folder complete enough to resume from? Which file is broken if not?

transformers writes ``trainer_state.json`` and the weight files in place, so a run killed while saving
can leave a checkpoint whose JSON is empty or truncated, whose weight index names a shard that was never
written, or an interrupted temp file of our atomic writes. Resuming from it fails on every rerun, although
the previous checkpoint is fine. :func:`checkpoint_problem` names the first broken file;
:func:`newest_complete_checkpoint` walks the checkpoints newest first and returns the first complete one.
Nothing here unpickles anything: JSON is parsed, other files are only checked to exist and be non-empty.

:func:`layout_problem` resolves a checkpoint the way resume will read it (DeepSpeed's ``latest`` tag, the
``global_step*`` folder, every file under it) without opening anything but ``latest``: the tag must be a
plain folder name inside the checkpoint, no entry may be a symlink, and every path's ``realpath`` stays
inside. Both the resume gate and ``python -m llava.train.checkpoint_trust`` use it, so they cannot disagree.
:func:`rotate_checkpoints` deletes old checkpoints only once the new one's manifest is written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger("llava.train")

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TEMP_SUFFIX = ".tmp"  # llava.utils.atomic's temp names end with it
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
MANIFEST = "llava_manifest.json"  # written last by our trainer (llava.train.checkpoint_trust)
# DeepSpeed's engine.load_checkpoint(dir, tag=None) reads the tag from one of these and opens dir/tag/...
LATEST_FILES = ("latest", "latest_universal")
PLAIN_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
DELETING_SUFFIX = ".deleting"  # a checkpoint being rotated away is renamed to this first


def read_tag(latest: Path) -> str:
    """The tag DeepSpeed takes from a ``latest`` file (its whole text, stripped)."""
    return latest.read_text(encoding="utf-8", errors="replace").strip()


def _outside(path: Path, root: str) -> bool:
    return not os.path.realpath(path).startswith(root + os.sep)


def layout_problem(folder: str | os.PathLike) -> str | None:
    """``None`` when every path resume reads stays inside ``folder``, else one line naming the path.

    Checks, in order, before any file but ``latest`` is opened: ``folder`` itself and no entry under it is
    a symlink, every entry's ``realpath`` is inside ``folder``'s, and each ``latest`` / ``latest_universal``
    names a plain folder name (no ``/``, no ``..``, not absolute) that is a folder here.
    """
    folder = Path(folder)
    if folder.is_symlink():
        return f"{folder} is a symlink (to {os.readlink(folder)}); a checkpoint folder must be a real folder"
    root = os.path.realpath(folder)
    for dirpath, dirnames, filenames in os.walk(folder):  # never follows symlinks
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            if path.is_symlink():
                return f"{path} is a symlink (to {os.readlink(path)}); a checkpoint holds none"
            if _outside(path, root):
                return f"{path} resolves outside {folder}"
    for name in LATEST_FILES:
        latest = folder / name
        if not latest.exists():
            continue
        if not latest.is_file():
            return f"{latest} is not a file"
        tag = read_tag(latest)
        if not PLAIN_TAG_RE.match(tag) or tag in (".", ".."):
            return f"{latest} names {tag!r}, not the plain name of a folder inside the checkpoint"
    return None


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
    tag = read_tag(latest)  # a plain name here: layout_problem ran first
    states = folder / tag
    if not tag or not states.is_dir():
        return f"latest names {tag!r}, which is not a folder here"
    if not any(p.name.endswith("model_states.pt") for p in states.iterdir()):
        return f"{tag}/ holds no *model_states.pt"
    return None


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """``None`` when ``folder`` looks complete, else one line naming the broken or missing file."""
    folder = Path(folder)
    if layout_problem(folder) is not None:
        return None  # not "incomplete" but crafted: the resume gate refuses it, naming the path
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
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8")).get("sha256", {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None  # the resume gate refuses it, naming the file
    for rel in sorted(listed):
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


def discard_deleting(output_dir: str | os.PathLike) -> None:
    """Finish deleting checkpoints a killed rotation had renamed to ``*.deleting``."""
    for name in sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else ():
        if name.endswith(DELETING_SUFFIX) and CHECKPOINT_RE.match(name[: -len(DELETING_SUFFIX)]):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def rotate_checkpoints(output_dir: str | os.PathLike, save_total_limit: int | None, newest: str,
                       best: str | None = None, step: int = 0) -> list[str]:
    """Delete the oldest complete checkpoints beyond ``save_total_limit``; returns the deleted paths.

    Runs after ``newest``'s manifest is written. Only checkpoints with a manifest count and are deleted:
    one without (a save in progress or interrupted) is never removed here. ``newest`` and ``best`` are kept.
    Each is renamed to ``*.deleting`` first (atomic), so a kill mid-delete leaves no half checkpoint.
    """
    from llava.train.save_hook import stop_if_asked

    discard_deleting(output_dir)
    if not save_total_limit or save_total_limit <= 0:
        return []
    complete = sorted((int(m.group(1)), os.path.join(output_dir, name)) for name in os.listdir(output_dir)
                      if (m := CHECKPOINT_RE.match(name)) and os.path.isfile(os.path.join(output_dir, name, MANIFEST)))
    keep = {os.path.realpath(p) for p in (newest, best) if p}
    excess = len(complete) - max(save_total_limit, len(keep))
    deleted = []
    for _, path in complete:
        if excess <= 0:
            break
        if os.path.realpath(path) in keep:
            continue
        doomed = path + DELETING_SUFFIX
        os.replace(path, doomed)
        stop_if_asked("rotation", step)
        shutil.rmtree(doomed)
        deleted.append(path)
        excess -= 1
    return deleted
