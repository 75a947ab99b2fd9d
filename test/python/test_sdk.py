"""Tests of the dspex_bridge Python SDK on its own: values, errors, tools, and a worker
served over real pipes, with this test playing the bridge's side of the protocol."""

import os
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "priv", "python"))

from dspex_bridge import dspex_bridge_pb2 as pb  # noqa: E402
from dspex_bridge import errors, tools, values  # noqa: E402
from dspex_bridge.worker import PipeConnection, Worker, serve_remote  # noqa: E402


class Values(unittest.TestCase):
    def test_round_trip(self):
        for obj in [None, True, 0, -(2**63), 2**63 - 1, 1.5, "π", b"\xff\x00", [1, [2, [3]]], {"a": {1: [None]}}]:
            self.assertEqual(values.from_value(values.to_value(obj)), obj)

    def test_tuples_cross_as_lists_and_list_keys_come_back_as_tuples(self):
        v = values.to_value({(1, 2): (3, 4)})
        self.assertEqual(values.from_value(v), {(1, 2): [3, 4]})

    def test_what_cannot_cross(self):
        with self.assertRaises(ValueError):
            values.to_value(2**64)
        with self.assertRaises(TypeError):
            values.to_value(object())
        deep = 1
        for _ in range(values.MAX_DEPTH + 1):
            deep = [deep]
        with self.assertRaises(ValueError):
            values.to_value(deep)


class Errors(unittest.TestCase):
    def test_reasons_map_to_typed_exceptions(self):
        e = errors.from_reply("version_mismatch", "stored 3", 3)
        self.assertIsInstance(e, errors.VersionMismatch)
        self.assertEqual(e.current, 3)
        self.assertIsInstance(errors.from_reply("access_denied", ""), errors.AccessDenied)
        self.assertIsInstance(errors.from_reply("variable_not_found", ""), errors.NotFound)
        self.assertEqual(errors.from_reply("locked_by", "", "opt").holder, "opt")
        other = errors.from_reply("something_else", "why")
        self.assertIs(type(other), errors.BridgeError)
        self.assertEqual(other.reason, "something_else")


class Tools(unittest.TestCase):
    def test_registry(self):
        @tools.tool(name="sdk_test_add")
        def add(ctx, a, b):
            return a + b

        @tools.tool
        async def sdk_test_async(ctx):
            return 1

        self.assertIs(tools.lookup("sdk_test_add"), add)
        self.assertTrue(tools.is_async(sdk_test_async))
        self.assertIn("sdk_test_add", tools.names())
        with self.assertRaises(ValueError):
            tools.tool(name="sdk_test_add")(lambda ctx: None)


@tools.tool
def sdk_read(ctx, name):
    return ctx.get_variable(name).value * 2


@tools.tool
def sdk_wait_then_read(ctx, gate):
    _gates[gate].wait(5)
    return ctx.get_variable("x").value


@tools.tool
def sdk_watch(ctx, count):
    seen = []
    with ctx.watch(["x"]) as changes:
        for change in changes:
            seen.append([change.name, change.new, change.version, change.lost])
            if len(seen) == count:
                break
    return seen


_gates = {}


class Pipes(unittest.TestCase):
    """PipeConnection reads buffered: frames must come out whole however the bytes arrive."""

    def setUp(self):
        self.r, self.w = os.pipe()
        out_r, out_w = os.pipe()
        self.conn = PipeConnection(self.r, out_w)
        os.close(out_r)

    def tearDown(self):
        try:
            os.close(self.w)
        except OSError:
            pass  # the test closed it

    @staticmethod
    def frame(nonce):
        f = pb.Frame()
        f.ping.nonce = nonce
        data = f.SerializeToString()
        return struct.pack(">I", len(data)) + data

    def test_frames_batched_in_one_write_come_out_one_by_one(self):
        os.write(self.w, b"".join(self.frame(n) for n in (1, 2, 3)))
        self.assertEqual([self.conn.recv().ping.nonce for _ in range(3)], [1, 2, 3])

    def test_a_frame_split_across_writes_waits_for_its_last_byte(self):
        data = self.frame(42)
        got = []
        reader = threading.Thread(target=lambda: got.append(self.conn.recv()))
        reader.start()
        for i in range(len(data)):
            os.write(self.w, data[i : i + 1])
            time.sleep(0.001)
        reader.join(5)
        self.assertEqual(got[0].ping.nonce, 42)

    def test_a_large_frame_after_a_small_one(self):
        big = pb.Frame()
        big.log.line = "x" * (3 * 1024 * 1024)
        data = big.SerializeToString()
        writer = threading.Thread(
            target=lambda: os.write(self.w, self.frame(1) + struct.pack(">I", len(data)) + data)
        )
        writer.start()
        self.assertEqual(self.conn.recv().ping.nonce, 1)
        self.assertEqual(len(self.conn.recv().log.line), 3 * 1024 * 1024)
        writer.join(5)

    def test_the_end_of_the_pipe_mid_frame_is_the_end(self):
        os.write(self.w, self.frame(7) + self.frame(8)[:5])
        os.close(self.w)
        self.assertEqual(self.conn.recv().ping.nonce, 7)
        self.assertIsNone(self.conn.recv())


