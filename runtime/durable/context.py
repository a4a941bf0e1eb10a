"""The step context and its pure helpers (``assign``, ``update``, ``append``, ``increment``).

Steps receive a :class:`Context` and return a new one; the helpers never mutate their argument,
so a step that raises half-way leaves the checkpointed context untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


class Context(dict[str, Any]):
    """A ``dict`` that also allows attribute reads (``ctx.total``); stored as JSON."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"context has no key {name!r} (keys: {sorted(self)})") from None


def _copy(ctx: Mapping[str, Any]) -> Context:
    return Context(ctx)


def assign(ctx: Mapping[str, Any], key: str | Mapping[str, Any] | None = None, value: Any = None,
           /, **values: Any) -> Context:
    """``assign(ctx, "k", v)``, ``assign(ctx, {"a": 1})`` or ``assign(ctx, a=1)``."""
    new = _copy(ctx)
    if isinstance(key, Mapping):
        new.update(key)
    elif key is not None:
        new[key] = value
    new.update(values)
    return new


def update(ctx: Mapping[str, Any], key: str, default: Any, fn: Callable[[Any], Any]) -> Context:
    """Set ``key`` to ``fn(current)``, or to ``default`` when the key is absent."""
    new = _copy(ctx)
    new[key] = fn(new[key]) if key in new else default
    return new


def append(ctx: Mapping[str, Any], key: str, item: Any) -> Context:
    new = _copy(ctx)
    new[key] = [*new.get(key, []), item]
    return new


def increment(ctx: Mapping[str, Any], key: str, by: int | float = 1) -> Context:
    new = _copy(ctx)
    new[key] = new.get(key, 0) + by
    return new
