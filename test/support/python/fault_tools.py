"""Tools for the bridge's own tests: fault injection and ctx round trips."""

import os
import sys
import time
import threading

from dspex_bridge import tool, VersionMismatch, AccessDenied

_calls = 0
_lock = threading.Lock()


def _count():
    global _calls
    with _lock:
        _calls += 1
        return _calls - 1


@tool
def ping(ctx):
    return "pong"


@tool
def calls(ctx):
    """How many calls this process served before this one."""
    return _count()


@tool
def echo(ctx, value=None):
    _count()
    return value


@tool
def sleep(ctx, ms=0):
    _count()
    time.sleep(ms / 1000.0)
    return ms


@tool(name="raise")
def raise_(ctx, message="raised on request"):
    _count()
    raise RuntimeError(message)


@tool
def exit(ctx, code=1):
    os._exit(code)


@tool
def hang(ctx):
    while True:
        time.sleep(3600)


@tool
def oversized(ctx, bytes=0):
    return "x" * bytes


@tool
def shout(ctx, text=""):
    """Prints to stdout and stderr, then answers: output never corrupts a frame."""
    print(text)
    print(text, file=sys.stderr)
    sys.stdout.write("no newline at the end")
    sys.stdout.flush()
    os.write(1, b"\n\xff raw bytes on fd 1\n")
    return text


@tool
def session_of(ctx):
    return ctx.session_id


@tool
def read(ctx, name, session=None):
    v = ctx.get_variable(name, session=session)
    return {"name": v.name, "type": v.type, "value": v.value, "version": v.version}


@tool
def write(ctx, name, value, expected_version=None):
    try:
        return ctx.set_variable(name, value, expected_version=expected_version).version
    except VersionMismatch as e:
        return {"conflict": e.current}


@tool
def peek(ctx, name, session):
    try:
        return ctx.get_variable(name, session=session).value
    except AccessDenied as e:
        return {"denied": e.reason}


@tool
def tune(ctx, name, factor):
    """Reads, registers, lists, reads history, declares a dependency, rolls back."""
    v = ctx.get_variable(name)
    ctx.set_variable(name, v.value * factor, expected_version=v.version)
    ctx.register_variable("derived_" + name, "float", 0.0, {"min": 0.0})
    ctx.add_dependency(name, "derived_" + name)
    history = ctx.get_history(name)
    back = ctx.rollback_variable(name, v.version)
    return {
        "names": sorted(x.name for x in ctx.list_variables()),
        "history": [h["version"] for h in history],
        "rolled_back": back.value,
        "dependents": ctx.get_dependents(name),
        "can_write": ctx.check_access(name, "write"),
    }


@tool
async def async_echo(ctx, value=None, ms=0):
    import asyncio

    await asyncio.sleep(ms / 1000.0)
    return value


@tool
def pid(ctx):
    """The OS pid of the interpreter serving the call."""
    return os.getpid()


@tool
def watch_for(ctx, names, count=1, wait_s=5.0):
    """Watches ``names`` and returns the first ``count`` changes as dicts."""
    seen = []
    with ctx.watch(names) as changes:
        while len(seen) < count:
            change = changes.next(timeout=wait_s)
            if change is None:
                break
            seen.append({"name": change.name, "old": change.old, "new": change.new,
                         "version": change.version, "lost": change.lost})
    return seen


@tool
def optimize(ctx, name, candidates, optimizer_id=None, conflict="wait", timeout_ms=2000, hold_ms=0):
    """Tries each candidate under the optimizer lock, keeps the one nearest 1.0, completes."""
    import time
    from dspex_bridge import LockHeld

    try:
        run = ctx.start_optimization(name, optimizer_id=optimizer_id, conflict=conflict, timeout_ms=timeout_ms)
    except LockHeld as exc:
        return {"refused": str(exc.holder)}
    best = None
    for i, candidate in enumerate(candidates, start=1):
        ctx.set_variable(name, candidate, token=run.token)
        loss = abs(candidate - 1.0)
        ctx.report_progress(run, i, candidate, {"loss": loss})
        if best is None or loss < best[1]:
            best = (candidate, loss)
    status = ctx.get_optimization_status(run)
    time.sleep(hold_ms / 1000.0)
    var = ctx.stop_optimization(run, best[0], metrics={"loss": best[1]})
    return {"id": run.id, "final": var.value, "version": var.version,
            "iterations": status["iteration"], "status": status["status"]}


@tool
def status_of(ctx, id):
    """The status of a run named by its id (a run of another session must stay out of reach)."""
    from dspex_bridge.context import Optimization

    return ctx.get_optimization_status(Optimization(id=id, name="", token=0, optimizer_id=""))
