"""Exceptions a tool sees when a bridge request fails.

Every error the Elixir side answers with becomes a BridgeError subclass, by the reason's
name: ``VersionMismatch`` (with ``current``, the stored version), ``AccessDenied``,
``NotFound``, ``LockedBy`` (a write refused; with ``holder``), ``LockHeld`` (a lock refused;
with ``holder``), ``InvalidValue``; anything else is a plain
``BridgeError`` whose ``reason`` is the Elixir reason's text.
"""

from __future__ import annotations

from typing import Any, Optional


class BridgeError(Exception):
    """A request to the bridge failed; ``reason`` is the Elixir reason as text."""

    def __init__(self, reason: str, message: str = "", detail: Any = None) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.detail = detail


class VersionMismatch(BridgeError):
    """``expected_version`` was not the stored version (``current``)."""

    def __init__(self, reason: str, message: str = "", detail: Any = None) -> None:
        super().__init__(reason, message, detail)
        self.current: Optional[int] = detail if isinstance(detail, int) else None


class AccessDenied(BridgeError):
    """The session of the call may not do this (or the variable is not its to see)."""


class NotFound(BridgeError):
    """No such variable, session or version."""


class LockedBy(BridgeError):
    """An optimizer holds the variable's lock (``holder``)."""

    def __init__(self, reason: str, message: str = "", detail: Any = None) -> None:
        super().__init__(reason, message, detail)
        self.holder = detail


class LockHeld(BridgeError):
    """``start_optimization`` was refused: another optimizer holds the lock (``holder``)."""

    def __init__(self, reason: str, message: str = "", detail: Any = None) -> None:
        super().__init__(reason, message, detail)
        self.holder = detail


class InvalidValue(BridgeError):
    """The value is not of the variable's type or breaks its constraints."""


class Cancelled(BridgeError):
    """The call this tool serves passed its deadline; its requests are refused."""


_BY_REASON = {
    "version_mismatch": VersionMismatch,
    "access_denied": AccessDenied,
    "variable_not_found": NotFound,
    "session_not_found": NotFound,
    "version_not_found": NotFound,
    "locked_by": LockedBy,
    "lock_held_by": LockHeld,
    "unknown_optimization": NotFound,
    "invalid_value": InvalidValue,
    "cancelled": Cancelled,
}


def from_reply(reason: str, message: str, detail: Any = None) -> BridgeError:
    """The exception for a failed reply."""
    return _BY_REASON.get(reason, BridgeError)(reason, message, detail)
