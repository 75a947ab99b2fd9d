"""Tests of the dspex_bridge Python SDK on its own: values, errors, tools, and a worker
served over real pipes, with this test playing the bridge's side of the protocol."""

import os
import struct
import sys
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "priv", "python"))

from dspex_bridge import dspex_bridge_pb2 as pb  # noqa: E402
from dspex_bridge import errors, tools, values  # noqa: E402
from dspex_bridge.worker import PipeConnection, Worker  # noqa: E402


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


_gates = {}


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


if __name__ == "__main__":
    unittest.main()
