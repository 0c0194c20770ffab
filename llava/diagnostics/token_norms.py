"""Token-norm diagnostic: L2 norms of vision tokens along the vision pipeline versus the text-token embeddings.

    python -m llava.diagnostics.token_norms --model-path CKPT [--model-base BASE] --image-folder DIR \\
        [--output-dir .] [--max-images 64] [--batch-size 8] [--mm-addon-modules MOD[,MOD]] [--device cpu]

Images are taken from ``--image-folder`` recursively, in sorted relative-path order (hidden files and
folders skipped, common image extensions only), at most ``--max-images`` of them, and preprocessed
exactly as the evaluation scripts do (:func:`llava.mm_utils.process_images`, which follows the model's
``image_aspect_ratio``). Each image goes through ``model.encode_image_blocks_with_aux`` and four kinds
of per-token L2 norms (computed in float32) are collected:

* ``tower``: rows of the projector input x (tower features after the add-ons' tower / pre-projector
  stages),
* ``projector``: rows of the raw projector output P1(x),
* ``llm_input``: rows of the image blocks that replace ``<image>`` in the LLM input (after
  normalization, compression, interleave, registers), real image-feature tokens only
  (``layout.is_feature``),
* ``text_embeddings``: rows of ``model.get_input_embeddings().weight`` (one per vocabulary entry).

Outputs in ``--output-dir``: ``token_norms.csv`` with columns ``kind,n,mean,median,p95,max`` (one row
per kind in the order above) and ``token_norms.png`` (one histogram row per kind on a shared log10
norm axis, with mean, median and p95 marked; zero norms sit at the axis's left end). ``median`` is
``torch.quantile(norms, 0.5)`` and ``p95`` is ``torch.quantile(norms, 0.95)``, both with linear
interpolation between order statistics (an equivalent sort-based computation is used above
torch.quantile's input-size limit). The CSV table is also printed to stdout. This is the picture
that motivates ``--normalize_projector``: projected image tokens usually have far larger norms than
the text embeddings they sit next to.

:func:`token_norm_stats` and :func:`summarize` are the library entry points (tests, notebooks).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from llava.mm_utils import background_color_for, load_image, process_images
from llava.utils.atomic import atomic_path, atomic_write_text
from llava.utils.image_files import IMAGE_EXTENSIONS, find_image_files

KINDS = ("tower", "projector", "llm_input", "text_embeddings")
CSV_COLUMNS = ("kind", "n", "mean", "median", "p95", "max")
CSV_NAME = "token_norms.csv"
PNG_NAME = "token_norms.png"
PROJECTOR_FILE = "mm_projector.bin"  # the file names llava.model.builder.detect_checkpoint_kind looks at
FULL_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json")
QUANTILE_MAX_NUMEL = 2**24  # torch.quantile refuses larger inputs
COLOURS = {"tower": (44, 160, 44), "projector": (255, 127, 14), "llm_input": (148, 103, 189),
           "text_embeddings": (31, 119, 180)}
MARKS = (("mean", (214, 39, 40)), ("median", (0, 0, 0)), ("p95", (23, 190, 207)))


class InputError(ValueError):
    """A problem with the command-line inputs; the CLI reports it as one line and exits with code 2."""


# ----------------------------------------------------------------------------------------------- inputs


def list_images(folder: str | os.PathLike, max_images: int | None = None) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted relative paths, no hidden entries), at most ``max_images``."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"--image-folder {str(root)!r} is not a folder; pass a folder that holds image files")
    found = find_image_files(root, IMAGE_EXTENSIONS)
    if not found:
        raise InputError(f"--image-folder {str(root)!r} has no image files (extensions: "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))}); put some images there or pick another folder")
    paths = [root / p for p in sorted(found)]
    return paths if max_images is None else paths[:max_images]


def iter_pixel_batches(paths: Sequence[Path], image_processor: Any, model_config: Any,
                       batch_size: int) -> Iterator[torch.Tensor]:
    """(B, 3, H, W) tensors for ``paths`` in order, preprocessed like evaluation (``image_aspect_ratio`` respected)."""
    for start in range(0, len(paths), batch_size):
        images = []
        for path in paths[start:start + batch_size]:
            try:
                images.append(load_image(path, background_color_for(image_processor)))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                raise InputError(f"cannot read image {str(path)!r} ({type(err).__name__}: {err}); "
                                 "remove or replace the file") from None
        yield process_images(images, image_processor, model_config)


# --------------------------------------------------------------------------------------------- statistics


def row_norms(t: torch.Tensor) -> torch.Tensor:
    """Float32 L2 norm of every row (last dimension) of ``t``, flattened, on the CPU."""
    return t.detach().float().reshape(-1, t.shape[-1]).norm(dim=-1).cpu()


def token_norm_stats(model: Any, pixel_batches: Iterable[torch.Tensor],
                     progress: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """Per-token L2 norms (float32, concatenated over batches) for each of :data:`KINDS`.

    ``pixel_batches`` yields preprocessed ``(B, 3, H, W)`` image tensors; ``progress`` (optional) is
    called with the number of images after each batch.
    """
    tower = model.get_vision_tower()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in KINDS[:3]}
    with torch.inference_mode():
        for images in pixel_batches:
            images = images.to(device=tower.device, dtype=tower.dtype)
            blocks, layout, x, p1 = model.encode_image_blocks_with_aux(images)
            parts["tower"].append(row_norms(x))
            parts["projector"].append(row_norms(p1))
            keep = layout.is_feature.to(blocks.device).bool()
            parts["llm_input"].append(row_norms(blocks[:, keep]))
            if progress is not None:
                progress(int(images.shape[0]))
        text = row_norms(model.get_input_embeddings().weight)
    norms = {k: torch.cat(v) if v else torch.empty(0) for k, v in parts.items()}
    norms["text_embeddings"] = text
    return norms


def quantile(norms: torch.Tensor, q: float) -> float:
    """``torch.quantile(norms, q)`` (linear interpolation), also for inputs above its size limit."""
    v = norms.detach().float().flatten()
    if v.numel() <= QUANTILE_MAX_NUMEL:
        return float(torch.quantile(v, q))
    s = torch.sort(v).values
    pos = q * (s.numel() - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def summarize(norms: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """One ``{kind, n, mean, median, p95, max}`` dict per kind (order of :data:`KINDS` first, then any others)."""
    rows = []
    for kind in [k for k in KINDS if k in norms] + [k for k in norms if k not in KINDS]:
        v = norms[kind].detach().float().flatten()
        if v.numel() == 0:
            rows.append({"kind": kind, "n": 0, "mean": math.nan, "median": math.nan, "p95": math.nan,
                         "max": math.nan})
            continue
        rows.append({"kind": kind, "n": int(v.numel()), "mean": float(v.double().mean()),
                     "median": quantile(v, 0.5), "p95": quantile(v, 0.95), "max": float(v.max())})
    return rows


def format_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The CSV text for :func:`summarize`'s rows (floats with 8 significant digits)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([row["kind"], row["n"], *(f"{row[c]:.8g}" for c in CSV_COLUMNS[2:])])
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------- plot


def _log_range(norms: dict[str, torch.Tensor]) -> tuple[float, float]:
    """Whole decades of log10 norm covering every positive norm (at least one decade wide)."""
    positive = [v[v > 0] for v in norms.values()]
    positive = [v for v in positive if v.numel()]
    if not positive:
        return -1.0, 1.0
    lo = math.floor(min(math.log10(float(v.min())) for v in positive))
    hi = math.ceil(max(math.log10(float(v.max())) for v in positive))
    return float(lo), float(max(hi, lo + 1))


def _draw_axis(draw: ImageDraw.ImageDraw, x_of: Callable[[float], float], lo: float, hi: float,
               y: int, top: int) -> None:
    draw.line((x_of(lo), y, x_of(hi), y), fill="black")
    minor = (1, 2, 5) if hi - lo <= 4 else (1,)
    for decade in range(int(lo), int(hi) + 1):
        for m in minor:
            t = decade + math.log10(m)
            if t > hi + 1e-9:
                continue
            x = x_of(t)
            draw.line((x, top, x, y), fill=(225, 225, 225) if m == 1 else (242, 242, 242))
            draw.line((x, y, x, y + (6 if m == 1 else 3)), fill="black")
            draw.text((x - 10, y + 8), f"{m * 10.0 ** decade:g}", fill="black")


def _draw_row(draw: ImageDraw.ImageDraw, x_of: Callable[[float], float], lo: float, hi: float,
              box: tuple[int, int, int, int], v: torch.Tensor, row: dict[str, Any], bins: int = 80) -> None:
    _, top, _, bottom = box
    colour = COLOURS.get(row["kind"], (120, 120, 120))
    draw.text((8, top + 8), row["kind"], fill="black")
    draw.text((8, top + 24), f"n={row['n']}", fill=(80, 80, 80))
    if row["n"]:
        draw.text((8, top + 40), f"mean {row['mean']:.4g}", fill=MARKS[0][1])
        draw.text((8, top + 56), f"p95 {row['p95']:.4g}", fill=(80, 80, 80))
    draw.rectangle((x_of(lo), top + 4, x_of(hi), bottom - 4), outline=(200, 200, 200))
    if v.numel() == 0:
        draw.text((x_of(lo) + 8, top + 20), "no tokens", fill=(80, 80, 80))
        return
    logs = v.float().clamp_min(10.0 ** lo).log10()
    counts = torch.histc(logs, bins=bins, min=lo, max=hi)
    peak = float(counts.max()) or 1.0
    width = (hi - lo) / bins
    for i, c in enumerate(counts.tolist()):
        if c > 0:
            height = max(1.0, (bottom - top - 12) * c / peak)
            draw.rectangle((x_of(lo + i * width), bottom - 5 - height, x_of(lo + (i + 1) * width), bottom - 5),
                           fill=tuple(int(0.45 * ch + 0.55 * 255) for ch in colour), outline=colour)
    for name, mark_colour in MARKS:
        value = row[name]
        if value > 0:
            x = x_of(min(max(math.log10(value), lo), hi))
            draw.line((x, top + 4, x, bottom - 4), fill=mark_colour, width=3 if name == "mean" else 1)


def plot_norms(norms: dict[str, torch.Tensor], rows: Sequence[dict[str, Any]], path: str | os.PathLike,
               title: str = "L2 norm per token") -> None:
    """Save the PNG: one histogram row per kind on a shared log10 norm axis, mean / median / p95 marked."""
    width, row_h, left, right, top = 960, 84, 150, 30, 36
    height = top + row_h * len(rows) + 70
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    lo, hi = _log_range({r["kind"]: norms[r["kind"]] for r in rows})

    def x_of(t: float) -> float:
        return left + (t - lo) / (hi - lo) * (width - left - right)

    axis_y = top + row_h * len(rows) + 4
    _draw_axis(draw, x_of, lo, hi, axis_y, top)
    draw.text((8, 10), f"{title} (log10 axis)", fill="black")
    for i, row in enumerate(rows):
        box = (left, top + i * row_h, width - right, top + (i + 1) * row_h)
        _draw_row(draw, x_of, lo, hi, box, norms[row["kind"]].detach().float().flatten(), row)
    draw.text((x_of((lo + hi) / 2) - 70, axis_y + 24), "token L2 norm (log scale)", fill="black")
    x = left
    for name, colour in MARKS:
        draw.rectangle((x, height - 18, x + 14, height - 8), fill=colour)
        draw.text((x + 18, height - 20), name, fill="black")
        x += 90
    with atomic_path(path, suffix=".tmp.png") as tmp:
        img.save(tmp, format="PNG")


# ---------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """Flags of this CLI."""
    p = argparse.ArgumentParser(prog="python -m llava.diagnostics.token_norms",
                                description=__doc__.splitlines()[0])
    p.add_argument("--model-path", required=True, help="checkpoint folder (full, LoRA or projector-only)")
    p.add_argument("--model-base", default=None, help="base LLM (needed for LoRA and projector-only checkpoints)")
    p.add_argument("--image-folder", required=True, help="folder of images (searched recursively)")
    p.add_argument("--output-dir", default=".", help=f"where {CSV_NAME} and {PNG_NAME} go (default: .)")
    p.add_argument("--max-images", type=int, default=64, help="use at most this many images (default 64)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--mm-addon-modules", default=None,
                   help="comma-separated external add-on modules the checkpoint was trained with")
    p.add_argument("--device", default="cpu", help="cpu / cuda (default cpu)")
    return p


def _check_args(args: argparse.Namespace) -> list[Path]:
    """Validate the flags (raising :class:`InputError`) and return the images to use."""
    for flag in ("max_images", "batch_size"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    paths = list_images(os.path.expanduser(args.image_folder), args.max_images)
    model_path = Path(os.path.expanduser(args.model_path))
    if model_path.is_dir():
        if not (model_path / "config.json").is_file():
            raise InputError(f"--model-path {str(model_path)!r} has no config.json; point it at a checkpoint folder")
        # The files llava.model.builder.detect_checkpoint_kind looks at (not imported here: importing
        # llava.model can log warnings, and an input error must stay one line).
        files = {p.name for p in model_path.iterdir()}
        kind = "LoRA" if "adapter_config.json" in files else (
            "projector-only" if PROJECTOR_FILE in files and not files & set(FULL_WEIGHT_FILES) else None)
        if kind is not None and args.model_base is None:
            raise InputError(f"--model-path {str(model_path)!r} holds a {kind} checkpoint; "
                             "pass the base LLM it was trained from with --model-base")
    return paths


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Load the model, measure the norms, write the CSV and PNG; returns the summary rows."""
    paths = _check_args(args)
    from llava.model.builder import load_pretrained_model

    model_path = os.path.expanduser(args.model_path)
    _, model, processor, _ = load_pretrained_model(model_path, args.model_base, None, device=args.device,
                                                   addon_modules=args.mm_addon_modules)
    if processor is None or not hasattr(model, "encode_image_blocks_with_aux"):
        raise InputError(f"--model-path {model_path!r} is not a LLaVA checkpoint (no vision tower); "
                         "pass a checkpoint trained with a vision tower")
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        print(f"images {done}/{len(paths)}", flush=True)

    norms = token_norm_stats(model, iter_pixel_batches(paths, processor, model.config, args.batch_size), progress)
    rows = summarize(norms)
    out = Path(os.path.expanduser(args.output_dir))
    text = format_csv(rows)
    atomic_write_text(out / CSV_NAME, text)
    plot_norms(norms, rows, out / PNG_NAME, title=f"L2 norm per token: {Path(model_path).name}, {len(paths)} images")
    print(text, end="")
    print(f"wrote {out / CSV_NAME} and {out / PNG_NAME}")
    return rows


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: input problems are one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
