#!/usr/bin/env python3
"""Stream clients of the benchmark (scripts/bench.py runs them as child processes).

    python3 bench/streams.py probe --url URL --body FILE --requests N [--warmup W]
        One keep-alive connection, N streamed requests one after the other. Prints one JSON
        object: per request the time to the first SSE event and to the end of the body (ms),
        the number of `data:` lines, and the failures.

    python3 bench/streams.py hold --url URL --body FILE --streams N --hold S [--ramp R]
        Opens N concurrent streams (R new connections a second), waits until every one has
        delivered its first event, prints `HOLDING` on stdout, keeps them all open for S
        seconds counting the events each receives, then closes them and prints one JSON
        object. Progress goes to stderr.

The Authorization header comes from the environment variable BENCH_AUTH (never argv, which
`ps` shows). Requests carry `Accept: text/event-stream`. Responses may be chunked or have a
Content-Length. Standard library only; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import sys
import time
from urllib.parse import urlsplit


class ProtocolError(Exception):
    """The response could not be read as HTTP/1.1."""


class ResponseReader:
    """Incremental HTTP/1.1 response parser: head, then body framed by length or chunks.

    `feed` returns the body bytes found in the data; `complete` turns true at the end of the
    body (the last chunk, or Content-Length reached).
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.status: int | None = None
        self.chunked = False
        self.remaining = 0  # body bytes left (length framing) or in the current chunk
        self.state = "head"
        self.complete = False

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        body = bytearray()
        while not self.complete:
            if self.state == "head":
                if not self._read_head():
                    break
            elif self.state == "size":
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    break
                size = int(bytes(self.buffer[:end]).split(b";")[0].strip() or b"0", 16)
                del self.buffer[: end + 2]
                self.remaining = size
                self.state = "data" if size else "trailer"
            elif self.state == "data":
                if not self.buffer:
                    break
                take = min(self.remaining, len(self.buffer))
                body += self.buffer[:take]
                del self.buffer[:take]
                self.remaining -= take
                if self.remaining == 0:
                    if not self.chunked:
                        self.complete = True
                    else:
                        self.state = "crlf"
            elif self.state == "crlf":
                if len(self.buffer) < 2:
                    break
                del self.buffer[:2]
                self.state = "size"
            elif self.state == "trailer":
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    break
                del self.buffer[: end + 2]
                if end == 0:
                    self.complete = True
        return bytes(body)

    def _read_head(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > 65536:
                raise ProtocolError("response head too large")
            return False
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        try:
            self.status = int(lines[0].split(" ")[1])
        except (IndexError, ValueError):
            raise ProtocolError(f"bad status line {lines[0][:60]!r}") from None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.chunked = True
            self.state = "size"
        elif "content-length" in headers:
            self.remaining = int(headers["content-length"])
            self.state = "data"
            self.complete = self.remaining == 0
        else:
            raise ProtocolError("response without Content-Length or chunked framing")
        return True


class EventCounter:
    """Counts complete `data:` lines of an SSE body fed in arbitrary pieces."""

    def __init__(self) -> None:
        self.partial = b""
        self.events = 0
        self.done = False

    def feed(self, body: bytes) -> int:
        """Adds the complete `data:` lines in `body`; returns how many were added."""
        text = self.partial + body
        lines = text.split(b"\n")
        self.partial = lines.pop()
        added = 0
        for line in lines:
            if line.startswith(b"data:"):
                added += 1
                if line.rstrip(b"\r") in (b"data: [DONE]", b"data:[DONE]"):
                    self.done = True
        self.events += added
        return added


def request_bytes(url: str, body: bytes) -> tuple[str, int, bytes]:
    """(host, port, the raw POST request) for `url` with `body` and BENCH_AUTH."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             "Accept: text/event-stream", f"Content-Length: {len(body)}"]
    auth = os.environ.get("BENCH_AUTH", "")
    if auth:
        lines.append(f"Authorization: {auth}")
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# --- probe: sequential streams on one connection ------------------------------------------


def _one_stream(sock: socket.socket, request: bytes) -> tuple[float, float, int, int | None]:
    """Sends one request; returns (ms to first event, ms to end of body, data lines, status)."""
    reader = ResponseReader()
    counter = EventCounter()
    first = None
    start = time.perf_counter()
    sock.sendall(request)
    while not reader.complete:
        data = sock.recv(65536)
        if not data:
            raise ProtocolError("connection closed mid-response")
        if counter.feed(reader.feed(data)) and first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    first = first if first is not None else end
    return (first - start) * 1000, (end - start) * 1000, counter.events, reader.status


def probe(url: str, body: bytes, requests: int, warmup: int, timeout: float) -> dict:
    host, port, request = request_bytes(url, body)
    result: dict = {"ttfe_ms": [], "ttle_ms": [], "events": [], "failures": 0, "failure": None}
    sock: socket.socket | None = None
    started = time.perf_counter()
    for index in range(warmup + requests):
        if index == warmup:
            started = time.perf_counter()
        try:
            if sock is None:
                sock = socket.create_connection((host, port), timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ttfe, ttle, events, status = _one_stream(sock, request)
        except (OSError, ProtocolError) as error:
            result["failures"] += 1
            result["failure"] = f"{type(error).__name__}: {error}"
            if sock:
                sock.close()
            sock = None
            continue
        if status != 200:
            result["failures"] += 1
            result["failure"] = f"HTTP {status}"
        elif index >= warmup:
            result["ttfe_ms"].append(ttfe)
            result["ttle_ms"].append(ttle)
            result["events"].append(events)
    result["seconds"] = time.perf_counter() - started
    if sock:
        sock.close()
    return result


# --- hold: many concurrent streams ----------------------------------------------------------


class HeldStream(asyncio.Protocol):
    """One concurrent stream of the `hold` run."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.reader = ResponseReader()
        self.counter = EventCounter()
        self.transport: asyncio.Transport | None = None
        self.first_event = asyncio.get_running_loop().create_future()
        self.failure: str | None = None
        self.closed_by_us = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        try:
            added = self.counter.feed(self.reader.feed(data))
        except ProtocolError as error:
            self._fail(f"protocol: {error}")
            return
        if self.reader.status is not None and self.reader.status != 200:
            self._fail(f"HTTP {self.reader.status}")
            return
        if added and not self.first_event.done():
            self.first_event.set_result(True)
        if self.reader.complete and not self.closed_by_us:
            self._fail("stream ended early")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed_by_us:
            self._fail("connection closed" + (f": {exc}" if exc else ""))

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        if not self.first_event.done():
            self.first_event.set_result(False)
        if self.transport and not self.transport.is_closing():
            self.transport.abort()

    def close(self) -> None:
        self.closed_by_us = True
        if self.transport and not self.transport.is_closing():
            self.transport.abort()


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _open(loop: asyncio.AbstractEventLoop, host: str, port: int, request: bytes,
                streams: list[HeldStream], failures: list[str]) -> None:
    try:
        _, protocol = await loop.create_connection(lambda: HeldStream(request), host, port)
        streams.append(protocol)
    except OSError as error:
        failures.append(f"connect: {error.strerror or error}")


def _failure_kinds(failures: list[str]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for failure in failures:
        key = failure.split(":")[0][:60]
        kinds[key] = kinds.get(key, 0) + 1
    return kinds


async def hold(url: str, body: bytes, count: int, seconds: float, ramp: float, ready_deadline: float) -> dict:
    loop = asyncio.get_running_loop()
    host, port, request = request_bytes(url, body)
    streams: list[HeldStream] = []
    connect_failures: list[str] = []
    opening = []
    started = time.monotonic()

    batch = max(1, int(ramp / 50))
    for first in range(0, count, batch):
        for _ in range(min(batch, count - first)):
            opening.append(asyncio.ensure_future(_open(loop, host, port, request, streams, connect_failures)))
        due = started + (first + batch) / ramp
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        if (first // batch) % 50 == 0:
            _say(f"  opening: {len(streams)}/{count} connected")
    await asyncio.gather(*opening)

    deadline = time.monotonic() + ready_deadline
    pending = [s.first_event for s in streams if not s.first_event.done()]
    reported, reported_at = -1, 0.0
    while pending and time.monotonic() < deadline:
        await asyncio.wait(pending, timeout=1.0)
        pending = [f for f in pending if not f.done()]
        ready = sum(1 for s in streams if s.first_event.done() and s.first_event.result())
        if ready != reported and time.monotonic() - reported_at >= 1.0 or time.monotonic() - reported_at >= 10.0:
            _say(f"  first events: {ready}/{count}")
            reported, reported_at = ready, time.monotonic()
    open_seconds = time.monotonic() - started
    ready = sum(1 for s in streams if s.first_event.done() and s.first_event.result())

    print("HOLDING", flush=True)
    before = [s.counter.events for s in streams]
    hold_start = time.monotonic()
    await asyncio.sleep(seconds)
    held_for = time.monotonic() - hold_start
    deltas = [s.counter.events - b for s, b in zip(streams, before)]
    failures = connect_failures + [s.failure for s in streams if s.failure]
    alive = sum(1 for s in streams if s.failure is None)
    # Events arrive once a second; a stream missing more than two of them stalled.
    expected = int(held_for) - 2
    stalled = sum(1 for s, d in zip(streams, deltas) if s.failure is None and d < expected)

    for stream in streams:
        stream.close()
    deltas.sort()
    return {"streams": count, "connected": len(streams), "ready": ready, "alive": alive, "stalled": stalled,
            "failures": len(failures),
            "failure_kinds": _failure_kinds(failures), "open_seconds": round(open_seconds, 2),
            "held_seconds": round(held_for, 2),
            "events_min": deltas[0] if deltas else 0, "events_median": deltas[len(deltas) // 2] if deltas else 0,
            "not_ready": count - ready}


def raise_descriptor_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Stream clients of scripts/bench.py.")
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("probe", help="sequential streams on one connection: TTFE and TTLE")
    one.add_argument("--url", required=True)
    one.add_argument("--body", required=True, help="file with the JSON request body")
    one.add_argument("--requests", type=int, default=200)
    one.add_argument("--warmup", type=int, default=10)
    one.add_argument("--timeout", type=float, default=30.0)
    many = commands.add_parser("hold", help="many concurrent streams held open")
    many.add_argument("--url", required=True)
    many.add_argument("--body", required=True)
    many.add_argument("--streams", type=int, required=True)
    many.add_argument("--hold", type=float, required=True, help="seconds to hold them all open")
    many.add_argument("--ramp", type=float, default=2000.0, help="new connections a second (2000)")
    many.add_argument("--ready-deadline", type=float, default=30.0,
                      help="seconds allowed, after the ramp, until every stream has its first event")
    args = parser.parse_args(argv)

    with open(args.body, "rb") as handle:
        body = handle.read()
    if args.command == "probe":
        result = probe(args.url, body, args.requests, args.warmup, args.timeout)
    else:
        raise_descriptor_limit()
        result = asyncio.run(hold(args.url, body, args.streams, args.hold, args.ramp, args.ready_deadline))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
