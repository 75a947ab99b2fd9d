"""A bridge worker: serves the registered tools to DSPex.Bridge.

Local (started by a pool, ``DSPex.Bridge.PythonWorker``): protobuf frames
(``priv/proto/dspex_bridge.proto``) travel over the pipe pair the pool opened as fds 3 and 4,
so stdout and stderr stay free: what the process writes there (``print()``, C extensions)
goes to the bridge as log lines, and can never corrupt a frame.

    python -m dspex_bridge.worker --module my_tools [--module more_tools] [--concurrency 8]

Remote (started by you, anywhere): the same frames on one gRPC stream to the node's bridge
server, for a pool started with ``accept_remote: [token: ...]``. The token comes from the
environment variable ``DSPEX_BRIDGE_TOKEN`` (or ``--token``). A dropped connection is dialled
again with backoff; a refusal (wrong token, unknown pool) ends the process with status 2.

    DSPEX_BRIDGE_TOKEN=... python -m dspex_bridge.worker --connect HOST:PORT --pool NAME \
        --module my_tools

Up to ``--concurrency`` calls run at once (threads; ``async def`` tools on one event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import importlib
import itertools
import os
import queue
import struct
import sys
import threading
import time
import traceback
from typing import Any, Dict, Iterator, Optional, Protocol

from . import dspex_bridge_pb2 as pb
from . import errors, tools, values
from .context import Change, Context, Watch

PROTOCOL = 1
MAX_FRAME = 64 * 1024 * 1024
PIPE_BUFFER = 64 * 1024
_HEADER = struct.Struct(">I")
# A call runs on the thread that read it; past this, another thread takes over reading.
INLINE_S = 0.001
# The watchdog stops looking at the clock after this long without calls.
WATCH_IDLE_S = 0.05


class Connection(Protocol):
    """A carrier of frames: ``recv`` returns ``None`` once the bridge has closed it."""

    def send(self, frame: pb.Frame) -> None: ...

    def recv(self) -> Optional[pb.Frame]: ...


class PipeConnection:
    """Frames of a 4-byte big-endian length and that many bytes, on two file descriptors."""

    def __init__(self, read_fd: int = 3, write_fd: int = 4) -> None:
        # Buffered: a small frame and its header come in one read(2), not two. A buffered
        # reader's read(n) waits for all n bytes (or the end of the pipe), and a buffered
        # writer writes all of a large frame even when write(2) takes only part of it.
        self._in = os.fdopen(read_fd, "rb", buffering=PIPE_BUFFER)
        self._out = os.fdopen(write_fd, "wb", buffering=PIPE_BUFFER)
        self._lock = threading.Lock()

    def recv(self) -> Optional[pb.Frame]:
        """The next frame, or ``None`` when the bridge closed the pipe."""
        header = self._in.read(4)
        if len(header) < 4:
            return None
        (length,) = _HEADER.unpack(header)
        if length > MAX_FRAME:
            raise ValueError(f"frame of {length} bytes (at most {MAX_FRAME})")
        body = self._in.read(length)
        if len(body) < length:
            return None
        return pb.Frame.FromString(body)

    def send(self, frame: pb.Frame) -> None:
        data = frame.SerializeToString()
        with self._lock:
            self._out.write(_HEADER.pack(len(data)) + data)
            self._out.flush()


CONNECT_METHOD = "/dspex_bridge.v1.Bridge/Connect"

# gRPC status codes that mean "do not dial again": the bridge refused this worker.
_REFUSALS = ("UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT")


class Refused(Exception):
    """The bridge refused this worker (its token, pool or protocol)."""


class GrpcConnection:
    """Frames on one ``Bridge.Connect`` stream (needs the ``grpcio`` package)."""

    def __init__(self, target: str) -> None:
        import grpc  # only remote workers need it

        self._grpc = grpc
        options = [
            ("grpc.max_send_message_length", MAX_FRAME),
            ("grpc.max_receive_message_length", MAX_FRAME),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 20_000),
        ]
        self._channel = grpc.insecure_channel(target, options=options)
        self._outbox: "queue.SimpleQueue[Optional[pb.Frame]]" = queue.SimpleQueue()
        connect = self._channel.stream_stream(
            CONNECT_METHOD,
            request_serializer=pb.Frame.SerializeToString,
            response_deserializer=pb.Frame.FromString,
        )
        self._inbox = connect(self._requests(), wait_for_ready=False)

    def _requests(self) -> Iterator[pb.Frame]:
        while True:
            frame = self._outbox.get()
            if frame is None:
                return
            yield frame

    def send(self, frame: pb.Frame) -> None:
        self._outbox.put(frame)

    def recv(self) -> Optional[pb.Frame]:
        """The next frame; ``None`` when the stream ended; raises ``Refused`` on a refusal."""
        try:
            return next(self._inbox)
        except StopIteration:
            return None
        except self._grpc.RpcError as exc:
            code = exc.code().name if exc.code() else ""
            if code in _REFUSALS:
                raise Refused(f"{code}: {exc.details()}") from None
            return None

    def close(self) -> None:
        self._outbox.put(None)
        self._channel.close()


class _Call:
    __slots__ = ("id", "session_id", "timeout", "deadline", "cancelled", "watches")

    def __init__(self, call: pb.Call) -> None:
        self.id = call.id
        self.session_id = call.session_id
        self.timeout = call.timeout_ms / 1000.0 if call.timeout_ms else None
        self.deadline = time.monotonic() + self.timeout if self.timeout else None
        # Set (once) by the reader when the bridge cancels the call.
        self.cancelled = False
        self.watches: list = []


class Worker:
    """Serves calls on one connection."""

    def __init__(self, conn: Connection, concurrency: int = 8, pool: str = "", token: str = "") -> None:
        self.conn = conn
        self.pool = pool
        self.token = token
        self.concurrency = max(1, concurrency)
        self.role = threading.Condition()
        self.reader: Optional[int] = None
        self.watchdog: Optional[int] = None
        self.watch_idle = False
        # when the reader began its inline call (None: it is reading), and the last such start
        self.inline: Optional[float] = None
        self.last_inline = 0.0
        self.running = 0
        self.backlog: "collections.deque[tuple]" = collections.deque()
        self.closed = False
        self.calls: Dict[int, _Call] = {}
        self.replies: Dict[int, Any] = {}
        self.waiting: Dict[int, threading.Event] = {}
        # watch id -> the queue its changes go to
        self.watches: Dict[int, "queue.SimpleQueue[Any]"] = {}
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    # -- the event loop for async tools, started on first use
    def loop(self) -> asyncio.AbstractEventLoop:
        with self.lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, daemon=True).start()
            return self._loop

    def serve(self, await_welcome: bool = False) -> int:
        """Serves until the bridge closes the carrier. A remote worker first waits for the
        bridge's welcome (its hello accepted)."""
        hello = pb.Frame()
        hello.hello.protocol = PROTOCOL
        hello.hello.pool = self.pool
        hello.hello.token = self.token
        hello.hello.tools.extend(tools.names())
        hello.hello.concurrency = self.concurrency
        hello.hello.worker = f"pid:{os.getpid()}"
        self.conn.send(hello)
        if await_welcome:
            first = self.conn.recv()
            if first is None or first.WhichOneof("body") != "welcome":
                return 1
        threads = [threading.Thread(target=self._thread, name=f"dspex-tool-{i}", daemon=True)
                   for i in range(self.concurrency + 1)]
        for t in threads:
            t.start()
        with self.role:
            while not self.closed:
                self.role.wait()
        return 0

    # -- who reads: one thread at a time holds the reader role. A call is run by the thread
    # that read it, inline, so a short call costs no hand-over between threads (the GIL makes
    # those dear: a thread pool cut throughput to a third). The role moves on when the call
    # waits for the bridge (a ctx request) or runs longer than INLINE_S, when a standby
    # thread (the watchdog) takes it over. There are concurrency + 1 threads and at most
    # concurrency calls run at once, so some thread can always read; calls beyond that
    # wait in the backlog.
    def _thread(self) -> None:
        me = threading.get_ident()
        while True:
            with self.role:
                call = None
                while True:
                    if self.closed:
                        return
                    if self.backlog and self.running < self.concurrency:
                        call = self.backlog.popleft()
                        self.running += 1
                        break
                    if self.reader is None:
                        self.reader = me
                        break
                    if self.watchdog is None:
                        self.watchdog = me
                    if self.watchdog != me:
                        self.role.wait()
                        continue
                    if self._watch_once(me):
                        break
            if call is not None:
                self._run_counted(me, call)
            else:
                self._read(me)

    def _watch_once(self, me: int) -> bool:
        """One wait of the watchdog (the role's lock held); True when it took the role."""
        now = time.monotonic()
        if self.inline is not None and self.running < self.concurrency:
            left = self.inline + INLINE_S - now
            if left <= 0:
                self.reader, self.inline, self.watchdog = me, None, None
                self.role.notify_all()
                return True
            self.role.wait(left)
        elif now - self.last_inline < WATCH_IDLE_S:
            self.role.wait(INLINE_S)
        else:
            self.watch_idle = True
            self.role.wait()
            self.watch_idle = False
        return False

    def _read(self, me: int) -> None:
        """Reads frames while this thread holds the reader role."""
        while True:
            frame = self._recv()
            if frame is None:
                return
            if frame.WhichOneof("body") != "call":
                self._handle(frame)
                continue
            call = self._admit(frame.call)
            with self.role:
                if self.running >= self.concurrency:
                    self.backlog.append(call)
                    continue
                self.running += 1
                self.inline = self.last_inline = time.monotonic()
                if self.watch_idle:
                    self.role.notify_all()
            if not self._run_counted(me, call):
                return

    def _recv(self) -> Optional[pb.Frame]:
        """The next frame; None (and every thread told) once the carrier has closed."""
        frame = self.conn.recv()
        if frame is None:
            with self.role:
                self.closed = True
                self.role.notify_all()
        return frame

    def _admit(self, call: pb.Call) -> tuple:
        state = _Call(call)
        with self.lock:
            self.calls[state.id] = state
        return (call, state)

    def _handle(self, frame: pb.Frame) -> None:
        """Every frame but a call."""
        kind = frame.WhichOneof("body")
        if kind == "session_reply":
            self._resolve(frame.session_reply)
        elif kind == "change":
            self._deliver(frame.change)
        elif kind == "cancel":
            with self.lock:
                state = self.calls.get(frame.cancel.id)
            if state:
                state.cancelled = True
                self._end_watches(state)
        elif kind == "ping":
            pong = pb.Frame()
            pong.pong.nonce = frame.ping.nonce
            self.conn.send(pong)

    def _read_for_reply(self, state: _Call, done: threading.Event) -> None:
        """A call waiting for its ctx reply while its thread holds the reader role reads the
        reply itself (no hand-over to another thread and back). Calls that arrive meanwhile
        go to the backlog, for the standby threads."""
        while not done.is_set() and not state.cancelled:
            frame = self._recv()
            if frame is None:
                return
            if frame.WhichOneof("body") == "call":
                call = self._admit(frame.call)
                with self.role:
                    self.backlog.append(call)
                    self.role.notify_all()
            else:
                self._handle(frame)

    def _run_counted(self, me: int, call: tuple) -> bool:
        """Runs a counted call; True if this thread still holds the reader role after it."""
        try:
            self._run(*call)
        finally:
            with self.role:
                self.running -= 1
                still_reader = self.reader == me
                if still_reader:
                    self.inline = None
                if self.backlog:
                    self.role.notify_all()
        return still_reader

    def _give_up_reading(self) -> None:
        """Before a call waits for something else than the bridge, its thread lets another
        one read."""
        with self.role:
            if self.reader == threading.get_ident():
                self.reader, self.inline = None, None
                self.role.notify_all()

    def _hold_reading(self) -> bool:
        """True if this thread holds the reader role; it then reads for itself (the
        watchdog leaves a reader that reads alone)."""
        with self.role:
            if self.reader == threading.get_ident():
                self.inline = None
                return True
            return False

    # -- calls
    def _run(self, call: pb.Call, state: _Call) -> None:
        result = pb.Frame()
        result.result.id = call.id
        try:
            fn, is_async = tools.lookup_with_kind(call.tool)
            if fn is None:
                raise LookupError(f"unknown tool: {call.tool}")
            ctx = Context(
                call.session_id,
                lambda op, args: self._request(state, op, args),
                lambda names: self._watch(state, names),
            )
            kwargs = values.from_map(call.args)
            if is_async:
                future = asyncio.run_coroutine_threadsafe(fn(ctx, **kwargs), self.loop())
                self._give_up_reading()
                value = future.result()
            else:
                value = fn(ctx, **kwargs)
            values.fill(result.result.ok, value)
        except BaseException as exc:  # every failure of a tool is its call's error
            result.result.error.type = type(exc).__name__
            result.result.error.message = str(exc)
            if not isinstance(exc, Exception):
                traceback.print_exc()
        finally:
            with self.lock:
                self.calls.pop(call.id, None)
            self._end_watches(state)
        self.conn.send(result)

    # -- ctx requests
    def _request(self, state: _Call, op: str, args: Dict[str, Any], request_id: Optional[int] = None) -> Any:
        if state.cancelled:
            raise errors.Cancelled("cancelled", "the call passed its deadline")
        if request_id is None:
            request_id = next(self.ids)
        done = threading.Event()
        with self.lock:
            self.waiting[request_id] = done
        frame = pb.Frame()
        frame.session_request.id = request_id
        frame.session_request.call_id = state.id
        frame.session_request.op = op
        values.fill_map(frame.session_request.args, {k: v for k, v in args.items() if v is not None})
        reading = self._hold_reading()
        self.conn.send(frame)
        if reading:
            self._read_for_reply(state, done)
            with self.role:
                self.inline = time.monotonic()
        if not done.wait(0 if reading else state.timeout):
            with self.lock:
                self.waiting.pop(request_id, None)
            raise errors.Cancelled("cancelled", "no answer before the call's deadline")
        with self.lock:
            reply = self.replies.pop(request_id)
        if reply.WhichOneof("outcome") == "ok":
            return values.from_value(reply.ok)
        detail = values.from_value(reply.error.detail) if reply.error.HasField("detail") else None
        raise errors.from_reply(reply.error.type, reply.error.message, detail)

    # -- watches: the bridge sends Change frames for a watch id until the call ends
    def _watch(self, state: _Call, names: list) -> Watch:
        inbox: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        request_id = next(self.ids)

        def close() -> None:
            with self.lock:
                self.watches.pop(request_id, None)
            if not state.cancelled:
                try:
                    self._request(state, "unwatch", {"id": request_id})
                except errors.BridgeError:
                    pass

        # Known under the request's id (the watch id), and as the call's, before the request
        # goes: a change or the call's end may come right behind the answer.
        watch = Watch(request_id, inbox, state.deadline, close)
        with self.lock:
            self.watches[request_id] = inbox
            state.watches.append(watch)
        try:
            self._request(state, "watch", {"names": names}, request_id=request_id)
        except BaseException:
            with self.lock:
                self.watches.pop(request_id, None)
                state.watches.remove(watch)
            raise
        return watch

    def _deliver(self, change: pb.Change) -> None:
        with self.lock:
            inbox = self.watches.get(change.watch_id)
        if inbox is not None:
            inbox.put(
                Change(
                    name=values.from_value(change.name),
                    old=values.from_value(change.old) if change.HasField("old") else None,
                    new=values.from_value(change.new) if change.HasField("new") else None,
                    version=change.version,
                    lost=change.lost,
                )
            )

    def _end_watches(self, state: _Call) -> None:
        if not state.watches:
            return
        with self.lock:
            for watch in state.watches:
                inbox = self.watches.pop(watch.id, None)
                if inbox is not None:
                    inbox.put(Watch._END)

    def _resolve(self, reply: pb.SessionReply) -> None:
        with self.lock:
            done = self.waiting.pop(reply.id, None)
            if done is not None:
                self.replies[reply.id] = reply
        if done is not None:
            done.set()


