"""``ctx``: the session of the call a tool serves.

Every method is a request to the Elixir side, answered through the same SessionStore path
as an Elixir call (constraints, versions, access control, locks, propagation, events), on
behalf of the call's session: a tool can never choose who it acts as. Naming another
session (``session=``) asks for that session's variable with this caller, through its
access policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional


@dataclass(frozen=True)
class Variable:
    """A session variable as read."""

    name: str
    type: str
    value: Any
    version: int
    metadata: Dict[Any, Any] = field(default_factory=dict)


def _variable(d: Dict[str, Any]) -> Variable:
    return Variable(
        name=d["name"],
        type=d["type"],
        value=d["value"],
        version=d["version"],
        metadata=d.get("metadata") or {},
    )


class Context:
    """What a tool gets as its first argument."""

    def __init__(self, session_id: str, request: Callable[[str, Dict[str, Any]], Any]) -> None:
        self.session_id = session_id
        self._request = request

    def get_variable(self, name: str, session: Optional[str] = None) -> Variable:
        """The variable ``name`` of this session (or of ``session``, if its policy allows)."""
        return _variable(self._request("get_variable", {"name": name, "session": session}))

    def set_variable(self, name: str, value: Any, expected_version: Optional[int] = None) -> Variable:
        """Writes ``value``; with ``expected_version``, only if that is the stored version."""
        args = {"name": name, "value": value, "expected_version": expected_version}
        return _variable(self._request("set_variable", args))

    def register_variable(
        self, name: str, type: str, value: Any, constraints: Optional[Dict[str, Any]] = None
    ) -> Variable:
        """Registers a new variable of ``type`` (``"float"``, ``"integer"``, ...)."""
        args = {"name": name, "type": type, "value": value, "constraints": constraints or {}}
        return _variable(self._request("register_variable", args))

    def list_variables(self) -> List[Variable]:
        """Every variable of this session."""
        return [_variable(d) for d in self._request("list_variables", {})]

    def get_history(self, name: str, limit: Optional[int] = None) -> List[Dict[str, Any]]:
        """Past versions of ``name``, newest first: ``{"version", "value", "updated_at"}``."""
        return self._request("get_history", {"name": name, "limit": limit})

    def rollback_variable(self, name: str, version: int) -> Variable:
        """Writes the value ``name`` had at ``version`` as a new version."""
        return _variable(self._request("rollback_variable", {"name": name, "version": version}))

    def add_dependency(self, from_: str, to: str) -> None:
        """Declares that ``to`` depends on ``from_`` (refused if it would close a cycle)."""
        self._request("add_dependency", {"from": from_, "to": to})

    def get_dependencies(self, name: str) -> List[str]:
        """The variables ``name`` depends on directly."""
        return self._request("get_dependencies", {"name": name})

    def get_dependents(self, name: str) -> List[str]:
        """The variables that depend on ``name`` directly."""
        return self._request("get_dependents", {"name": name})

    def check_access(self, name: str, permission: str, session: Optional[str] = None) -> bool:
        """Whether this session holds ``permission`` on ``name`` (of ``session``)."""
        args = {"name": name, "permission": permission, "session": session}
        return self._request("check_access", args)

    def set_variable_permissions(self, name: str, rules: Iterable[Dict[str, Any]]) -> None:
        """Adds access rules to this session's variable ``name``."""
        self._request("set_variable_permissions", {"name": name, "rules": list(rules)})
