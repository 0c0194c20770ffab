"""Training launch flags: parse, validate and read the data files, failing as a user error (one line, rank 0,
exit 2; :mod:`llava.utils.user_errors`) before any weights load."""

from __future__ import annotations

from typing import Any

from llava.data.dataset import load_data_file
from llava.data.sample_check import check_structure
from llava.utils.user_errors import fail, only_rank_zero_stderr


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
