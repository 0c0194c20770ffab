"""One run per output folder: ``llava_run.lock`` (pid, host, start time) in ``--output_dir``.

:func:`acquire_lock` creates it exclusively (``O_EXCL``). A lock held by a live process, or by any process
on another host (its liveness cannot be checked from here), is refused with :class:`OutputDirLockedError`
naming the holder and the lock file. A lock left by a dead process on this host (a killed run) is taken over
with a warning. :func:`release_lock` removes it at the end of the run, only if this process holds it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
from pathlib import Path

logger = logging.getLogger("llava.train")

LOCK_NAME = "llava_run.lock"


class OutputDirLockedError(RuntimeError):
    """Another run holds the output folder; the message is the one line to show."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _holder(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def _create(path: Path, record: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def acquire_lock(output_dir: str | os.PathLike) -> Path:
    """Take ``output_dir``'s lock for this process (taking over a dead one's); returns the lock's path."""
    os.makedirs(output_dir, exist_ok=True)
    path = Path(output_dir) / LOCK_NAME
    host = socket.gethostname()
    record = {"pid": os.getpid(), "host": host,
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    for _ in range(3):
        if _create(path, record):
            return path
        holder = _holder(path)
        if holder is not None and (holder.get("host") != host or _alive(holder["pid"])):
            where = "" if holder.get("host") == host else f" on host {holder.get('host')}"
            raise OutputDirLockedError(
                f"{output_dir} is in use by another run (pid {holder['pid']}{where}, started "
                f"{holder.get('started')}; lock file {path}): give this run its own --output_dir or wait for "
                f"that run to end" + ("" if not where else f"; if it is dead, delete {path}"))
        what = f"pid {holder['pid']}, started {holder.get('started')}" if holder else "unreadable"
        logger.warning("taking over the stale lock %s (%s: that process is gone)", path, what)
        try:
            path.unlink()
        except FileNotFoundError:
            pass  # another starter took it over first; try to create again
    raise OutputDirLockedError(f"{output_dir}: could not take the lock file {path}; another run keeps taking it")


def release_lock(path: Path | None) -> None:
    """Remove the lock at ``path`` if this process holds it."""
    if path is None:
        return
    holder = _holder(path)
    if holder is not None and holder["pid"] == os.getpid():
        path.unlink(missing_ok=True)
