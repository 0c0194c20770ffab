"""Disk full during a checkpoint save: one line naming the folder, free and needed bytes, and what is intact.

torch reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc] ... file write failed``
(saving to a path) or ``OSError: [Errno 28]`` (a file handle); :func:`check_disk_full` recognises both,
removes the unfinished checkpoint (it has no manifest, so resume would skip it anyway) and raises
:class:`DiskFullError` with the sizes and the newest complete checkpoint, which the save never touched.
"""

from __future__ import annotations

import errno
import os
import shutil

from llava.train.checkpoint_check import CHECKPOINT_RE, MANIFEST

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
TORCH_WRITE_FAILED = ("file write failed", "No space left on device", "iostream error", "unexpected pos")


class DiskFullError(OSError):
    """The disk filled up during a save; the message is the one line to show the user."""


def is_disk_full(err: BaseException, free: int, needed: int) -> bool:
    """True when ``err`` (or one it was raised from) is ENOSPC/EDQUOT, or torch's writer failing with
    less than ``needed`` bytes ``free`` (torch drops the errno: "file write failed", "iostream error")."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in FULL_ERRNOS:
            return True
        if isinstance(seen, RuntimeError) and free < needed and any(t in str(seen) for t in TORCH_WRITE_FAILED):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def folder_bytes(folder: str) -> int:
    """Total size of the regular files under ``folder``."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files
               if os.path.isfile(os.path.join(d, f)))


def newest_complete(run_dir: str, besides: str) -> str | None:
    """The newest ``checkpoint-N`` in ``run_dir`` with a manifest, other than ``besides``."""
    found = sorted((int(m.group(1)), name) for name in os.listdir(run_dir) if (m := CHECKPOINT_RE.match(name))
                   and os.path.isfile(os.path.join(run_dir, name, MANIFEST))
                   and os.path.realpath(os.path.join(run_dir, name)) != os.path.realpath(besides))
    return os.path.join(run_dir, found[-1][1]) if found else None


def check_disk_full(err: BaseException, folder: str, run_dir: str) -> None:
    """Raise :class:`DiskFullError` (one line) if ``err`` is a full disk while saving ``folder``; else return."""
    partial = folder_bytes(folder) if os.path.isdir(folder) else 0
    previous = newest_complete(run_dir, folder)
    needed = folder_bytes(previous) if previous else partial
    if not is_disk_full(err, shutil.disk_usage(run_dir).free, max(needed, 1 << 20)):
        return
    shutil.rmtree(folder, ignore_errors=True)  # unfinished (no manifest): frees what it took
    free = shutil.disk_usage(run_dir).free
    intact = (f"the previous checkpoint {previous} is intact (rerun after freeing space to resume from it)"
              if previous else "no earlier checkpoint exists (rerun after freeing space starts over)")
    raise DiskFullError(f"disk full while saving {folder}: {free} bytes free in {run_dir}, about {needed} "
                        f"needed (the size of one checkpoint); {intact}") from None
