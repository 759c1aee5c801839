#!/usr/bin/env python3
"""Paced chat-completion stream upstream for the capacity benchmark (scripts/bench.py).

Every request gets `200 text/event-stream` (chunked): the role chunk at once, then one content
chunk every `--interval` seconds, up to `--events` of them, then the finish chunk, the usage
chunk, `data: [DONE]` and the end of the body. A client that hangs up ends its stream. Built
for many thousands of concurrent streams at a low rate: one asyncio Protocol per connection,
one timer per stream, nothing recorded. nginx answers the non-stream requests of the same
benchmark (bench/upstream.conf), so this server only ever streams.

    python3 bench/sse_upstream.py --port N [--interval 1.0] [--events 900]

`GET /__stats` answers `{"open": streams in progress, "started": streams since start}`, which
the harness polls to see that a step's streams are gone before the next one.
Standard library only; binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
import time

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
CREATED = 1770000000


def chunk(payload: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def event(data: dict) -> bytes:
    """One SSE event as OpenAI writes chat chunks: a single `data:` line and a blank line."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def completion_chunk(delta: dict, finish: str | None = None) -> dict:
    return {"id": "chatcmpl-paced", "object": "chat.completion.chunk", "created": CREATED,
            "model": "gpt-4o-mini", "system_fingerprint": "fp_paced",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], "usage": None}


class Stats:
    """Counters shared by every connection of the server."""

    def __init__(self) -> None:
        self.open = 0
        self.started = 0


class StreamProtocol(asyncio.Protocol):
    """One upstream connection: reads a request, answers it with a paced stream, repeats."""

    def __init__(self, stats: Stats, interval: float, events: int) -> None:
        self.stats = stats
        self.interval = interval
        self.events = events
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.sent = 0
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_stream()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.streaming:
            self._next_request()

    def _next_request(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self._fail(b"431 Request Header Fields Too Large")
            return
        head = bytes(self.buffer[:end]).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._fail(b"411 Length Required")
            return
        length = int(headers.get("content-length", "0") or "0")
        if length > MAX_BODY_BYTES:
            self._fail(b"413 Payload Too Large")
            return
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[: end + 4 + length]
        path = parts[1] if len(parts) > 1 else "/"
        if path.startswith("/__stats"):
            self._answer_stats()
        else:
            self._start_stream()

    def _fail(self, status: bytes) -> None:
        if self.transport:
            self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    def _answer_stats(self) -> None:
        body = json.dumps({"open": self.stats.open, "started": self.stats.started}).encode()
        if self.transport:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
        self._next_request()

    def _start_stream(self) -> None:
        self.streaming = True
        self.sent = 0
        self.stats.open += 1
        self.stats.started += 1
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                b"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\nx-request-id: req_paced\r\n\r\n")
        first = event(completion_chunk({"role": "assistant", "content": ""}))
        if self.transport:
            self.transport.write(head + chunk(first))
        self.timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self.timer = None
        if self.transport is None:
            return
        if self.sent < self.events:
            self.transport.write(chunk(event(completion_chunk({"content": f"tok{self.sent} "}))))
            self.sent += 1
            self.timer = asyncio.get_running_loop().call_later(self.interval, self._tick)
            return
        usage = {"prompt_tokens": 11, "completion_tokens": self.sent, "total_tokens": 11 + self.sent}
        tail = event(completion_chunk({}, "stop"))
        tail += event({**completion_chunk({}), "choices": [], "usage": usage})
        tail += b"data: [DONE]\n\n"
        self.transport.write(chunk(tail) + b"0\r\n\r\n")
        self._end_stream()
        self._next_request()

    def _end_stream(self) -> None:
        if self.timer:
            self.timer.cancel()
            self.timer = None
        if self.streaming:
            self.streaming = False
            self.stats.open -= 1


def raise_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(port: int, interval: float, events: int) -> None:
    stats = Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: StreamProtocol(stats, interval, events), "127.0.0.1", port,
                                      backlog=16384, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"sse_upstream: listening on 127.0.0.1:{port}, one event every {interval:g} s", file=sys.stderr,
          flush=True)
    started = time.monotonic()
    await stop.wait()
    server.close()
    print(f"sse_upstream: stopped after {time.monotonic() - started:.0f} s, {stats.started} streams",
          file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Paced SSE chat-completion upstream for benchmarks.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between content events (1)")
    parser.add_argument("--events", type=int, default=900, help="content events per stream (900)")
    args = parser.parse_args(argv)
    raise_descriptor_limit()
    asyncio.run(serve(args.port, args.interval, args.events))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
