"""Finding image files in a folder tree, the same way for every tool."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def find_image_files(root: str | os.PathLike, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Relative POSIX paths of the image files under ``root`` (recursive; hidden files and folders skipped)."""
    exts = {e.lower() for e in extensions}
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in exts:
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def image_inside_folder(image: str, folder: str | os.PathLike) -> bool:
    """Whether the data file's ``image`` path stays inside ``folder``: relative, no ``..`` climbing out, and
    no symlink inside the folder leading out of it (both sides resolved with ``realpath``; a folder that is
    itself a link, e.g. ``images -> /mnt/coco``, is fine). ``.`` and other relative folders work."""
    if os.path.isabs(image) or os.path.splitdrive(image)[0]:
        return False
    root = os.path.realpath(os.fspath(folder))
    joined = os.path.realpath(os.path.join(root, image))
    return joined == root or joined.startswith(root.rstrip(os.sep) + os.sep)