def _capture(fd: int, stream: int, conn: PipeConnection) -> None:
    """Sends what is written to ``fd`` (1 or 2) to the bridge as log lines."""
    read_end, write_end = os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for raw in lines:
                frame = pb.Frame()
                frame.log.stream = stream
                frame.log.line = raw.decode("utf-8", "replace").rstrip("\n")
                conn.send(frame)

    threading.Thread(target=pump, daemon=True).start()


def serve_remote(target: str, pool: str, token: str, concurrency: int, reconnect: bool = True) -> int:
    """Serves a pool from afar; dials again (backoff up to 5 s) when the stream drops."""
    delay = 0.1
    while True:
        conn = GrpcConnection(target)
        started = time.monotonic()
        try:
            Worker(conn, concurrency, pool, token).serve(await_welcome=True)
        except Refused as exc:
            print(f"dspex_bridge: the bridge at {target} refused this worker: {exc}", file=sys.stderr)
            return 2
        finally:
            conn.close()
        if not reconnect:
            return 0
        # A connection that lived a while resets the backoff.
        delay = 0.1 if time.monotonic() - started > 5 else min(delay * 2, 5.0)
        time.sleep(delay)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dspex_bridge.worker")
    parser.add_argument("--module", action="append", default=[], help="a module of @tool functions")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--pool", default="")
    parser.add_argument("--connect", metavar="HOST:PORT", help="serve a remote pool over gRPC")
    parser.add_argument("--token", help="the pool's token (default: $DSPEX_BRIDGE_TOKEN)")
    parser.add_argument("--no-reconnect", action="store_true", help="exit when the stream drops")
    opts = parser.parse_args(argv)
    if opts.connect:
        for name in opts.module:
            importlib.import_module(name)
        token = opts.token if opts.token is not None else os.environ.get("DSPEX_BRIDGE_TOKEN", "")
        return serve_remote(opts.connect, opts.pool, token, opts.concurrency, not opts.no_reconnect)
    conn = PipeConnection()
    _capture(1, 0, conn)
    _capture(2, 1, conn)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    for name in opts.module:
        importlib.import_module(name)
    return Worker(conn, opts.concurrency, opts.pool).serve()


if __name__ == "__main__":
    sys.exit(main())
