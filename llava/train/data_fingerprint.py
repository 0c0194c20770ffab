"""Resume sees the same data: each checkpoint records the training data file's SHA-256 (with its size and mtime
for a fast path), and a resume over a different file is a one-line error unless ``--allow_data_change True``.

The sampler's state in a checkpoint is a position in a permutation of sample indices; over an edited file those
indices point at other samples, so the run would continue silently on different data.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from llava.data.store import file_sha256
from llava.utils.atomic import atomic_write_json
from llava.utils.user_errors import fail

logger = logging.getLogger(__name__)
FINGERPRINT_FILE = "data_fingerprint.json"


def fingerprint(data_path: str, known_sha256: str | None = None) -> dict[str, Any]:
    """``{path, size, mtime_ns, sha256}`` of the data file (hashed once, streamed, unless the data store that was
    just opened for it already knows the hash)."""
    stat = os.stat(data_path)
    return dict(path=os.path.realpath(data_path), size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                sha256=known_sha256 or file_sha256(data_path))


def write_fingerprint(folder: str, record: dict[str, Any] | None) -> None:
    """Save ``record`` (from :func:`fingerprint`) into the checkpoint ``folder``; nothing when there is none."""
    if record is not None:
        atomic_write_json(os.path.join(folder, FINGERPRINT_FILE), record)


def same_file(saved: dict[str, Any], data_path: str) -> bool:
    """Whether ``data_path`` holds the bytes ``saved`` describes: same size and mtime, else same SHA-256."""
    stat = os.stat(data_path)
    if (stat.st_size, stat.st_mtime_ns) == (saved.get("size"), saved.get("mtime_ns")):
        return True
    return stat.st_size == saved.get("size") and file_sha256(data_path) == saved.get("sha256")


def check_same_data(checkpoint: str | None, data_args: Any) -> None:
    """Refuse (one line, exit 2) to resume from ``checkpoint`` over a data file other than the one it was trained
    on; ``--allow_data_change True`` turns the refusal into a warning. Checkpoints without a record pass."""
    if checkpoint is None:
        return
    path = os.path.join(checkpoint, FINGERPRINT_FILE)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    if same_file(saved, data_args.data_path):
        return
    message = (f"--data_path {data_args.data_path} is not the file {checkpoint} was trained on (sha256 "
               f"{str(saved.get('sha256'))[:12]}..., {saved.get('size')} bytes, was {saved.get('path')}): resuming "
               "would continue at sampler positions that now point at other samples")
    if not data_args.allow_data_change:
        fail(message + "; restore that file, start a new --output_dir, or pass --allow_data_change True")
    logger.warning("%s; continuing (--allow_data_change True)", message)
