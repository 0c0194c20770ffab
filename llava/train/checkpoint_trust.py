"""No code from checkpoints: digests written at save, verified (plus a restricted unpickle) before resume.

On resume DeepSpeed unpickles ``global_stepN/*.pt`` with ``torch.load(weights_only=False)`` (0.19's
``TorchCheckpointEngine`` has no switch for it), so a crafted file in an output folder would run its payload.
Two guards run before anything reads a checkpoint:

- **Manifest.** Every checkpoint our trainer saves gets ``llava_manifest.json``: the SHA-256 of every file
  in it, written last (atomically). Before resuming, the digests must match and no pickle file may be
  unlisted; a checkpoint without a manifest (not ours, or from before this check) is refused.
- **Restricted unpickle.** Every pickle file the resume will read is first loaded with
  ``torch.load(weights_only=True)``, allowing only tensors, containers, the numpy types transformers allows
  for its RNG state, and DeepSpeed's three plain-data classes (loss scaler, ZeRO stage enum, fragment address).
  A file that needs anything else is refused, naming the file: such a file can run code. A file that passes
  holds only those objects, so DeepSpeed's full unpickle of the same bytes runs none.

- **Layout.** Before any of that, the checkpoint is resolved the way resume reads it
  (:func:`llava.train.checkpoint_check.layout_problem`): DeepSpeed's ``latest`` tag is a plain folder name
  inside the checkpoint, nothing in it is a symlink, every path's ``realpath`` stays inside. Every file in
  the folder (``latest`` and the JSON files resume reads too, not only the pickles) must be in the manifest.
  ``trainer_state.json``'s ``best_model_checkpoint`` (loaded at the end with ``--load_best_model_at_end``)
  must be a sibling ``checkpoint-N``, which passes the same check.

``--trust_checkpoint True`` skips all of it, deliberately, with a warning. CLI:
``python -m llava.train.checkpoint_trust DIR`` verifies a checkpoint folder, or, given an output folder,
the checkpoint automatic resume would pick (same functions as resume; exit 0 good, 1 refused).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pickle
import sys
from pathlib import Path
from typing import Any

from llava.train.checkpoint_check import CHECKPOINT_RE, MANIFEST, layout_problem, newest_complete_checkpoint
from llava.utils.atomic import atomic_path

logger = logging.getLogger("llava.train")

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle")
NOT_READ_ON_RESUME = frozenset({"training_args.bin"})  # pickled TrainingArguments; resume never loads it
CONVERTER_SCRIPTS = ("zero_to_fp32.py", "zero_to_torch.py")  # DeepSpeed copies these into each checkpoint
CONVERTER_WARNING = (
    "# WARNING (llava-beyond): DeepSpeed copied this converter into the checkpoint. It unpickles the\n"
    "# checkpoint's files with torch.load(weights_only=False), which runs any code a crafted file holds:\n"
    "# run it only on checkpoints you trust. First: python -m llava.train.checkpoint_trust <this folder>\n"
)


class UntrustedCheckpointError(ValueError):
    """A checkpoint that must not be unpickled: digest mismatch, unlisted file, or a disallowed global."""


def file_digest(path: Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def mark_converter_scripts(folder: str | os.PathLike) -> None:
    """Put :data:`CONVERTER_WARNING` at the top of DeepSpeed's copied converter scripts (once)."""
    for name in CONVERTER_SCRIPTS:
        path = Path(folder) / name
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            if CONVERTER_WARNING not in text:
                shebang, rest = (text.split("\n", 1) + [""])[:2] if text.startswith("#!") else ("", text)
                path.write_text((shebang + "\n" if shebang else "") + CONVERTER_WARNING + rest, encoding="utf-8")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: str | os.PathLike, step: int | None = None) -> Path:
    """Write ``llava_manifest.json`` (relative path -> SHA-256) for every file in ``folder``; returns its path.

    Every file is fsync'd first and the folder after the manifest's atomic rename: once the manifest
    exists, the checkpoint is on disk (only then may rotation delete an older one).
    """
    from llava.train.save_hook import stop_if_asked

    folder = Path(folder)
    digests = {}
    for p in _files(folder):
        _fsync(p)
        digests[p.relative_to(folder).as_posix()] = file_digest(p)
    path = folder / MANIFEST
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"format": 1, "sha256": digests}, indent=1) + "\n", encoding="utf-8")
        if step is not None:
            stop_if_asked("manifest", step)
    _fsync(folder)
    return path


def _allowed_globals() -> list[Any]:
    """DeepSpeed's plain-data classes (transformers' ``safe_globals`` adds the numpy ones)."""
    import importlib

    allowed: list[Any] = []

    for module, name in (("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
                         ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
                         ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
                         ("deepspeed.utils.tensor_fragment", "fragment_address")):
        try:
            allowed.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue  # DeepSpeed absent or renamed: files that need it are refused
    return allowed


def restricted_load_problem(path: Path) -> str | None:
    """``None`` if ``path`` unpickles with ``weights_only=True`` and :func:`_allowed_globals`, else why not."""
    import torch
    from transformers.trainer_pt_utils import safe_globals

    try:
        with safe_globals(), torch.serialization.safe_globals(_allowed_globals()):
            torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError) as err:
        lines = [x.strip() for x in str(err).splitlines() if "GLOBAL" in x or "Unsupported" in x]
        return lines[0] if lines else f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


