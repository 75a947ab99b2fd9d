"""The tool registry: ``@tool`` functions a worker serves."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_TOOLS: Dict[str, Callable[..., Any]] = {}
# name -> whether the tool is an ``async def`` (asked once, not on every call)
_ASYNC: Dict[str, bool] = {}


def tool(fn: Optional[F] = None, *, name: Optional[str] = None) -> Any:
    """Registers ``fn(ctx, **args)`` as a tool, under its own name or ``name``.

    >>> @tool
    ... def add(ctx, a, b):
    ...     return a + b

    ``async def`` functions are tools too; they run on the worker's event loop.
    """

    def register(f: F) -> F:
        key = name or f.__name__
        if key in _TOOLS and _TOOLS[key] is not f:
            raise ValueError(f"a tool named {key!r} is already registered")
        _TOOLS[key] = f
        _ASYNC[key] = inspect.iscoroutinefunction(f)
        return f

    return register(fn) if fn is not None else register


def lookup(name: str) -> Optional[Callable[..., Any]]:
    """The tool registered as ``name``."""
    return _TOOLS.get(name)


def lookup_with_kind(name: str) -> "tuple[Optional[Callable[..., Any]], bool]":
    """The tool registered as ``name`` and whether it is ``async``."""
    return _TOOLS.get(name), _ASYNC.get(name, False)


def names() -> list:
    """Every registered tool's name, sorted."""
    return sorted(_TOOLS)


def is_async(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is an ``async def`` tool."""
    return inspect.iscoroutinefunction(fn)
