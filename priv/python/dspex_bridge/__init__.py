"""The Python side of the DSPex bridge.

Tools are plain functions of a ``ctx`` (the session of the call) and keyword arguments::

    from dspex_bridge import tool

    @tool
    def tune(ctx, factor):
        t = ctx.get_variable("temperature")
        return ctx.set_variable("temperature", t.value * factor, expected_version=t.version).value

A pool started by ``DSPex.Bridge.PythonWorker.start_pool(name, modules: ["my_tools"])`` runs
``python -m dspex_bridge.worker --module my_tools`` and serves them.
"""

from .context import Change, Context, Optimization, Variable, Watch
from .errors import (
    AccessDenied,
    BridgeError,
    Cancelled,
    InvalidValue,
    LockedBy,
    LockHeld,
    NotFound,
    VersionMismatch,
)
from .tools import tool

__all__ = [
    "AccessDenied",
    "BridgeError",
    "Cancelled",
    "Change",
    "Context",
    "InvalidValue",
    "LockedBy",
    "LockHeld",
    "NotFound",
    "Optimization",
    "Variable",
    "VersionMismatch",
    "Watch",
    "tool",
]