class Bridge:
    """The bridge's side of a pipe pair."""

    def __init__(self):
        to_worker_r, self.to_worker = os.pipe()
        self.from_worker, from_worker_w = os.pipe()
        self.worker = Worker(PipeConnection(to_worker_r, from_worker_w), concurrency=4)
        threading.Thread(target=self.worker.serve, daemon=True).start()

    def send(self, frame):
        data = frame.SerializeToString()
        os.write(self.to_worker, struct.pack(">I", len(data)) + data)

    def recv(self):
        (n,) = struct.unpack(">I", self._read(4))
        frame = pb.Frame()
        frame.ParseFromString(self._read(n))
        return frame

    def _read(self, n):
        out = b""
        while len(out) < n:
            out += os.read(self.from_worker, n - len(out))
        return out

    def call(self, id, tool, args, timeout_ms=5000):
        f = pb.Frame()
        f.call.id = id
        f.call.tool = tool
        f.call.args.CopyFrom(values.to_map(args))
        f.call.session_id = "s1"
        f.call.timeout_ms = timeout_ms
        self.send(f)


class WorkerOverPipes(unittest.TestCase):
    def setUp(self):
        self.bridge = Bridge()
        hello = self.bridge.recv()
        self.assertEqual(hello.WhichOneof("body"), "hello")
        self.assertIn("sdk_read", hello.hello.tools)

    def test_a_call_asks_its_session_and_answers(self):
        self.bridge.call(7, "sdk_read", {"name": "temperature"})
        req = self.bridge.recv().session_request
        self.assertEqual((req.call_id, req.op), (7, "get_variable"))
        self.assertEqual(values.from_map(req.args), {"name": "temperature"})
        reply = pb.Frame()
        reply.session_reply.id = req.id
        reply.session_reply.ok.CopyFrom(
            values.to_value({"name": "temperature", "type": "float", "value": 0.25, "version": 1})
        )
        self.bridge.send(reply)
        result = self.bridge.recv().result
        self.assertEqual((result.id, values.from_value(result.ok)), (7, 0.5))

    def test_a_failed_request_raises_and_the_tool_error_comes_back(self):
        self.bridge.call(8, "sdk_read", {"name": "nope"})
        req = self.bridge.recv().session_request
        reply = pb.Frame()
        reply.session_reply.id = req.id
        reply.session_reply.error.type = "variable_not_found"
        reply.session_reply.error.message = "no such variable"
        self.bridge.send(reply)
        result = self.bridge.recv().result
        self.assertEqual((result.error.type, result.error.message), ("NotFound", "no such variable"))

    def test_a_cancelled_call_makes_no_more_requests(self):
        _gates["g"] = threading.Event()
        self.bridge.call(9, "sdk_wait_then_read", {"gate": "g"})
        cancel = pb.Frame()
        cancel.cancel.id = 9
        self.bridge.send(cancel)
        ping = pb.Frame()
        ping.ping.nonce = 5
        self.bridge.send(ping)
        self.assertEqual(self.bridge.recv().pong.nonce, 5)
        _gates["g"].set()
        result = self.bridge.recv().result
        self.assertEqual((result.id, result.error.type), (9, "Cancelled"))

    def test_unknown_tools_and_bad_arguments_are_errors(self):
        self.bridge.call(10, "no_such_tool", {})
        self.assertEqual(self.bridge.recv().result.error.type, "LookupError")
        self.bridge.call(11, "sdk_read", {"wrong": 1})
        self.assertEqual(self.bridge.recv().result.error.type, "TypeError")

    def _answer(self, request, value):
        reply = pb.Frame()
        reply.session_reply.id = request.id
        reply.session_reply.ok.CopyFrom(values.to_value(value))
        self.bridge.send(reply)

    def _change(self, watch_id, version, new, lost=False):
        f = pb.Frame()
        f.change.watch_id = watch_id
        f.change.name.text = "x"
        f.change.new.CopyFrom(values.to_value(new))
        f.change.version = version
        f.change.lost = lost
        self.bridge.send(f)

    def test_a_watch_yields_its_changes_and_closes_with_the_tool(self):
        self.bridge.call(12, "sdk_watch", {"count": 2})
        req = self.bridge.recv().session_request
        self.assertEqual((req.op, values.from_map(req.args)), ("watch", {"names": ["x"]}))
        self._answer(req, req.id)
        # A change for another watch is not this tool's.
        self._change(req.id + 1000, 9, "other")
        self._change(req.id, 2, "a")
        self._change(req.id, 3, "b")
        unwatch = self.bridge.recv().session_request
        self.assertEqual((unwatch.op, values.from_map(unwatch.args)), ("unwatch", {"id": req.id}))
        self._answer(unwatch, None)
        result = self.bridge.recv().result
        self.assertEqual(values.from_value(result.ok), [["x", "a", 2, False], ["x", "b", 3, False]])

    def test_a_lost_change_is_delivered_and_a_cancel_ends_the_watch(self):
        self.bridge.call(13, "sdk_watch", {"count": 5})
        req = self.bridge.recv().session_request
        self._answer(req, req.id)
        self._change(req.id, 0, None, lost=True)
        cancel = pb.Frame()
        cancel.cancel.id = 13
        self.bridge.send(cancel)
        result = self.bridge.recv().result
        self.assertEqual(values.from_value(result.ok), [["x", None, 0, True]])


