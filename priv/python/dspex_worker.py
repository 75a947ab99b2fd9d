#!/usr/bin/env python3
"""The Python worker the DSPex bridge drives (standard library only).

Protocol: frames of a 4-byte big-endian length followed by that many bytes of UTF-8 JSON,
on stdin (requests) and stdout (responses). This is an Erlang Port with {:packet, 4}.

Request:  {"id": 7, "tool": "echo", "args": {...}}
Response: {"id": 7, "ok": <result>} or {"id": 7, "error": {"type": "...", "message": "..."}}

Tools, several of them for fault injection:
  ping                         -> "pong"
  calls                        -> how many requests this process has handled
  echo(value)                  -> value
  sleep(ms)                    -> ms, after sleeping
  raise(message)               -> an error response
  exit(code)                   -> the process exits with code
  hang                         -> never answers
  fail_next(n)                 -> the next n calls of any other tool answer with an error
  slow_next(n, ms)             -> the next n calls of any other tool first sleep ms
  garbage                      -> writes a frame that is not JSON
  oversized(bytes)             -> answers with a string of that many bytes
"""

import json
import os
import struct
import sys
import time

MAX_FRAME = 64 * 1024 * 1024


class FrameTooLarge(Exception):
    """A frame over MAX_FRAME; it was read past and dropped."""


def read_frame(stream):
    header = stream.read(4)
    if len(header) < 4:
        return None
    (length,) = struct.unpack(">I", header)
    if length > MAX_FRAME:
        # Skip the frame in bounded chunks, so the stream stays in step with the frames.
        left = length
        while left > 0:
            chunk = stream.read(min(left, 1 << 20))
            if not chunk:
                return None
            left -= len(chunk)
        return FrameTooLarge("frame too large: %d bytes (at most %d)" % (length, MAX_FRAME))
    body = stream.read(length)
    if len(body) < length:
        return None
    return body


def write_frame(stream, payload):
    stream.write(struct.pack(">I", len(payload)))
    stream.write(payload)
    stream.flush()


class Worker:
    def __init__(self):
        self.calls = 0
        self.fail_next = 0
        self.slow_next = 0
        self.slow_ms = 0

    def handle(self, tool, args):
        self.calls += 1
        if tool == "calls":
            return self.calls - 1
        if tool == "ping":
            return "pong"
        if tool == "fail_next":
            self.fail_next = int(args.get("n", 1))
            return self.fail_next
        if tool == "slow_next":
            self.slow_next = int(args.get("n", 1))
            self.slow_ms = int(args.get("ms", 100))
            return self.slow_next
        if self.slow_next > 0:
            self.slow_next -= 1
            time.sleep(self.slow_ms / 1000.0)
        if self.fail_next > 0:
            self.fail_next -= 1
            raise RuntimeError("injected failure")
        if tool == "echo":
            return args.get("value")
        if tool == "sleep":
            ms = int(args.get("ms", 0))
            time.sleep(ms / 1000.0)
            return ms
        if tool == "raise":
            raise RuntimeError(str(args.get("message", "raised on request")))
        if tool == "exit":
            sys.stdout.flush()
            os._exit(int(args.get("code", 1)))
        if tool == "hang":
            while True:
                time.sleep(3600)
        raise LookupError("unknown tool: %s" % tool)


def main():
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    worker = Worker()
    while True:
        frame = read_frame(stdin)
        if frame is None:
            return 0
        request_id = None
        try:
            if isinstance(frame, FrameTooLarge):
                raise frame
            request = json.loads(frame.decode("utf-8"))
            request_id = request.get("id")
            tool = request.get("tool")
            if tool == "garbage":
                write_frame(stdout, b"\xff not json \x00")
                continue
            if tool == "oversized":
                size = int(request.get("args", {}).get("bytes", 0))
                response = {"id": request_id, "ok": "x" * size}
            else:
                result = worker.handle(tool, request.get("args") or {})
                response = {"id": request_id, "ok": result}
        except Exception as exc:  # every failure becomes an error response
            response = {
                "id": request_id,
                "error": {"type": type(exc).__name__, "message": str(exc)},
            }
        write_frame(stdout, json.dumps(response).encode("utf-8"))


if __name__ == "__main__":
    sys.exit(main())
