"""User errors in a training launch: one line, printed once (rank 0), exit 2, before any weights load.

A bad flag value, a flag combination that cannot work, a missing or malformed data file: the launch
stops at argument parsing with ``error: <what and how to fix it>`` on rank 0's stderr and exit status 2
on every rank (no traceback, no ``[rank1]:`` copy). argparse's own usage errors are shown by rank 0 only.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from typing import Any, NoReturn


def is_rank_zero() -> bool:
    """Rank 0 of the launch (or no launcher), from the environment: the process group is not up yet."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) in ("0", "-1")


def fail(message: str) -> NoReturn:
    """Print ``error: message`` (one line) on rank 0 and exit 2 on every rank."""
    if is_rank_zero():
        print("error: " + " ".join(message.split()), file=sys.stderr, flush=True)
    raise SystemExit(2)


@contextlib.contextmanager
def only_rank_zero_stderr() -> Iterator[None]:
    """Swallow stderr on ranks other than 0 (argparse prints its usage error on each)."""
    if is_rank_zero():
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def parse_and_check(build_parser: Any, argv: list[str],
                    validate: Any) -> tuple[Any, Any, Any, list[Any], list[Any] | None]:
    """``(model_args, data_args, training_args, records, eval_records)``: flags parsed and validated, the
    data files read (``eval_records`` is None without ``--eval_data_path``); bad samples are refused in both
    files alike.

    ``build_parser(argv)`` may fail on ``--mm_addon_modules``; ``validate(model_args, data_args,
    training_args)`` raises ``ValueError`` naming the flag; those, and an unreadable data file, become
    :func:`fail`.
    """
    from llava.train.dataset import load_data_file

    try:
        parser = build_parser(argv)
    except (ValueError, ImportError) as err:
        fail(str(err))
    with only_rank_zero_stderr():
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    try:
        validate(model_args, data_args, training_args)
        records = load_data_file(data_args.data_path)
        eval_path = getattr(data_args, "eval_data_path", None)
        eval_records = load_data_file(eval_path) if eval_path else None
    except ValueError as err:  # DataFileError and UnicodeDecodeError are ValueErrors too
        fail(str(err))
    if not data_args.skip_bad_samples:
        check_structure(records, data_args.data_path)
        if eval_records is not None:
            check_structure(eval_records, eval_path)
    return model_args, data_args, training_args, records, eval_records


def check_structure(records: list[Any], data_path: str) -> None:
    """:func:`fail` on the first structurally bad sample (:mod:`llava.data.sample_check`), with the count."""
    from llava.data.sample_check import first_problem

    found = first_problem(records)
    if found is None:
        return
    index, category, detail, n_bad = found
    sample = records[index]
    sid = sample.get("id", f"#{index}") if isinstance(sample, dict) else f"#{index}"
    fail(f"{n_bad} sample(s) in {data_path} cannot be trained on; the first: {category}: sample id={sid!r} (index "
         f"{index}): {detail}. Fix them (python -m llava.data.doctor lists them all) or pass --skip_bad_samples "
         "True to skip and count them")
