"""JSON Lines input (calibration texts, benchmark prompts): one object per non-empty line, and errors
that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator

from nld.errors import NLDError


def jsonl_records(text: str, where: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line of `text`; `where` names the source in errors."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise NLDError(f"{where}, line {number}: not JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise NLDError(f"{where}, line {number}: not a JSON object")
        yield number, record
