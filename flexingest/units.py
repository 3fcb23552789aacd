"""Durations and sizes as the pipeline file writes them: ``30s``, ``1h30m``, ``10MB``."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, ByteSize, WithJsonSchema

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> Any:
    """``30s``, ``5m``, ``1h30m``, ``2d`` or a number of seconds -> timedelta."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 5m, 1h or a number of seconds")
    try:
        return _parse_duration(value)
    except OverflowError:
        raise ValueError(f"duration {value!r} is too long") from None


def _parse_duration(value: Any) -> Any:
    if isinstance(value, (int, float)):
        if value != value:  # NaN
            raise ValueError(f"expected a duration like 30s, 5m, 1h30m or a number of seconds, got {value!r}")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return timedelta(seconds=float(text))
        parts = _DURATION_PART.findall(text)
        if parts and "".join(_DURATION_PART.sub("", text).split()) == "":
            return timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in parts))
        raise ValueError(f"expected a duration like 30s, 5m, 1h30m or a number of seconds, got {value!r}")
    return value


_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?\s*(ms|s|m|h|d|w)?\s*)+$"},
        {"type": "number", "minimum": 0},
    ],
    "description": "a duration: 30s, 5m, 1h30m, 2d, or a number of seconds",
}
Duration = Annotated[timedelta, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA)]
def _check_size(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise ValueError("a size cannot be negative")
    if isinstance(value, str) and value.strip().startswith("-"):
        raise ValueError(f"a size cannot be negative, got {value!r}")
    return value


_SIZE_SCHEMA = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}],
                "description": "bytes: 1024, 10KB, 5MiB, 1GB"}
Size = Annotated[ByteSize, BeforeValidator(_check_size), WithJsonSchema(_SIZE_SCHEMA)]
