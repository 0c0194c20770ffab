"""Dataset doctor: check a LLaVA-format data file end to end before a long training run.

    python -m llava.data.doctor --data_path data.json --image_folder IMAGES --model_max_length 2048 \\
        --tokenizer MODEL_OR_TOKENIZER_DIR --version v1 [--num_image_tokens 576] [--no_decode] \\
        [--report problems.jsonl] [--workers N] [--strict]

Per sample: JSON shape, id present and unique, roles alternate human/gpt, ``<image>`` placeholder
count vs the ``image`` key, the image exists and decodes (``--no_decode``: existence plus a PIL
header/``verify()`` check only), the token length with every image counted as
``--num_image_tokens`` tokens vs ``--model_max_length``, and masking sanity through the training
code itself (:func:`llava.data.preprocess.preprocess`: at least one supervised token, no
tokenization mismatch). ``--num_image_tokens`` is what one image occupies in the LLM sequence:
576 for CLIP ViT-L/14-336 (24x24 patches), 577 with ``--mm_vision_select_feature cls_patch``,
N with ``--compression_after_projection --final_spatial_size N``; add the coordinate text tokens
when using ``--interleave``.

Prints a summary table (category -> count), writes one JSON line per problem (sample index, id,
category, severity, detail) and exits 1 when errors are found (also on warnings with
``--strict``), 2 when the data file, tokenizer or template cannot be used at all, else 0.
Tokenization and image decoding run in ``--workers`` processes; each image is checked once
however many samples use it.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from PIL import Image
from tqdm import tqdm

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.data.sample_check import structural_problems, structural_warnings
from llava.mm_utils import load_image
from llava.utils.atomic import atomic_write_text
from llava.utils.image_files import image_inside_folder

ERROR, WARNING = "error", "warning"

#: Problem category -> (severity, what to do). Report order follows this mapping.
CATEGORIES: MappingProxyType[str, tuple[str, str]] = MappingProxyType({
    "malformed_sample": (ERROR, "make it {'id', 'image'?, 'conversations': [{'from', 'value'}, ...]}"),
    "missing_id": (WARNING, "give every sample an 'id' so logs and reports can name it"),
    "duplicate_id": (WARNING, "make ids unique so reports and logs point at one sample"),
    "first_turn_not_human": (WARNING, "training drops a leading non-human turn; start with 'human'"),
    "bad_conversation": (ERROR, "alternate human/gpt turns, starting with human, with non-empty gpt answers"),
    "missing_image_token": (ERROR, "add '<image>\\n' at the start of the first human turn"),
    "too_many_image_tokens": (ERROR, "keep exactly one '<image>' in a sample with one 'image'"),
    "image_token_without_image": (ERROR, "add the 'image' key or remove '<image>' from the text"),
    "missing_image": (ERROR, "download the image, or fix --image_folder / the sample's 'image' path"),
    "image_outside_folder": (ERROR, "make 'image' relative to --image_folder (or --allow_absolute_image_paths True)"),
    "unreadable_image": (ERROR, "re-download it, or: python -m patches.scan_images DIR --quarantine Q --apply"),
    "image_format_mismatch": (WARNING, "python -m patches.fix_image_formats IMAGE_FOLDER --apply"),
    "template_error": (ERROR, "the conversation cannot be rendered with --version; check the template"),
    "tokenization_mismatch": (ERROR, "tokenizer and --version disagree; the sample would get no loss"),
    "no_supervised_tokens": (ERROR, "the sample has no supervised token (no loss); check its gpt answers"),
    "too_long": (ERROR, "raise --model_max_length, shorten or split the sample, or drop it"),
})

#: File extension -> the PIL format its content should have (for ``image_format_mismatch``).
EXTENSION_FORMATS: MappingProxyType[str, str] = MappingProxyType({
    ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP", ".webp": "WEBP",
    ".tif": "TIFF", ".tiff": "TIFF",
})

_CHUNK = 256  # samples per task sent to a worker
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class DoctorConfig:
    """What the checks need besides the samples themselves (picklable, sent to workers)."""

    tokenizer: str
    version: str
    model_max_length: int
    image_folder: str | None = None
    num_image_tokens: int = 576
    decode: bool = True
    allow_absolute_image_paths: bool = False


@dataclass(frozen=True)
class ImageReport:
    """Result of :func:`inspect_image`: the PIL format read from the header, and an error or None."""

    format: str | None
    error: str | None


def _has_jpeg_end(path: str | os.PathLike, tail: int = 4096) -> bool:
    """Whether the JPEG end-of-image marker (FF D9) is in the file's last ``tail`` bytes."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - tail))
        return b"\xff\xd9" in f.read()


