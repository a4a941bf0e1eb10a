"""JSON encoding with errors that name the offending key path.

Used by the client (input) and the executor (step output) before anything is stored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ContextTooLarge, InvalidInput

_encoder = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)


_NUL = "\x00"


def _find_bad(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return f"{path}: the NUL character (\\u0000) cannot be stored in PostgreSQL jsonb" if _NUL in value else None
    if value is None or isinstance(value, bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path}: {value!r} is not a JSON number"
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"{path}: key {k!r} is a {type(k).__name__}, JSON keys must be strings"
            if _NUL in k:
                return f"{path}: key {k!r} holds the NUL character (\\u0000), which PostgreSQL jsonb cannot store"
            bad = _find_bad(v, f"{path}[{k!r}]")
            if bad:
                return bad
        return None
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            bad = _find_bad(v, f"{path}[{i}]")
            if bad:
                return bad
        return None
    return f"{path}: {type(value).__name__} is not JSON-serialisable"


def dumps(value: Any, *, what: str, limit: int | None = None) -> str:
    """Serialise ``value`` or raise :class:`InvalidInput` naming the key path (``what`` is its root)."""
    try:
        text = _encoder.encode(value)
    except (TypeError, ValueError):
        text = None
    # json coerces non-string keys silently; we refuse them so what comes back is what went in.
    # PostgreSQL refuses \u0000 in jsonb; the text test is cheap, and an escaped backslash followed
    # by "u0000" only costs the walk that finds nothing.
    suspect = text is None or "\\u0000" in text or _has_non_str_key(value)
    bad = _find_bad(value, what) if suspect else None
    if bad or text is None:
        raise InvalidInput(bad or f"{what} is not JSON-serialisable")
    if limit is not None and len(text.encode()) > limit:
        raise ContextTooLarge(
            f"{what} is {len(text.encode())} bytes of JSON, over the limit of {limit} bytes "
            "(DURABLE_MAX_CONTEXT_BYTES)")
    return text


def _has_non_str_key(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(not isinstance(k, str) or _has_non_str_key(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_non_str_key(v) for v in value)
    return False


_compact = json.JSONEncoder(separators=(",", ":")).encode


def rows_with_json_last(rows: Iterable[tuple[list[Any], str | None]]) -> str:
    """A JSON array of arrays: each row's plain values, then its JSON text spliced in as it is (an
    input or a context ``dumps`` has already checked), not encoded a second time. Batches handed to
    one SQL function call are built this way (migration 0007)."""
    out = []
    for values, raw in rows:
        head = _compact(values)
        out.append(f"{head[:-1]},{raw or 'null'}]")
    return f"[{','.join(out)}]"
