"""The image set behind an embedding dataset: files under ``--images_dir``, category = first sub-folder.

Files are listed recursively in sorted relative-path order (hidden files and folders skipped, image
extensions only), so the same folder always gives the same row order; that order plus a fingerprint of
it is what lets an interrupted generation resume. Images directly in ``--images_dir`` get the category
``_root``. Unreadable or truncated files are returned as failures with their error, never dropped.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from llava.mm_utils import load_image
from llava.utils.image_files import IMAGE_EXTENSIONS, find_image_files

ROOT_CATEGORY = "_root"


@dataclass(frozen=True)
class ImageRecord:
    """One candidate image: path relative to ``--images_dir`` (POSIX form) and its category."""

    path: str
    category: str

    def as_dict(self) -> dict[str, str]:
        """JSON form used in the manifest."""
        return {"path": self.path, "category": self.category}


def category_of(rel_path: str) -> str:
    """First folder of a relative path, or ``_root`` for files directly in the images folder."""
    parts = PurePosixPath(rel_path).parts
    return parts[0] if len(parts) > 1 else ROOT_CATEGORY


def list_images(images_dir: str | os.PathLike) -> list[ImageRecord]:
    """All image files under ``images_dir`` in sorted relative-path order."""
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--images_dir {str(root)!r} is not a folder")
    found = find_image_files(root, IMAGE_EXTENSIONS)
    if not found:
        raise ValueError(
            f"--images_dir {str(root)!r} has no image files (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return [ImageRecord(p, category_of(p)) for p in sorted(found)]


def fingerprint(records: Sequence[ImageRecord]) -> str:
    """SHA-256 over the ordered (path, category) list: changes whenever the candidate list changes."""
    h = hashlib.sha256()
    for rec in records:
        h.update(f"{rec.path}\t{rec.category}\n".encode())
    return h.hexdigest()


def _try_load(path: Path) -> Image.Image | str:
    try:
        return load_image(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return f"{type(err).__name__}: {err}"


def load_batch(images_dir: str | os.PathLike, records: Sequence[ImageRecord],
               num_workers: int = 1) -> tuple[list[tuple[ImageRecord, Image.Image]], list[dict[str, str]]]:
    """Decode ``records`` (threads when ``num_workers > 1``, order kept).

    Returns ``(loaded, failed)``: ``loaded`` pairs each readable record with its RGB image; ``failed``
    holds ``{"path", "category", "error"}`` for every file that could not be read.
    """
    root = Path(images_dir)
    paths = [root / rec.path for rec in records]
    if num_workers > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            results = list(pool.map(_try_load, paths))
    else:
        results = [_try_load(p) for p in paths]
    loaded, failed = [], []
    for rec, res in zip(records, results):
        if isinstance(res, str):
            failed.append({**rec.as_dict(), "error": res})
        else:
            loaded.append((rec, res))
    return loaded, failed
