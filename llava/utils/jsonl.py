"""Parse JSON Lines text with errors that name the source and the line."""

from __future__ import annotations

import json
from typing import Any


def parse_jsonl(text: str, source: str) -> list[Any]:
    """One JSON value per non-blank line; a bad line raises ``ValueError("<source> line N is not valid JSON: ...")``."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{source} line {n} is not valid JSON: {e}") from None
    return rows
