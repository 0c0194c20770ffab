"""Find truncated or unreadable images, write a JSONL report, optionally move them to a quarantine.

Symptom: a run dies hours in with ``OSError: image file is truncated`` or
``UnidentifiedImageError`` (an interrupted download, an HTML error page saved as ``.jpg``). This
command opens every image file under the given folders the way training does (full decode via
``llava.mm_utils.load_image``; ``--no_decode`` only runs PIL's ``verify()`` plus a JPEG end-marker
check: faster, less thorough) and writes one JSON line per bad file: ``{"path", "format", "error"}``.

    python -m patches.scan_images IMAGE_FOLDER [...] [--report bad_images.jsonl] [--workers N]
        [--quarantine DIR] [--dry-run | --apply]

The report is written in both modes. With ``--quarantine DIR`` and ``--apply`` the bad files are
moved into ``DIR`` (keeping their paths relative to the scanned folder), so nothing is deleted; the
dataset doctor or ``--skip_bad_samples True`` then handles the samples that used them. Exit code 1
while bad files remain in place.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from llava.data.doctor import inspect_image
from patches._common import atomic_write_bytes, iter_image_files, move_into


def scan(paths: list[Path], decode: bool = True, workers: int = 1) -> Iterator[tuple[Path, str | None, str | None]]:
    """``(path, format, error)`` for each path, in order; ``error`` is None for good files."""
    check = functools.partial(inspect_image, decode=decode)
    if workers <= 1:
        results = map(check, paths)
        for path, report in zip(paths, results):
            yield path, report.format, report.error
        return
    with multiprocessing.get_context().Pool(workers) as pool:
        for path, report in zip(paths, pool.imap(check, paths, chunksize=32)):
            yield path, report.format, report.error


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (1 while bad files remain in place)."""
    parser = argparse.ArgumentParser(prog="python -m patches.scan_images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="image folders (searched recursively) or single image files")
    parser.add_argument("--report", default="bad_images.jsonl", help="JSONL report of bad files (always written)")
    parser.add_argument("--quarantine", default=None, help="with --apply, move bad files into this folder")
    parser.add_argument("--no_decode", action="store_true", help="only PIL verify() (faster, less thorough)")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8), help="decoding processes")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", dest="apply", action="store_false", help="report only, move nothing (default)")
    mode.add_argument("--apply", dest="apply", action="store_true", help="move bad files to --quarantine")
    parser.set_defaults(apply=False)
    args = parser.parse_args(argv)
    if args.apply and args.quarantine is None:
        parser.error("--apply needs --quarantine DIR (the folder bad files are moved to); nothing is ever deleted")

    bad: list[tuple[str, Path, str | None, str]] = []
    total = 0
    for root in args.folders:
        if not Path(root).exists():
            print(f"error: {root}: no such file or folder", file=sys.stderr)
            return 1
        paths = list(iter_image_files(root, skip=args.quarantine))
        total += len(paths)
        results = scan(paths, decode=not args.no_decode, workers=max(1, args.workers))
        for path, fmt, error in tqdm(results, total=len(paths), desc=f"scanning {root}", unit="img"):
            if error is not None:
                bad.append((root, path, fmt, error))
    rows = [json.dumps({"path": str(path), "format": fmt, "error": error}) + "\n" for _, path, fmt, error in bad]
    atomic_write_bytes(args.report, "".join(rows).encode("utf-8"))
    remaining = 0
    for root, path, _fmt, error in bad:
        if args.apply:
            target = move_into(path, args.quarantine, root)
            print(f"{path}: {error} -> moved to {target}")
        else:
            remaining += 1
            where = f"would move to {args.quarantine}" if args.quarantine else "pass --quarantine DIR --apply to move"
            print(f"{path}: {error} ({where})")
    print(f"{total} image files scanned, {len(bad)} bad; report: {args.report}")
    return 1 if remaining else 0


if __name__ == "__main__":
    sys.exit(main())
