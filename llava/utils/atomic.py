"""Atomic writes: everything is written to a temporary name in the target's folder, then renamed.

A reader (or a resumed run) sees the old file or the complete new one, never a half-written
file. :func:`atomic_path` is the one primitive; the helpers below cover the common formats.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike, mode: int = 0o644, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` (a file or a folder).

    The caller writes a file (or creates a folder) at the yielded path. On an exception it is
    removed and ``path`` is untouched. Files get ``mode`` (mkstemp's 0600 would hide them).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, mode)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1, **kwargs: Any) -> None:
    """Write ``obj`` as JSON (plus a final newline) atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, **kwargs) + "\n")


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` atomically; through a file handle, so the archive's inner folder is always
    ``archive`` (saving to a path names it after the temp file) and equal tensors give equal bytes."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
