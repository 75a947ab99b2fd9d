"""``ctx``: the session of the call a tool serves.

Every method is a request to the Elixir side, answered through the same SessionStore path
as an Elixir call (constraints, versions, access control, locks, propagation, events), on
behalf of the call's session: a tool can never choose who it acts as. Naming another
session (``session=``) asks for that session's variable with this caller, through its
access policy.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Variable:
    """A session variable as read."""

    name: str
    type: str
    value: Any
    version: int
    metadata: Dict[Any, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    """A change of a watched variable. ``lost`` means no more changes of ``name`` will come
    (the variable was deleted, or the session lost the watch); ``old``/``new`` are then None."""

    name: str
    old: Any
    new: Any
    version: int
    lost: bool = False


@dataclass(frozen=True)
class Optimization:
    """A run started by ``ctx.start_optimization``; ``token`` is the lock's fencing token,
    which ``ctx.set_variable(..., token=run.token)`` writes with while the run holds it."""

    id: str
    name: str
    token: int
    optimizer_id: str


class Watch:
    """The changes of watched variables, as an iterator; it ends when the call ends (its
    deadline, or its result) or when ``close()`` is called. Use it as a context manager::

        with ctx.watch(["temperature"]) as changes:
            for change in changes:
                ...
    """

    _END = object()

    def __init__(self, watch_id: int, inbox: "queue.SimpleQueue[Any]", deadline: Optional[float],
                 close: Callable[[], None]) -> None:
        self.id = watch_id
        self._inbox = inbox
        self._deadline = deadline
        self._close = close
        self._closed = False

    def __iter__(self) -> Iterator[Change]:
        return self

    def __next__(self) -> Change:
        change = self.next()
        if change is None:
            raise StopIteration
        return change

    def next(self, timeout: Optional[float] = None) -> Optional[Change]:
        """The next change, or None after ``timeout`` seconds (or once the watch ended)."""
        if self._closed:
            return None
        wait = timeout
        if self._deadline is not None:
            left = max(0.0, self._deadline - time.monotonic())
            wait = left if wait is None else min(wait, left)
        try:
            item = self._inbox.get(timeout=wait)
        except queue.Empty:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self.close()
            return None
        if item is Watch._END:
            self._closed = True
            return None
        return item

    def close(self) -> None:
        """Stops watching (idempotent)."""
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


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

    def __init__(
        self,
        session_id: str,
        request: Callable[[str, Dict[str, Any]], Any],
        open_watch: Optional[Callable[[Sequence[str]], Watch]] = None,
    ) -> None:
        self.session_id = session_id
        self._request = request
        self._open_watch = open_watch

    def get_variable(self, name: str, session: Optional[str] = None) -> Variable:
        """The variable ``name`` of this session (or of ``session``, if its policy allows)."""
        return _variable(self._request("get_variable", {"name": name, "session": session}))

    def get_variables(self, names: Iterable[str]) -> Dict[str, Variable]:
        """Several variables of this session in one round trip, by name; the ones that do
        not exist (or that this session may not read) are left out. At most 1,000 names."""
        found = self._request("get_variables", {"names": list(names)})
        return {name: _variable(d) for name, d in found.items()}

    def set_variable(
        self, name: str, value: Any, expected_version: Optional[int] = None, token: Optional[int] = None
    ) -> Variable:
        """Writes ``value``; with ``expected_version``, only if that is the stored version;
        with ``token`` (an ``Optimization``'s), as the optimizer that holds the lock."""
        args = {"name": name, "value": value, "expected_version": expected_version, "token": token}
        return _variable(self._request("set_variable", args))

    def register_variable(
        self, name: str, type: str, value: Any, constraints: Optional[Dict[str, Any]] = None
    ) -> Variable:
        """Registers a new variable of ``type`` (``"float"``, ``"integer"``, ``"string"``,
        ``"boolean"``, ``"choice"``, ``"module"``, ``"embedding"``, ``"tensor"``, ``"json"``)."""
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

    def watch(self, names: Sequence[str]) -> Watch:
        """Watches variables of this session (needs ``observe``): an iterator of ``Change``
        that ends with the call."""
        if self._open_watch is None:
            raise RuntimeError("this context cannot watch")
        return self._open_watch(list(names))

    def start_optimization(
        self,
        name: str,
        optimizer_id: Optional[str] = None,
        objective: Tuple[str, str] = ("minimize", "loss"),
        timeout_ms: int = 5_000,
        priority: int = 0,
        conflict: str = "wait",
    ) -> Optimization:
        """Takes the optimizer lock on ``name`` and starts a run. ``conflict``: ``"wait"``
        (up to ``timeout_ms``), ``"abort"`` (``LockHeld`` at once) or ``"preempt"``. The lock
        is held by this worker: it is released when the run stops or the worker goes."""
        args = {
            "name": name,
            "optimizer_id": optimizer_id,
            "objective": list(objective),
            "timeout_ms": timeout_ms,
            "priority": priority,
            "conflict": conflict,
        }
        d = self._request("start_optimization", args)
        return Optimization(id=d["id"], name=d["name"], token=d["token"], optimizer_id=d["optimizer_id"])

    def report_progress(self, run: Optimization, iteration: int, value: Any, metrics: Dict[str, Any]) -> None:
        """Reports an iteration of ``run`` (renews its lease, keeps the best)."""
        args = {"id": run.id, "iteration": iteration, "value": value, "metrics": metrics}
        self._request("report_progress", args)

    def stop_optimization(self, run: Optimization, *args: Any, metrics: Optional[Dict[str, Any]] = None) -> Optional[Variable]:
        """Ends ``run``: ``stop_optimization(run, final_value)`` writes the final value with
        the lock's token and completes it (returns the variable); ``stop_optimization(run)``
        ends it as stopped. Either way the lock is released."""
        request: Dict[str, Any] = {"id": run.id, "metrics": metrics or {}}
        if args:
            request["complete"] = True
            request["final_value"] = args[0]
            return _variable(self._request("stop_optimization", request))
        self._request("stop_optimization", request)
        return None

    def get_optimization_status(self, run: Optimization) -> Dict[str, Any]:
        """The state of ``run``: ``status``, ``iteration``, ``best``, ``best_value``, ..."""
        return self._request("get_optimization_status", {"id": run.id})
