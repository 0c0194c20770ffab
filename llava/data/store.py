"""A memory-mapped copy of the data file, one per node: what every rank and DataLoader worker reads.

A 665K-sample ``llava_v1_5_mix665k.json`` is 826 MB of JSON; ``json.load`` in every rank turns it into ~3.5 GB of
Python objects per process. :func:`open_store` converts the file once (keyed by its SHA-256) into a folder next to
the caches::

    <cache_dir>/<sha256>/samples.bin    every sample as compact UTF-8 JSON, end to end
                         offsets.npy    int64[n + 1]: sample i is samples.bin[offsets[i]:offsets[i + 1]]
                         words.npy      int32[n]: whitespace word count of the conversation values (upstream's length)
                         has_image.npy  bool[n]: the sample names an image
                         problem.npy    int8[n]: 0, or 1 + the category index of its first structural problem
                         meta.json      source path, size, mtime, SHA-256, n, format version (written last)

and returns a :class:`SampleStore`: a read-only ``Sequence`` whose ``store[i]`` decodes one sample from the
memory map (the OS page cache holds one copy for every process on the node). ``lengths`` and
``modality_lengths`` (what ``--group_by_modality_length`` reads) come from the columns without decoding a
sample. The conversion streams the file (one sample in memory at a time, for ``.json`` and ``.jsonl``), runs under
a file lock so concurrent ranks build it once, and is atomic (a temporary folder renamed into place). A data file
whose SHA-256 differs from every stored one gets a new store, with a message; size and mtime are a fast path
that skips hashing when they match the newest store built from the same path.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llava.data.dataset import (
    IMAGE_LENGTH_BONUS,
    DataFileError,
    _has_image,
    _parse_data_file,
    _word_count,
    problem_code,
)

logger = logging.getLogger(__name__)

FORMAT = 2  # 2: problem.npy
CHUNK = 1 << 22  # bytes read per step while streaming a .json list
_DECODER = json.JSONDecoder()
_NUMBER_TAIL = frozenset("0123456789.eE+-")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _stream_json_list(path: str, chunk: int = CHUNK) -> Iterator[Any]:
    """The elements of a top-level JSON list, decoded one at a time from text read in chunks.

    On any syntax problem the file is parsed the plain way, which raises :class:`DataFileError` with the line and
    column (errors are rare; the message stays the one users know).
    """
    with open(path, encoding="utf-8") as f:
        buf, pos, eof = f.read(chunk), 0, False

        def more() -> bool:
            nonlocal buf, pos, eof
            text = f.read(chunk)
            eof = not text
            buf, pos = buf[pos:] + text, 0
            return not eof

        def skip_space() -> None:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or not more():
                    return

        skip_space()
        if pos >= len(buf) or buf[pos] != "[":
            _parse_data_file(path)  # raises the canonical error (not JSON / not a list)
            raise DataFileError(f"{path} must hold a JSON list of samples")
        pos += 1
        skip_space()
        if pos < len(buf) and buf[pos] == "]":
            pos += 1
            skip_space()
            if pos < len(buf):
                _parse_data_file(path)
            return
        while True:
            while True:  # decode the next element; a value touching the buffer's end may be cut: read more
                try:
                    value, end = _DECODER.raw_decode(buf, pos)
                    if eof or (end < len(buf) and buf[end] not in _NUMBER_TAIL):  # "1.5" may go on as "1.5e3"
                        break
                except json.JSONDecodeError:
                    if eof:
                        _parse_data_file(path)
                        raise DataFileError(f"malformed JSON in {path}") from None
                more()
            pos = end
            yield value
            skip_space()
            if pos < len(buf) and buf[pos] == ",":
                pos += 1
                skip_space()
                continue
            if pos < len(buf) and buf[pos] == "]":
                pos += 1
                skip_space()
                if pos < len(buf):  # text after the list
                    _parse_data_file(path)
                    raise DataFileError(f"malformed JSON in {path}: text after the list")
                return
            _parse_data_file(path)
            raise DataFileError(f"malformed JSON in {path}")


def _records(path: str) -> Iterator[Any]:
    """The samples of a ``.jsonl`` or ``.json`` data file, streamed."""
    if not path.endswith(".jsonl"):
        yield from _stream_json_list(path)
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    _parse_data_file(path)  # raises with the line number
                    raise


def _build(path: str, sha: str, target: Path, progress_every: int = 100_000) -> None:
    """Write the store for ``path`` into ``target`` (atomically: a temporary sibling folder renamed)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}.", dir=target.parent))
    offsets, words, images, problems, at, start = [0], [], [], [], 0, time.monotonic()
    try:
        with open(tmp / "samples.bin", "wb") as out:
            for n, sample in enumerate(_records(path), start=1):
                raw = json.dumps(sample, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
                out.write(raw)
                at += len(raw)
                offsets.append(at)
                words.append(_word_count(sample))
                images.append(_has_image(sample))
                problems.append(problem_code(sample))
                if n % progress_every == 0:
                    rate = n / max(time.monotonic() - start, 1e-9)
                    logger.info("data store: %d samples converted (%.0f/s)", n, rate)
            out.flush()
            os.fsync(out.fileno())
        np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        np.save(tmp / "words.npy", np.asarray(words, dtype=np.int32))
        np.save(tmp / "has_image.npy", np.asarray(images, dtype=bool))
        np.save(tmp / "problem.npy", np.asarray(problems, dtype=np.int8))
        stat = os.stat(path)
        meta = dict(format=FORMAT, source=os.path.realpath(path), size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                    sha256=sha, n=len(words))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fast_path_sha(path: str, cache_dir: Path) -> str | None:
    """The SHA-256 recorded by a store built from this very file (same real path, size and mtime), else None."""
    stat, real = os.stat(path), os.path.realpath(path)
    for meta_path in cache_dir.glob("*/meta.json"):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (meta.get("format"), meta.get("source"), meta.get("size"), meta.get("mtime_ns")) == (
                FORMAT, real, stat.st_size, stat.st_mtime_ns):
            return str(meta.get("sha256"))
    return None


def _had_store_for(path: str, cache_dir: Path) -> bool:
    real = os.path.realpath(path)
    for meta_path in cache_dir.glob("*/meta.json"):
        try:
            if json.loads(meta_path.read_text()).get("source") == real:
                return True
        except (OSError, json.JSONDecodeError):
            continue
    return False


def _complete(target: Path) -> bool:
    """A finished store of this format (meta.json is written last)."""
    try:
        return json.loads((target / "meta.json").read_text()).get("format") == FORMAT
    except (OSError, json.JSONDecodeError):
        return False


def open_store(data_path: str, cache_dir: str | os.PathLike[str]) -> SampleStore:
    """The store of ``data_path`` under ``cache_dir``, converting the file first when no store matches it."""
    if not data_path or not os.path.isfile(data_path):
        raise DataFileError(f"data file not found: {data_path!r}; pass an existing LLaVA-format JSON via --data_path")
    root = Path(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    sha = _fast_path_sha(data_path, root) or file_sha256(data_path)
    target = root / sha
    with open(root / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others wait and then open what it wrote
        try:
            if not _complete(target):
                if target.exists():  # an incomplete folder (no meta.json): never trusted
                    shutil.rmtree(target)
                if _had_store_for(data_path, root):
                    logger.warning("data store: %s changed (SHA-256 %s...); converting it again", data_path, sha[:12])
                logger.info("data store: converting %s once into %s", data_path, target)
                _build(data_path, sha, target)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return SampleStore(target)


class SampleStore(Sequence):
    """Read-only samples of one stored data file; ``store[i]`` is ``json.loads`` of sample i's bytes."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        if self.meta.get("format") != FORMAT:
            raise DataFileError(f"{self.folder} is a data store of another format; delete it to rebuild")
        self.offsets = np.load(self.folder / "offsets.npy", mmap_mode="r")
        self.words = np.load(self.folder / "words.npy", mmap_mode="r")
        self.has_image = np.load(self.folder / "has_image.npy", mmap_mode="r")
        self.problem_codes = np.load(self.folder / "problem.npy", mmap_mode="r")
        size = int(self.offsets[-1])
        data = self.folder / "samples.bin"
        self._bytes = np.memmap(data, dtype=np.uint8, mode="r") if data.stat().st_size else np.zeros(0, np.uint8)
        n = int(self.meta["n"])
        if (len(self.offsets), len(self.words), len(self.has_image), len(self.problem_codes),
                len(self._bytes)) != (n + 1, n, n, n, size):
            raise DataFileError(f"{self.folder} is truncated (delete it to rebuild)")

    @property
    def sha256(self) -> str:
        """The SHA-256 of the data file this store holds."""
        return str(self.meta["sha256"])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample index {i} out of range for {n} samples")
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return json.loads(self._bytes[lo:hi].tobytes().decode("utf-8"))

    def lengths(self) -> list[int]:
        """Upstream's ``lengths``: word count, +128 for samples with an image."""
        return (np.asarray(self.words, dtype=np.int64) + IMAGE_LENGTH_BONUS * np.asarray(self.has_image)).tolist()

    def modality_lengths(self) -> list[int]:
        """Upstream's ``modality_lengths``: word count (at least 1), negative for text-only samples."""
        words = np.maximum(np.asarray(self.words, dtype=np.int64), 1)
        return np.where(np.asarray(self.has_image), words, -words).tolist()
