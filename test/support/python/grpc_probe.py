"""Misbehaving gRPC clients of the bridge server, for the refusal tests.

    python grpc_probe.py HOST:PORT MODE

MODE ``garbage``: a first message that is not a frame; ``silent``: a stream that never says
hello; ``no_such_method``: a call of a method the server does not have. Prints the status
code the server ended the call with (``OK`` if it ended without one).
"""

import os
import sys
import time

import grpc


def main() -> int:
    target, mode = sys.argv[1], sys.argv[2]
    channel = grpc.insecure_channel(target)
    method = "/dspex_bridge.v1.Bridge/Connect" if mode != "no_such_method" else "/dspex_bridge.v1.Bridge/Nope"
    call = channel.stream_stream(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)

    def requests():
        if mode == "garbage":
            yield b"\xff\xfe not a frame \x00\x01"
        # Keep the request side open until the server answers.
        time.sleep(30)

    try:
        for _ in call(requests(), timeout=20):
            pass
        print("OK")
    except grpc.RpcError as exc:
        print(exc.code().name)
    sys.stdout.flush()
    # The request thread may still sleep; nothing else is left to do.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