def inspect_image(path: str | os.PathLike, decode: bool = True) -> ImageReport:
    """Open ``path`` with PIL; decode it fully the way training does (``decode``) or only ``verify()`` it.

    Never raises for bad image content: the problem is returned as ``error``. ``FileNotFoundError``
    is reported as ``"missing"``. Without ``decode``, JPEGs are also checked for their end marker
    (``verify()`` alone does not notice a truncated JPEG).
    """
    fmt = None
    try:
        with Image.open(path) as image:
            fmt = image.format
            if not decode:
                image.verify()
        if decode:
            load_image(path)
        elif fmt == "JPEG" and not _has_jpeg_end(path):
            return ImageReport(fmt, "JPEG end-of-image marker missing near the end of the file (truncated download?)")
    except FileNotFoundError:
        return ImageReport(None, "missing")
    except _IMAGE_ERRORS as err:
        return ImageReport(fmt, f"{type(err).__name__}: {err}")
    return ImageReport(fmt, None)


def expected_format(path: str | os.PathLike) -> str | None:
    """The PIL format name the file's extension promises, or None for an unknown extension."""
    return EXTENSION_FORMATS.get(os.path.splitext(os.fspath(path))[1].lower())


def problem(index: int, sample_id: Any, category: str, detail: str, **extra: Any) -> dict[str, Any]:
    """One report row; ``category`` must be a key of :data:`CATEGORIES`."""
    severity = CATEGORIES[category][0]
    return dict(index=index, id=sample_id, category=category, severity=severity, detail=detail, **extra)


def sample_id_of(sample: Any, index: int) -> Any:
    """The sample's ``id``, or ``"#<index>"`` when it has none (as the training dataset names it)."""
    if isinstance(sample, dict) and sample.get("id") is not None:
        return sample["id"]
    return f"#{index}"


# ---- per-sample text checks (run in workers) ----


@functools.lru_cache(maxsize=2)
def _load_tokenizer(path: str) -> Any:
    """The tokenizer the trainer would build (slow tokenizer, right padding), once per process.

    ``model_max_length`` is left unset: lengths are compared here, against ``--model_max_length``,
    without transformers' per-sequence "longer than the maximum" warning.
    """
    from transformers import AutoTokenizer

    logging.getLogger("llava.data.preprocess").setLevel(logging.ERROR)  # mismatches are reported by us
    return AutoTokenizer.from_pretrained(path, padding_side="right", use_fast=False)


def _check_tokens(sample: dict[str, Any], index: int, sid: Any, cfg: DoctorConfig) -> list[dict[str, Any]]:
    from llava.data.preprocess import BadSampleError, preprocess, preprocess_multimodal

    tokenizer = _load_tokenizer(cfg.tokenizer)
    has_image = sample.get("image") is not None
    sources = [sample["conversations"]]
    if has_image:
        sources = preprocess_multimodal(sources, True, False)
    try:
        out = preprocess(sources, tokenizer, cfg.version, has_image=has_image, sample_id=sid)
    except BadSampleError as err:
        category = err.category if err.category in CATEGORIES else "bad_conversation"
        return [problem(index, sid, category, err.detail)]
    except ValueError as err:
        return [problem(index, sid, "template_error", str(err))]
    ids, labels = out["input_ids"][0].tolist(), out["labels"][0].tolist()
    found = []
    if out["num_mismatched"]:
        found.append(problem(index, sid, "tokenization_mismatch",
                             f"tokenizing with template {cfg.version!r} does not give prefix-stable ids, so the "
                             "whole sample would be masked; use the tokenizer the template was made for"))
    elif all(label == IGNORE_INDEX for label in labels):
        found.append(problem(index, sid, "no_supervised_tokens", "every label is -100 after template masking"))
    n_images = sum(1 for tok in ids if tok == IMAGE_TOKEN_INDEX)
    total = len(ids) + n_images * (cfg.num_image_tokens - 1)
    if total > cfg.model_max_length:
        found.append(problem(index, sid, "too_long",
                             f"{total} tokens ({n_images} image(s) x {cfg.num_image_tokens} tokens included) exceed "
                             f"--model_max_length {cfg.model_max_length}", num_tokens=total))
    return found


