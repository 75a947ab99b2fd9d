"""Tools of the demo (`make demo`): Python reading and writing the calling session."""

from dspex_bridge import tool, VersionMismatch, AccessDenied


@tool
def echo(ctx, value=None):
    return value


@tool(name="raise")
def raise_(ctx, message="failed"):
    raise RuntimeError(message)


@tool
def warm_up(ctx, factor=1.1):
    """Raises the session's temperature by `factor`, with a version check."""
    t = ctx.get_variable("temperature")
    new = ctx.set_variable("temperature", round(t.value * factor, 3), expected_version=t.version)
    print(f"temperature {t.value} -> {new.value} (version {new.version})")
    return new.value


@tool
def stale_write(ctx, version):
    try:
        ctx.set_variable("temperature", 0.1, expected_version=version)
        return "written"
    except VersionMismatch as e:
        return f"VersionMismatch: the stored version is {e.current}"


@tool
def peek(ctx, session, name):
    try:
        return ctx.get_variable(name, session=session).value
    except AccessDenied:
        return "AccessDenied"


@tool
def pid(ctx):
    import os

    return os.getpid()
