"""The floor for remote workers: a raw grpcio bidirectional stream ping-pong between two
Python processes (this one and a server it starts), no bridge protocol at all.

    python benches/support/grpc_pingpong.py [N]
    python benches/support/grpc_pingpong.py --rounds

Prints ``p50_us p99_us`` of N round trips of a small message. With ``--rounds`` it keeps the
stream open and, for each line ``N`` read from stdin, runs N round trips and prints their
p50, so a caller can alternate this floor with another path in the same seconds.
"""

import subprocess
import sys
import time
from concurrent import futures

import grpc

METHOD = "/bench.Echo/Stream"


def serve() -> None:
    def stream(requests, context):
        for message in requests:
            yield message

    handler = grpc.stream_stream_rpc_method_handler(stream)
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Stream": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # until the client closes it


def round_trips(replies, outbox, n: int) -> list:
    payload = b"\x1a\x05hello"
    times = []
    for _ in range(n):
        t = time.perf_counter_ns()
        outbox.put(payload)
        next(replies)
        times.append(time.perf_counter_ns() - t)
    times.sort()
    return times


def client(n: int, rounds: bool = False) -> None:
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    port = int(server.stdout.readline())
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call = channel.stream_stream(METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    import queue

    outbox: "queue.SimpleQueue" = queue.SimpleQueue()

    def requests():
        while True:
            item = outbox.get()
            if item is None:
                return
            yield item

    replies = call(requests())
    round_trips(replies, outbox, 500)  # warm-up
    if rounds:
        for line in sys.stdin:
            times = round_trips(replies, outbox, int(line))
            print(f"{times[len(times) // 2] / 1000:.1f}", flush=True)
    else:
        times = round_trips(replies, outbox, n)
        print(f"{times[len(times) // 2] / 1000:.1f} {times[int(len(times) * 0.99)] / 1000:.1f}")
    outbox.put(None)
    channel.close()
    server.stdin.close()
    server.wait()


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve()
    elif "--rounds" in sys.argv:
        client(0, rounds=True)
    else:
        client(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