def check_sample(sample: Any, index: int, cfg: DoctorConfig) -> list[dict[str, Any]]:
    """All text-side problems of one sample (shape, placeholders, answers, roles, masking, length)."""
    sid = sample_id_of(sample, index)
    errors = structural_problems(sample)  # the same checks training runs (llava.data.sample_check)
    found = []
    sample_id = sample.get("id") if isinstance(sample, dict) else None
    if isinstance(sample, dict) and (not isinstance(sample_id, (str, int)) or isinstance(sample_id, bool)):
        found.append(problem(index, sid, "missing_id", f"'id' is {sample.get('id')!r}; reports use '#{index}'"))
    if errors:
        return found + [problem(index, sid, category, detail) for category, detail in errors]
    found += [problem(index, sid, category, detail) for category, detail in structural_warnings(sample)]
    return found + _check_tokens(sample, index, sid, cfg)


def _check_chunk(chunk: tuple[int, list[Any]], cfg: DoctorConfig) -> tuple[int, list[dict[str, Any]]]:
    start, samples = chunk
    found: list[dict[str, Any]] = []
    for offset, sample in enumerate(samples):
        found.extend(check_sample(sample, start + offset, cfg))
    return len(samples), found


def check_ids(records: Sequence[Any]) -> list[dict[str, Any]]:
    """``duplicate_id`` rows for every sample whose id an earlier sample already uses."""
    first_seen: dict[tuple[str, Any], int] = {}
    found = []
    for index, sample in enumerate(records):
        sid = sample.get("id") if isinstance(sample, dict) else None
        if not isinstance(sid, (str, int)) or isinstance(sid, bool):
            continue
        key = (type(sid).__name__, sid)
        if key in first_seen:
            found.append(problem(index, sid, "duplicate_id", f"id {sid!r} is also used by sample #{first_seen[key]}"))
        else:
            first_seen[key] = index
    return found


# ---- image checks (one per distinct file, run in workers) ----


def check_image_file(rel_path: str, cfg: DoctorConfig) -> tuple[str, list[tuple[str, str]]]:
    """``(rel_path, [(category, detail), ...])`` for one image referenced by the data file."""
    path = os.path.join(cfg.image_folder or "", rel_path)
    if not cfg.allow_absolute_image_paths and not image_inside_folder(rel_path, cfg.image_folder or ""):
        return rel_path, [("image_outside_folder", f"'image': {rel_path!r} is not inside --image_folder "
                                                   f"{cfg.image_folder!r}; training refuses it")]
    if not os.path.isfile(path):
        return rel_path, [("missing_image", f"image file not found: {path}")]
    report = inspect_image(path, decode=cfg.decode)
    if report.error is not None:
        how = "decode" if cfg.decode else "verify"
        return rel_path, [("unreadable_image", f"cannot {how} {path}: {report.error}")]
    wanted = expected_format(path)
    if wanted is not None and report.format is not None and report.format != wanted:
        return rel_path, [("image_format_mismatch", f"{path} holds {report.format} data but is named like {wanted}")]
    return rel_path, []


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _run_parallel(fn: Callable[[Any], Any], tasks: Iterable[Any], workers: int, chunksize: int) -> Iterator[Any]:
    if workers <= 1:
        yield from map(fn, tasks)
        return
    with multiprocessing.get_context().Pool(workers, initializer=_worker_init) as pool:
        yield from pool.imap(fn, tasks, chunksize=chunksize)


def run_checks(records: Sequence[Any], cfg: DoctorConfig, workers: int = 1,
               progress: bool | None = None) -> list[dict[str, Any]]:
    """Every problem in ``records``, sorted by sample index then category order."""
    found = check_ids(records)
    chunks = ((start, list(records[start:start + _CHUNK])) for start in range(0, len(records), _CHUNK))
    disable = None if progress is None else not progress  # None: tqdm shows bars on a terminal only
    bar = tqdm(total=len(records), desc="samples", unit="sample", disable=disable)
    with bar:
        for done, chunk_problems in _run_parallel(functools.partial(_check_chunk, cfg=cfg), chunks, workers, 1):
            found.extend(chunk_problems)
            bar.update(done)
    users: dict[str, list[int]] = defaultdict(list)
    for index, sample in enumerate(records):
        image = sample.get("image") if isinstance(sample, dict) else None
        if isinstance(image, str) and image:
            users[image].append(index)
    desc = "images (decode)" if cfg.decode else "images (verify)"
    bar = tqdm(total=len(users), desc=desc, unit="img", disable=disable)
    with bar:
        check = functools.partial(check_image_file, cfg=cfg)
        for rel_path, image_problems in _run_parallel(check, sorted(users), workers, 32):
            for category, detail in image_problems:
                for index in users[rel_path]:
                    found.append(problem(index, sample_id_of(records[index], index), category, detail, image=rel_path))
            bar.update(1)
    order = {name: k for k, name in enumerate(CATEGORIES)}
    found.sort(key=lambda row: (row["index"], order[row["category"]]))
    return found


