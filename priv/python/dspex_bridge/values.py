"""Python objects to and from the protocol's ``Value``.

``None``, ``bool``, ``int`` (64-bit), ``float``, ``str``, ``bytes``, lists and tuples (as
lists), dicts (any keys of these kinds). Values nest at most ``MAX_DEPTH`` containers deep,
as the Elixir side allows.
"""

from __future__ import annotations

from typing import Any

from . import dspex_bridge_pb2 as pb

MAX_DEPTH = 48
_I64 = (-(2**63), 2**63 - 1)


def to_value(obj: Any) -> pb.Value:
    """``obj`` as a ``Value``; ``TypeError``/``ValueError`` for what cannot cross."""
    v = pb.Value()
    fill(v, obj)
    return v


def fill(v: pb.Value, obj: Any, depth: int = 0) -> None:
    """Sets ``v`` (an empty ``Value`` inside a message being built) to ``obj``: building in
    place, as protobuf's Python API is fastest at, rather than copying sub-messages."""
    kind = type(obj)
    if obj is None:
        v.null = True
    elif kind is bool:
        v.boolean = obj
    elif kind is int or (isinstance(obj, int) and not isinstance(obj, bool)):
        if not _I64[0] <= obj <= _I64[1]:
            raise ValueError("integer out of 64-bit range")
        v.integer = obj
    elif kind is float or isinstance(obj, float):
        v.float = obj
    elif kind is str or isinstance(obj, str):
        v.text = obj
    elif isinstance(obj, (bytes, bytearray)):
        v.binary = bytes(obj)
    elif isinstance(obj, (list, tuple, dict)):
        if depth >= MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH}")
        if isinstance(obj, dict):
            fill_map(v.map, obj, depth + 1)
        else:
            v.list.SetInParent()
            items = v.list.items
            for item in obj:
                fill(items.add(), item, depth + 1)
    else:
        raise TypeError(f"{type(obj).__name__} cannot cross the bridge")


def fill_map(m: pb.ValueMap, obj: dict, depth: int = 1) -> None:
    """Sets ``m`` (an empty ``ValueMap`` in place) to the entries of ``obj``."""
    m.SetInParent()
    entries = m.entries
    for key, item in obj.items():
        entry = entries.add()
        fill(entry.key, key, depth)
        fill(entry.value, item, depth)


def _hashable(obj: Any) -> Any:
    return tuple(_hashable(x) for x in obj) if isinstance(obj, list) else obj


def from_value(v: pb.Value) -> Any:
    """A ``Value`` as a Python object (lists used as map keys become tuples)."""
    kind = v.WhichOneof("kind")
    if kind == "text":
        return v.text
    if kind == "integer":
        return v.integer
    if kind is None or kind == "null":
        return None
    if kind == "list":
        return [from_value(x) for x in v.list.items]
    if kind == "map":
        return {_hashable(from_value(e.key)): from_value(e.value) for e in v.map.entries}
    return getattr(v, kind)


def to_map(args: dict) -> pb.ValueMap:
    """A dict of arguments as a ``ValueMap``."""
    m = pb.ValueMap()
    fill_map(m, dict(args))
    return m


def from_map(m: pb.ValueMap) -> dict:
    """A ``ValueMap`` as a dict."""
    out = {}
    for e in m.entries:
        key = e.key
        # Text keys (every argument name) need no general decode: each attribute read of a
        # protobuf message costs as much as a small function call.
        if key.WhichOneof("kind") == "text":
            out[key.text] = from_value(e.value)
        else:
            out[_hashable(from_value(key))] = from_value(e.value)
    return out