class RemoteWorkerOverGrpc(unittest.TestCase):
    """The remote carrier against a grpcio server that plays the bridge."""

    def setUp(self):
        import grpc
        from concurrent import futures

        self.grpc = grpc
        self.hellos = []
        self.refuse = False

        def connect(requests, context):
            hello = next(requests)
            self.hellos.append(hello.hello)
            if self.refuse:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong or missing token")
            welcome = pb.Frame()
            welcome.welcome.protocol = 1
            yield welcome
            call = pb.Frame()
            call.call.id = 1
            call.call.tool = "sdk_test_add_remote"
            call.call.args.CopyFrom(values.to_map({"a": 2, "b": 3}))
            yield call
            self.result = next(requests).result
            # Ends the stream: the worker dials again.

        handler = grpc.stream_stream_rpc_method_handler(
            connect, request_deserializer=pb.Frame.FromString, response_serializer=pb.Frame.SerializeToString
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("dspex_bridge.v1.Bridge", {"Connect": handler})])
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.target = f"127.0.0.1:{port}"

        @tools.tool(name="sdk_test_add_remote")
        def add(ctx, a, b):
            return a + b

    def tearDown(self):
        self.server.stop(0)
        tools._TOOLS.pop("sdk_test_add_remote", None)

    def test_hello_with_token_then_calls_and_a_redial_after_the_stream_ends(self):
        worker = threading.Thread(target=serve_remote, args=(self.target, "p", "secret-token", 2), daemon=True)
        worker.start()
        deadline = time.monotonic() + 10
        while len(self.hellos) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertGreaterEqual(len(self.hellos), 2, "the worker dials again after the stream ends")
        self.assertEqual((self.hellos[0].pool, self.hellos[0].token), ("p", "secret-token"))
        self.assertEqual((self.result.id, values.from_value(self.result.ok)), (1, 5))

    def test_a_refusal_ends_the_worker_with_status_2(self):
        self.refuse = True
        self.assertEqual(serve_remote(self.target, "p", "bad", 2), 2)


if __name__ == "__main__":
    unittest.main()
