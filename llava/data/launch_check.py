"""Launch-time image checks: every sample's image is checked before any weights load, not at its first fetch.

For each sample with an ``image`` (structurally bad samples are the structure check's business): the path stays
inside ``--image_folder`` (``realpath`` on both sides, so a symlink leading out counts; refused unless
``--allow_absolute_image_paths``), the file exists, its header opens as an image (``unreadable_image``) and it has
at most ``--max_image_pixels`` pixels (``image_too_large``: a decompression bomb). Headers are read by a thread
pool (file I/O and PIL's header parsing; nothing is decoded) with a progress line; under a launcher every rank
reads its shard and the problems are gathered.

:func:`problems_summary` is the launch's error without ``--skip_bad_samples``: one line per category with its
count and the first few sample ids. With it, the dataset marks the samples skipped from the start.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from stat import S_ISREG
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from llava.mm_utils import check_pixel_count
from llava.utils.atomic import atomic_write_json
from llava.utils.image_files import image_inside_folder
from llava.utils.progress_line import ProgressLine

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # PIL's decompression-bomb warning limit (Image.MAX_IMAGE_PIXELS)
CHUNK = 256  # images per thread-pool task
FIRST_IDS = 3  # sample ids named per category in the launch error


@dataclass(frozen=True)
class LaunchProblem:
    """A sample the launch check found bad: its index, id, category, what is wrong, and the image path."""

    index: int
    sample_id: str
    category: str
    detail: str
    path: str


class HeaderCache:
    """Image files whose header passed, as ``path -> [size, mtime_ns]``: a relaunch (a resume) re-reads only the
    headers of files that changed since (``known``, from :func:`read_header_cache`); ``passed`` collects this
    launch's, for :func:`write_header_cache`. The folder check is never cached (links can change)."""

    def __init__(self, known: dict[str, list[int]] | None = None) -> None:
        self.known = known or {}
        self.passed: dict[str, list[int]] = {}

    def fresh(self, path: str, stat: os.stat_result) -> bool:
        """Whether ``path`` passed before and has the same size and mtime now."""
        return self.known.get(path) == [stat.st_size, stat.st_mtime_ns]


def image_problem(image: str, folder: str, max_pixels: int | None, allow_absolute: bool = False,
                  cache: HeaderCache | None = None) -> tuple[str, str] | None:
    """``(category, detail)`` of what is wrong with the sample image ``image`` under ``folder``, or None."""
    path = os.path.join(folder, image)
    if not allow_absolute and not image_inside_folder(image, folder):
        return ("image_outside_folder", f"'image': {image!r} resolves outside --image_folder {folder!r} "
                f"({os.path.realpath(path)}); make it relative to the folder, or pass --allow_absolute_image_paths "
                "True to accept such paths")
    try:
        stat = os.stat(path)  # one stat: existence, regular file, and the cache's size/mtime
    except OSError:
        stat = None
    if stat is None or not S_ISREG(stat.st_mode):
        return "missing_image", f"image file not found: {path} (image_folder={folder!r})"
    if cache is not None and cache.fresh(path, stat):
        cache.passed[path] = [stat.st_size, stat.st_mtime_ns]
        return None
    problem = _header_problem(path, max_pixels)
    if problem is None and cache is not None:
        cache.passed[path] = [stat.st_size, stat.st_mtime_ns]
    return problem


def _header_problem(path: str, max_pixels: int | None) -> tuple[str, str] | None:
    """What the header says is wrong: too many pixels (:func:`llava.mm_utils.check_pixel_count`, the limit the
    fetch applies too, or PIL's own bomb limit) or not an image."""
    try:
        with Image.open(path) as probe:
            check_pixel_count(probe.size, max_pixels)
    except Image.DecompressionBombError as err:
        return "image_too_large", f"{path}: {err}"
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as err:
        return "unreadable_image", f"cannot read image {path}: {type(err).__name__}: {err}"
    return None


def _sample_id(sample: dict[str, Any], index: int) -> str:
    return str(sample.get("id", f"#{index}"))


