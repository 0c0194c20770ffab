"""Shared plumbing for the fix-up commands: dry-run/apply flags, backups, atomic writes, image walks."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from llava.data.doctor import EXTENSION_FORMATS

__all__ = ["EXTENSION_FORMATS", "add_mode_args", "atomic_write_bytes", "backup_file", "iter_image_files",
           "move_into"]


def add_mode_args(parser: argparse.ArgumentParser) -> None:
    """``--dry-run`` (default) / ``--apply`` and ``--backup_dir``."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run", dest="apply", action="store_false", help="print what would change, change nothing (default)"
    )
    mode.add_argument("--apply", dest="apply", action="store_true", help="make the changes (with backups)")
    parser.set_defaults(apply=False)
    parser.add_argument(
        "--backup_dir",
        default=None,
        help="where backups of rewritten files go (mirroring their paths); default: '<file>.bak' beside each",
    )


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temp file in the same folder, fsync it, then ``os.replace`` it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _relative(path: Path, root: str | os.PathLike | None) -> Path:
    """``path`` relative to ``root`` (a folder, or a file whose folder is used), else its bare name."""
    if root is None:
        return Path(path.name)
    base = Path(root).resolve()
    if base.is_file():
        base = base.parent
    try:
        return path.resolve().relative_to(base)
    except ValueError:
        return Path(path.name)


def _free_name(path: Path) -> Path:
    if not path.exists():
        return path
    k = 1
    while path.with_name(f"{path.name}.{k}").exists():
        k += 1
    return path.with_name(f"{path.name}.{k}")


def backup_file(path: str | os.PathLike, backup_dir: str | os.PathLike | None, root: str | os.PathLike | None = None
                ) -> Path:
    """Copy ``path`` to its backup location and return it; never overwrites an earlier backup.

    Without ``backup_dir`` the copy is ``<file>.bak`` beside the file. With it, the file's path
    relative to ``root`` (or its bare name when it is not under ``root``) is mirrored inside
    ``backup_dir``. An existing backup gets a numbered sibling (``.bak.1``, ...).
    """
    path = Path(path)
    if backup_dir is None:
        target = path.with_name(path.name + ".bak")
    else:
        target = Path(backup_dir) / _relative(path, root)
        target.parent.mkdir(parents=True, exist_ok=True)
    target = _free_name(target)
    shutil.copy2(path, target)
    return target


def move_into(path: str | os.PathLike, dest_dir: str | os.PathLike, root: str | os.PathLike) -> Path:
    """Move ``path`` into ``dest_dir`` keeping its path relative to ``root``; returns the new path."""
    path = Path(path)
    target = _free_name(Path(dest_dir) / _relative(path, root))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(target))
    return target


def iter_image_files(root: str | os.PathLike, skip: str | os.PathLike | None = None) -> Iterator[Path]:
    """Files under ``root`` (or ``root`` itself) with an image extension, in sorted order.

    ``skip`` is a folder not to descend into (the quarantine or backup folder).
    """
    root = Path(root)
    if root.is_file():
        if root.suffix.lower() in EXTENSION_FORMATS:
            yield root
        return
    skip_resolved = Path(skip).resolve() if skip is not None else None
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if skip_resolved is not None:
            dirnames[:] = [d for d in dirnames if (Path(dirpath) / d).resolve() != skip_resolved]
        for name in sorted(filenames):
            if Path(name).suffix.lower() in EXTENSION_FORMATS:
                yield Path(dirpath) / name
