"""Training launch flags: parse, validate and read the data files, failing as a user error (one line, rank 0,
exit 2; :mod:`llava.utils.user_errors`) before any weights load."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from llava.data.dataset import load_data_file
from llava.data.sample_check import check_structure
from llava.utils.user_errors import fail, is_rank_zero, only_rank_zero_stderr


def parse_and_check(build_parser: Any, argv: list[str],
                    validate: Any) -> tuple[Any, Any, Any, list[Any], list[Any] | None]:
    """``(model_args, data_args, training_args, records, eval_records)``: flags parsed and validated, the
    data files read (``eval_records`` is None without ``--eval_data_path``); bad samples are refused in both
    files alike.

    ``build_parser(argv)`` may fail on ``--mm_addon_modules``; ``validate(model_args, data_args,
    training_args)`` raises ``ValueError`` naming the flag; those, and an unreadable data file, become
    :func:`fail`.
    """
    try:
        parser = build_parser(argv)
    except (ValueError, ImportError) as err:
        fail(str(err))
    with only_rank_zero_stderr():
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    try:
        validate(model_args, data_args, training_args)
        records = read_training_data(data_args)
        eval_path = getattr(data_args, "eval_data_path", None)
        eval_records = load_data_file(eval_path) if eval_path else None
    except ValueError as err:  # DataFileError and UnicodeDecodeError are ValueErrors too
        fail(str(err))
    if not data_args.skip_bad_samples:
        check_structure(records, data_args.data_path)
        if eval_records is not None:
            check_structure(eval_records, eval_path)
    return model_args, data_args, training_args, records, eval_records


def read_training_data(data_args: Any) -> Any:
    """The training samples: a memory-mapped :class:`~llava.data.store.SampleStore` with ``--data_store_dir``
    (converted once, under a file lock, by whichever rank gets there first), else the parsed JSON list."""
    if not getattr(data_args, "data_store_dir", None):
        return load_data_file(data_args.data_path)
    from llava.data.store import open_store

    return open_store(data_args.data_path, data_args.data_store_dir)


def over_ranks(compute: Any) -> list[Any]:
    """``compute(rank, world)`` on every rank (each its shard of the work), every rank's result gathered on all, in
    rank order; just ``[compute(0, 1)]`` without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [compute(0, 1)]
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = compute(rank, world)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)  # nccl: through the current CUDA device (set from the local rank)
    return gathered


def to_rank_zero(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (in rank order), None elsewhere; ``[obj]`` without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    rank, world = dist.get_rank(), dist.get_world_size()
    gathered: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


HEADER_CACHE_FILE = "image_headers.json"  # in --output_dir: the image headers that passed the launch check


def check_images_at_launch(records: Any, eval_records: Any, data_args: Any,
                           output_dir: str | None = None) -> LaunchCheck:
    """``(train, eval)`` problems of :func:`llava.data.launch_check.check_images` (each rank reads a shard
    of the images, the problems are gathered on all), before any weights load. Without ``--skip_bad_samples`` a
    problem stops the launch: one line per category with the first sample ids, exit 2; with it, the caller marks
    the samples skipped. With ``output_dir`` the training images whose header passed are remembered there
    (path, size, mtime), so a relaunch (a resume) reads only the headers of files that changed."""
    from llava.data.launch_check import (
        HeaderCache,
        check_images,
        header_cache_key,
        problems_summary,
        read_header_cache,
        write_header_cache,
    )

    max_pixels = data_args.max_image_pixels or None
    eval_folder = getattr(data_args, "eval_image_folder", None) or data_args.image_folder
    sets = ((records, data_args.image_folder, data_args.data_path),
            (eval_records, eval_folder, getattr(data_args, "eval_data_path", None)))
    cache_path = os.path.join(output_dir, HEADER_CACHE_FILE) if output_dir and data_args.image_folder else None
    key = header_cache_key(data_args.image_folder or "", max_pixels, data_args.allow_absolute_image_paths)

    cache = HeaderCache(read_header_cache(cache_path, key)) if cache_path else None

    def compute(rank: int, world: int) -> list[list[Any]]:  # this rank's shard
        return [check_images(recs, folder, max_pixels, data_args.allow_absolute_image_paths, shard=(rank, world),
                             cache=cache if k == 0 else None)
                if recs is not None and folder is not None else [] for k, (recs, folder, _) in enumerate(sets)]

    shards = over_ranks(compute)  # the problems on every rank; the passed headers only where they are saved
    done = to_rank_zero(cache.passed if cache is not None else {})
    found = [sorted((p for shard in shards for p in shard[k]), key=lambda p: p.index) for k in range(len(sets))]
    if not data_args.skip_bad_samples:
        for problems, (_, _, path) in zip(found, sets):
            if problems:
                fail(problems_summary(problems, path), lines=True)
    passed = {path: st for part in done or () for path, st in part.items()}

    def save_header_cache() -> None:  # after the checkpoint gate: a refused launch writes nothing
        if cache_path and is_rank_zero() and passed:
            os.makedirs(output_dir, exist_ok=True)
            write_header_cache(cache_path, key, passed)

    return LaunchCheck(found[0], found[1], save_header_cache)


class LaunchCheck(NamedTuple):
    """What the launch image check found: the bad (train, eval) samples, and ``save_header_cache`` to call once the
    run is accepted (it remembers the headers that passed, for the next launch)."""

    train: list[Any]
    eval: list[Any]
    save_header_cache: Any