def _check_chunk(records: Sequence[Any], indices: list[int], folder: str, max_pixels: int | None,
                 allow_absolute: bool, cache: HeaderCache | None) -> list[LaunchProblem]:
    found = []
    for i in indices:
        sample = records[i]  # decoded once (a store decodes on every access)
        image = sample.get("image") if isinstance(sample, dict) else None
        if not isinstance(image, str) or not image:
            continue  # not one path: the structure check's business
        problem = image_problem(image, folder, max_pixels, allow_absolute, cache)
        if problem is not None:
            found.append(LaunchProblem(i, _sample_id(sample, i), *problem, os.path.join(folder, image)))
    return found


def image_indices(records: Sequence[Any]) -> list[int]:
    """Indices of the samples with an image (a store's ``has_image`` column, else a look at every sample)."""
    column = getattr(records, "has_image", None)
    if column is not None:
        return np.flatnonzero(np.asarray(column)).tolist()
    return [i for i, s in enumerate(records) if isinstance(s, dict) and s.get("image") is not None]


def check_images(records: Sequence[Any], folder: str, max_pixels: int | None, allow_absolute: bool = False,
                 workers: int = 8, report_every_s: float = 10.0,
                 shard: tuple[int, int] = (0, 1), cache: HeaderCache | None = None) -> list[LaunchProblem]:
    """Every image problem in ``records`` (by index), read by ``workers`` threads with a progress line (printed by
    shard 0). ``shard=(k, n)``: only every n-th image sample from the k-th (ranks split the work). ``cache``:
    headers that passed at an earlier launch and did not change are not read again."""
    k, n = shard
    todo = image_indices(records)[k::n]
    chunks = [todo[j:j + CHUNK] for j in range(0, len(todo), CHUNK)]
    label = "[launch] checking images" + (f" (rank 0's 1/{n} share)" if n > 1 else "")
    progress = ProgressLine(label, len(todo), report_every_s if k == 0 else float("inf"), unit="images")
    found: list[LaunchProblem] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for chunk, part in zip(chunks, pool.map(
                lambda c: _check_chunk(records, c, folder, max_pixels, allow_absolute, cache), chunks)):
            found.extend(part)
            progress.add(len(chunk))
    return sorted(found, key=lambda p: p.index)


def problems_summary(problems: Sequence[LaunchProblem], data_path: str) -> str:
    """The launch error: per category, its count, the first ids (with index) and the first detail; one line each."""
    by_category: dict[str, list[LaunchProblem]] = {}
    for p in problems:
        by_category.setdefault(p.category, []).append(p)
    lines = [f"{len(problems)} sample(s) in {data_path} have a bad image; fix them (python -m llava.data.doctor "
             "lists them all) or pass --skip_bad_samples True to skip and list them in skipped_samples.json"]
    for category, items in by_category.items():
        ids = ", ".join(f"{p.sample_id!r} (index {p.index})" for p in items[:FIRST_IDS])
        more = f" and {len(items) - FIRST_IDS} more" if len(items) > FIRST_IDS else ""
        lines.append(f"{category}: {len(items)} sample(s): {ids}{more}; first: {items[0].detail}")
    return "\n".join(lines)


def header_cache_key(folder: str, max_pixels: int | None, allow_absolute: bool) -> dict[str, Any]:
    """What a cached header result depends on besides the file itself."""
    return dict(format=1, folder=os.path.realpath(folder), max_pixels=max_pixels, allow_absolute=allow_absolute)


def read_header_cache(path: str, key: dict[str, Any]) -> dict[str, list[int]]:
    """The ``path -> [size, mtime_ns]`` entries of a header cache made for ``key``; empty when there is none, it is
    unreadable or it was made for another folder or limit."""
    try:
        with open(path, encoding="utf-8") as f:
            cached = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(cached, dict) or cached.get("key") != key or not isinstance(cached.get("files"), dict):
        return {}
    return cached["files"]


def write_header_cache(path: str, key: dict[str, Any], passed: dict[str, list[int]]) -> None:
    """Save the files whose header passed (atomically)."""
    atomic_write_json(path, dict(key=key, files=passed), indent=None)