# ---- reporting and CLI ----


def summary_table(found: Sequence[dict[str, Any]]) -> str:
    """``category | severity | count | what to do`` for the categories that occurred."""
    counts = Counter(row["category"] for row in found)
    if not counts:
        return "no problems found"
    width = max(len(name) for name in counts)
    lines = [f"{'category':<{width}}  severity  {'count':>7}  what to do"]
    for name, (severity, hint) in CATEGORIES.items():
        if counts[name]:
            lines.append(f"{name:<{width}}  {severity:<8}  {counts[name]:>7}  {hint}")
    return "\n".join(lines)


def write_report(found: Sequence[dict[str, Any]], path: str) -> None:
    """One JSON object per line; the file is written to a temp name and renamed into place."""
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in found))


def build_parser() -> argparse.ArgumentParser:
    """The CLI flags (names follow the training CLI where they overlap)."""
    parser = argparse.ArgumentParser(prog="python -m llava.data.doctor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", required=True, help="LLaVA-format .json list or .jsonl file")
    parser.add_argument("--image_folder", default=None, help="folder the samples' 'image' paths are relative to")
    parser.add_argument("--model_max_length", type=int, required=True, help="as passed to training (e.g. 2048)")
    parser.add_argument("--tokenizer", required=True, help="model or tokenizer folder (the --model_name_or_path)")
    parser.add_argument("--version", required=True, help="conversation template, as --version in training")
    parser.add_argument("--num_image_tokens", type=int, default=576,
                        help="tokens one image takes in the LLM sequence (576 for ViT-L/14-336; N with "
                             "--compression_after_projection --final_spatial_size N; add interleave tokens)")
    parser.add_argument("--allow_absolute_image_paths", action="store_true",
                        help="accept 'image' paths outside --image_folder, as the training flag of that name does")
    parser.add_argument("--no_decode", action="store_true", help="only check images exist and pass PIL verify()")
    parser.add_argument("--report", default="problems.jsonl", help="where to write the JSONL of problems")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8),
                        help="processes for tokenization and image checks (1: no subprocesses)")
    parser.add_argument("--strict", action="store_true", help="exit non-zero on warnings too")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the doctor; returns the exit code (0 clean, 1 problems, 2 unusable inputs)."""
    args = build_parser().parse_args(argv)
    from llava.conversation import get_conv_template
    from llava.data.dataset import DataFileError, load_data_file

    cfg = DoctorConfig(tokenizer=args.tokenizer, version=args.version, model_max_length=args.model_max_length,
                       image_folder=args.image_folder, num_image_tokens=args.num_image_tokens,
                       decode=not args.no_decode, allow_absolute_image_paths=args.allow_absolute_image_paths)
    try:
        get_conv_template(args.version)
        records = load_data_file(args.data_path)
    except (DataFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        _load_tokenizer(cfg.tokenizer)
    except (OSError, ValueError) as err:
        print(f"error: cannot load the tokenizer from --tokenizer {args.tokenizer!r}: {err}. Pass the folder of "
              "the model you will train (its --model_name_or_path).", file=sys.stderr)
        return 2
    n_images = sum(1 for s in records if isinstance(s, dict) and s.get("image") is not None)
    if n_images and not args.image_folder:
        print(f"error: {n_images} samples in {args.data_path} have an 'image' but --image_folder is not set",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    found = run_checks(records, cfg, workers=max(1, args.workers), progress=False if args.no_progress else None)
    elapsed = time.perf_counter() - start
    write_report(found, args.report)
    errors = [row for row in found if row["severity"] == ERROR]
    warnings = [row for row in found if row["severity"] == WARNING]
    print(summary_table(found))
    rate = len(records) / elapsed if elapsed > 0 else float("inf")
    print(f"\n{len(records)} samples ({n_images} with an image) checked in {elapsed:.1f}s ({rate:.0f} samples/s, "
          f"images {'decoded' if cfg.decode else 'verified only'}): {len(errors)} errors in "
          f"{len({row['index'] for row in errors})} samples, {len(warnings)} warnings; report: {args.report}")
    if errors or (args.strict and warnings):
        print("fix the samples named in the report (or pass --skip_bad_samples True to training to skip them)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