def _listed(folder: Path, how: str) -> dict[str, str]:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise UntrustedCheckpointError(
            f"{folder} has no {MANIFEST}: not saved by llava-beyond's trainer, or its save was interrupted (then "
            f"delete that folder to resume from an earlier checkpoint or restart); {how}")
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8")).get("sha256")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise UntrustedCheckpointError(f"{manifest} does not parse ({type(err).__name__}); {how}") from None
    if not isinstance(listed, dict):
        raise UntrustedCheckpointError(f"{manifest} has no sha256 table; {how}")
    return listed


def _check_best(folder: Path, how: str) -> None:
    """``best_model_checkpoint`` in ``trainer_state.json`` must be a sibling checkpoint that passes too."""
    state_file = folder / "trainer_state.json"
    if not state_file.is_file():
        return
    try:
        best = json.loads(state_file.read_text(encoding="utf-8")).get("best_model_checkpoint")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return  # checkpoint_check names it as broken; it is digested like every other file
    if best is None:
        return
    sibling = isinstance(best, str) and CHECKPOINT_RE.match(os.path.basename(os.path.normpath(best)))
    if not sibling or os.path.realpath(os.path.dirname(os.path.normpath(best))) != os.path.realpath(folder.parent):
        raise UntrustedCheckpointError(f"{state_file} names best_model_checkpoint {best!r}, which is not a "
                                       f"checkpoint-N beside {folder}; {how}")
    best_path = folder.parent / os.path.basename(os.path.normpath(best))
    if best_path.exists() and best_path.resolve() != folder.resolve():
        verify_checkpoint(best_path, _nested=True)


def verify_checkpoint(folder: str | os.PathLike, trust: bool = False, _nested: bool = False) -> None:
    """Raise :class:`UntrustedCheckpointError` unless ``folder`` is safe to resume from (see module doc)."""
    folder = Path(folder)
    if trust:
        logger.warning("--trust_checkpoint True: resuming from %s without checking its files (they are "
                       "unpickled as they are)", folder)
        return
    how = "pass --trust_checkpoint True only if you made this checkpoint yourself"
    if (problem := layout_problem(folder)) is not None:
        raise UntrustedCheckpointError(f"{problem}; {how}")
    listed = _listed(folder, how)
    for rel, digest in sorted(listed.items()):
        path = folder / rel
        if os.path.isabs(rel) or ".." in Path(rel).parts:
            raise UntrustedCheckpointError(f"{folder / MANIFEST} lists {rel!r}, a path outside the checkpoint; {how}")
        if not path.is_file():
            raise UntrustedCheckpointError(f"{path} is listed in {MANIFEST} but missing; {how}")
        if file_digest(path) != digest:
            raise UntrustedCheckpointError(f"{path} does not match its SHA-256 in {MANIFEST} (changed since "
                                           f"it was saved); {how}")
    for path in _files(folder):
        if path.relative_to(folder).as_posix() not in listed:
            raise UntrustedCheckpointError(f"{path} is not in {MANIFEST} (added after the save); {how}")
    for path in _files(folder):
        if path.suffix in PICKLE_SUFFIXES and path.name not in NOT_READ_ON_RESUME:
            if (problem := restricted_load_problem(path)) is not None:
                raise UntrustedCheckpointError(f"{path} needs more than tensors and plain data to unpickle "
                                               f"({problem}): it could run code; {how}")
    if not _nested:
        _check_best(folder, how)


def resume_target(folder: str | os.PathLike) -> str | None:
    """``folder`` if it is a checkpoint, else the checkpoint automatic resume would pick in it (or None)."""
    if CHECKPOINT_RE.match(Path(folder).name) or (Path(folder) / MANIFEST).exists():
        return str(folder)
    return newest_complete_checkpoint(folder)


def main(argv: list[str] | None = None) -> int:
    """CLI: verify one checkpoint folder, or the one automatic resume would pick in an output folder."""
    parser = argparse.ArgumentParser(description="Verify a checkpoint folder before unpickling anything in it.")
    parser.add_argument("folder", help="a checkpoint-N folder, or an --output_dir (its resume checkpoint)")
    args = parser.parse_args(argv)
    target = resume_target(args.folder)
    if target is None:
        print(f"refused: {args.folder} holds no checkpoint-N to resume from", file=sys.stderr)
        return 1
    try:
        verify_checkpoint(target)
    except UntrustedCheckpointError as err:
        print(f"refused: {err}", file=sys.stderr)
        return 1
    print(f"ok: {target} matches its {MANIFEST} and holds only tensors and plain data")
    return 0


if __name__ == "__main__":
    sys.exit(main())
