"""User errors in a launch: one line, printed once (rank 0), exit 2, before any weights load.

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
from typing import NoReturn


def is_rank_zero() -> bool:
    """Rank 0 of the launch (or no launcher), from the environment: the process group is not up yet."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) in ("0", "-1")


def fail(message: str, *, here: bool = False, lines: bool = False) -> NoReturn:
    """Print ``error: message`` (one line, whitespace collapsed) on rank 0 and exit 2 on every rank.

    ``lines``: each line of ``message`` stays its own line (a launch check's one line per category).
    ``here``: print on this rank whatever its rank (an error only this rank met, e.g. a sample that became
    unreadable after launch)."""
    if here or is_rank_zero():
        parts = message.splitlines() if lines else [message]
        print("error: " + "\n  ".join(" ".join(p.split()) for p in parts if p.strip()), file=sys.stderr, flush=True)
    raise SystemExit(2)


@contextlib.contextmanager
def only_rank_zero_stderr() -> Iterator[None]:
    """Swallow stderr on ranks other than 0 (argparse prints its usage error on each)."""
    if is_rank_zero():
        yield
        return
    with contextlib.redirect_stderr(io.StringIO()):
        yield
