"""Convert images whose content format does not match their extension (GIF/PNG named ``.jpg`` ...).

Symptom: OCR-VQA and other scraped sets hold GIF or PNG data under ``.jpg`` names; some loaders,
image servers and format-sniffing tools then fail or pick the wrong decoder, and GIFs carry
palettes/animation frames. This command finds every image file under the given folders whose
header format differs from what its extension promises and, under ``--apply``, re-encodes it as
RGB in the extension's format (JPEG at quality 95 for ``.jpg``/``.jpeg``) under the same name.
Pixels are converted with ``Image.convert("RGB")`` (first frame for animations), exactly what
training's ``load_image`` feeds the model, so what the model sees does not change.

    python -m patches.fix_image_formats IMAGE_FOLDER [...] [--dry-run | --apply] [--backup_dir DIR]

Files PIL cannot identify are listed and left alone: use ``python -m patches.scan_images``.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image

from llava.data.doctor import expected_format
from patches._common import add_mode_args, atomic_write_bytes, backup_file, iter_image_files

_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def detect_format(path: str | Path) -> str | None:
    """The format PIL reads from the file header; raises PIL's errors for unidentifiable files."""
    with Image.open(path) as image:
        return image.format


def convert_bytes(path: str | Path, target_format: str) -> bytes:
    """The file re-encoded as RGB ``target_format`` (first frame of an animation)."""
    with Image.open(path) as image:
        image.seek(0)
        rgb = image.convert("RGB")
    buffer = io.BytesIO()
    options = {"quality": 95} if target_format in ("JPEG", "WEBP") else {}
    rgb.save(buffer, format=target_format, **options)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (1 when a conversion failed)."""
    parser = argparse.ArgumentParser(prog="python -m patches.fix_image_formats", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="image folders (searched recursively) or single image files")
    add_mode_args(parser)
    args = parser.parse_args(argv)
    scanned = mismatched = unreadable = failed = 0
    for root in args.folders:
        if not Path(root).exists():
            print(f"error: {root}: no such file or folder", file=sys.stderr)
            return 1
        for path in iter_image_files(root, skip=args.backup_dir):
            scanned += 1
            wanted = expected_format(path)
            try:
                actual = detect_format(path)
            except _READ_ERRORS as err:
                unreadable += 1
                print(f"{path}: unreadable ({type(err).__name__}: {err}); left alone, see patches.scan_images")
                continue
            if actual == wanted:
                continue
            mismatched += 1
            if not args.apply:
                print(f"{path}: {actual} data named like {wanted}; would convert to RGB {wanted}")
                continue
            try:
                data = convert_bytes(path, wanted)
            except _READ_ERRORS as err:
                failed += 1
                print(f"{path}: cannot convert {actual} -> {wanted} ({type(err).__name__}: {err}); left alone")
                continue
            backup = backup_file(path, args.backup_dir, root)
            atomic_write_bytes(path, data)
            print(f"{path}: converted {actual} -> RGB {wanted} (backup: {backup})")
    verb = "converted" if args.apply else "to convert (dry run; rerun with --apply)"
    print(f"{scanned} image files scanned: {mismatched - failed} {verb}, {unreadable} unreadable, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
