#!/usr/bin/env python3
"""Mock OpenAI-style upstream for Tollgate's end-to-end tests and benchmarks.

A stdlib-only asyncio HTTP/1.1 server (one task per connection, keep-alive, Content-Length
and chunked request bodies, `Expect: 100-continue`) that speaks the wire formats of
/work/shared/docs/openai-wire.md:

    POST /v1/chat/completions   chat completion, JSON or SSE stream
    POST /v1/responses          Responses API, JSON or SSE stream with `event:` lines
    GET  /v1/models             model list
    anything else               404 in the OpenAI error shape

Behaviour per request comes from an unknown top-level body field that Tollgate passes
through, `"mock": {...}` (tag, events, delay_ms, status, error_message, error_type,
error_code, stall_before_ms, fail_after, reset_after, stall_after, stall_ms, not_json,
keepalive, cached_tokens, reasoning_tokens, incomplete). fail_after, stall_after and keepalive
act on streams; on a non-stream answer reset_after cuts the body in half and delay_ms delays
the whole answer by events × delay_ms. Control endpoints:

    GET  /__mock/health                                   readiness, {"ok": true}
    GET  /__mock/requests[?tag=T]                         {"requests": [record, ...]}
    GET  /__mock/wait?tag=T&until=finished&timeout=S      the first record with tag T once
                                                          it has finished (or, with
                                                          until=received, once it exists);
                                                          408 after S seconds
    POST /__mock/reset                                    forget all records

A record holds what the interface promises (id, tag, method, path, headers, body, json,
status, stream, usage, events_sent, completed, disconnected, received_at, finished_at) plus
`query`, `response_headers`, `response_body` (non-stream answers) and `sent_events`
(`{"event", "data"}` for every SSE event written), so tests can compare what a client got
with what the mock sent. `events_sent` counts content deltas. Times are time.monotonic().

While a response is being produced the connection is watched for EOF, so a proxy that hangs
up during a sleep is noticed at once: the record gets `disconnected` and `finished_at` then.
Logs: at most one line per request on stderr, never a body or a header value.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import email.utils
import http
import json
import random
import resource
import signal
import string
import sys
import time
import traceback
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 32 * 1024 * 1024
READ_SIZE = 64 * 1024

MODELS = [
    {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
    {"id": "gpt-4.1-nano", "object": "model", "created": 1744321025, "owned_by": "system"},
    {"id": "o4-mini", "object": "model", "created": 1744225351, "owned_by": "system"},
]

RATE_LIMIT_REQUESTS = 10_000
RATE_LIMIT_TOKENS = 30_000_000
FINGERPRINT = "fp_" + uuid.uuid4().hex[:10]
NOT_JSON_BODY = b"<html><body>upstream hiccup: this is not JSON</body></html>\n"


class ProtocolFault(Exception):
    """A request the HTTP layer cannot accept; answered with `status` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """The proxy closed the connection (or reset it) before the mock finished its answer."""


class ResetRequested(Exception):
    """The plan asked for the TCP connection to be aborted mid-body (`reset_after`)."""


NOT_PARSED = object()
"""Stands for a request body that is empty or not JSON."""


class BadOption(Exception):
    """A `mock` option in the request body has the wrong type; answered with a 400."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.param = f"mock.{name}"
        self.message = message


@dataclass
class Request:
    """One parsed HTTP request: the head as sent and the de-chunked body bytes."""

    method: str
    target: str
    path: str
    query: str
    version: str
    headers: dict[str, str]
    body: bytes
    received_at: float

    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


def compact(value: object) -> str:
    """JSON on one line without spaces, as OpenAI writes it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    """The OpenAI error object every non-2xx answer carries."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def status_phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def obfuscation() -> str:
    """Random padding like the `obfuscation` field OpenAI adds to stream events."""
    alphabet = string.ascii_letters + string.digits
    return "".join(random.choices(alphabet, k=random.randint(1, 16)))


class Connection:
    """One accepted TCP connection: buffered reads, chunked writes and hang-up detection.

    The watcher task reads while a response is produced; a read of EOF (or a reset) sets
    `gone`, which wakes any `sleep` at once. Bytes the watcher reads early (a pipelined
    request) stay in the buffer for the next `read_head`.

    Limitation: a client that half-closes its side after sending the request counts as gone;
    libcurl never does that, and telling the two apart would need a write probe.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()
        self.eof = False
        self.gone = asyncio.Event()
        self.watcher: asyncio.Task | None = None
        # A high-water mark of 0 makes drain() wait until the kernel took every byte,
        # so an event written is an event sent, and an abort loses nothing already written.
        writer.transport.set_write_buffer_limits(high=0)

    async def _fill(self) -> None:
        data = await self.reader.read(READ_SIZE)
        if not data:
            self.eof = True
        self.buffer += data

    async def read_head(self) -> bytes | None:
        """Bytes of the next request head without the blank line; None on a clean EOF."""
        while True:
            while self.buffer.startswith(b"\r\n"):
                del self.buffer[:2]
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buffer[:end])
                del self.buffer[: end + 4]
                return head
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise ProtocolFault(431, "Request header fields are too large.")
            if self.eof:
                if self.buffer:
                    raise ProtocolFault(400, "The connection closed in the middle of a request head.")
                return None
            await self._fill()

    async def read_exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if self.eof:
                raise ProtocolFault(400, "The connection closed in the middle of a request body.")
            await self._fill()
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    async def read_line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            if len(self.buffer) > MAX_HEAD_BYTES or self.eof:
                raise ProtocolFault(400, "A chunk-size line is malformed or missing.")
            await self._fill()

    async def read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_text = (await self.read_line()).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolFault(400, "A chunk size is not hexadecimal.") from None
            if size == 0:
                break
            if len(body) + size > MAX_BODY_BYTES:
                raise ProtocolFault(413, "The request body is too large.")
            body += await self.read_exactly(size)
            if await self.read_line() != b"":
                raise ProtocolFault(400, "A chunk is not followed by CRLF.")
        while await self.read_line() != b"":
            pass
        return bytes(body)

    def start_watch(self) -> None:
        self.gone.clear()
        self.watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        try:
            while not self.eof:
                await self._fill()
        except (ConnectionError, OSError):
            pass
        self.gone.set()

    async def stop_watch(self) -> None:
        if self.watcher is None:
            return
        self.watcher.cancel()
        try:
            await self.watcher
        except asyncio.CancelledError:
            pass
        self.watcher = None

    async def sleep(self, seconds: float) -> None:
        """Sleep, but raise ClientGone the moment the proxy hangs up."""
        if self.gone.is_set():
            raise ClientGone()
        if seconds <= 0:
            return
        try:
            await asyncio.wait_for(self.gone.wait(), seconds)
        except asyncio.TimeoutError:
            return
        raise ClientGone()

    async def send(self, data: bytes) -> None:
        """Write and wait until the kernel has the bytes; ClientGone if the proxy left."""
        if self.gone.is_set() or self.writer.is_closing():
            raise ClientGone()
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            self.gone.set()
            raise ClientGone() from None

    def abort(self) -> None:
        self.writer.transport.abort()


def parse_head(head: bytes, received_at: float) -> tuple[Request, int | None, bool]:
    """Parse a request head; returns the request (body empty), its Content-Length and chunked flag."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:
        raise ProtocolFault(400, "The request head is not readable.") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ProtocolFault(400, "The request line is malformed.")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ProtocolFault(400, "A header line is malformed.")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    split = urlsplit(target)
    request = Request(method, target, split.path, split.query, version, headers, b"", received_at)
    chunked = headers.get("transfer-encoding", "").lower().split(",")[-1].strip() == "chunked"
    length = None
    if not chunked and "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise ProtocolFault(400, "Content-Length is not a number.") from None
        if length < 0:
            raise ProtocolFault(400, "Content-Length is negative.")
        if length > MAX_BODY_BYTES:
            raise ProtocolFault(413, "The request body is too large.")
    return request, length, chunked


class RecordStore:
    """Records of API requests in arrival order, with waiting by tag.

    Bounded: past `limit` records the oldest are forgotten, so a long benchmark cannot grow
    the mock without end. Every change notifies the waiters of /__mock/wait.
    """

    def __init__(self, limit: int) -> None:
        self.records: collections.deque[dict] = collections.deque()
        self.by_tag: dict[str, list[dict]] = {}
        self.limit = limit
        self.changed = asyncio.Condition()

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def add(self, record: dict) -> None:
        self.records.append(record)
        if record["tag"] is not None:
            self.by_tag.setdefault(record["tag"], []).append(record)
        while len(self.records) > self.limit:
            old = self.records.popleft()
            tagged = self.by_tag.get(old["tag"])
            if tagged:
                tagged.remove(old)
                if not tagged:
                    del self.by_tag[old["tag"]]
        await self.notify()

    def listing(self, tag: str | None) -> list[dict]:
        if tag is None:
            return list(self.records)
        return list(self.by_tag.get(tag, []))

    async def reset(self) -> None:
        self.records.clear()
        self.by_tag.clear()
        await self.notify()

    async def wait(self, tag: str, until: str, timeout: float) -> dict | None:
        def ready() -> dict | None:
            tagged = self.by_tag.get(tag)
            if not tagged:
                return None
            if until == "received" or tagged[0]["finished_at"] is not None:
                return tagged[0]
            return None

        try:
            async with self.changed:
                await asyncio.wait_for(self.changed.wait_for(ready), timeout)
        except asyncio.TimeoutError:
            return None
        return ready()


def content_strings(value: object):
    """Every string that counts as prompt text: message contents and the `text` of parts."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from content_strings(item)
    elif isinstance(value, dict):
        if isinstance(value.get("text"), str):
            yield value["text"]
        if "content" in value:
            yield from content_strings(value["content"])


@dataclass
class Plan:
    """What the mock was asked to do for one request, read from `mock` and the body."""

    tag: str | None
    events: int
    delay: float
    status: int | None
    error_message: str | None
    error_type: str | None
    error_code: str | None
    stall_before: float
    fail_after: int | None
    reset_after: int | None
    stall_after: int | None
    stall: float
    not_json: bool
    keepalive: bool
    cached: int
    reasoning: int
    incomplete: bool


def _opt_int(opts: dict, name: str, default: int | None) -> int | None:
    value = opts.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise BadOption(name, f"mock.{name} must be a non-negative number.")
    return int(value)


def _opt_str(opts: dict, name: str) -> str | None:
    value = opts.get(name)
    if value is not None and not isinstance(value, str):
        raise BadOption(name, f"mock.{name} must be a string.")
    return value


def make_plan(opts: dict, default_events: int, default_delay_ms: int) -> Plan:
    """Read and type-check the `mock` options (BadOption on a wrong type)."""
    tag = opts.get("tag")
    return Plan(
        tag=None if tag is None else str(tag),
        events=_opt_int(opts, "events", default_events) or 0,
        delay=(_opt_int(opts, "delay_ms", default_delay_ms) or 0) / 1000,
        status=_opt_int(opts, "status", None),
        error_message=_opt_str(opts, "error_message"),
        error_type=_opt_str(opts, "error_type"),
        error_code=_opt_str(opts, "error_code"),
        stall_before=(_opt_int(opts, "stall_before_ms", 0) or 0) / 1000,
        fail_after=_opt_int(opts, "fail_after", None),
        reset_after=_opt_int(opts, "reset_after", None),
        stall_after=_opt_int(opts, "stall_after", None),
        stall=(_opt_int(opts, "stall_ms", 60_000) or 0) / 1000,
        not_json=bool(opts.get("not_json")),
        keepalive=bool(opts.get("keepalive")),
        cached=_opt_int(opts, "cached_tokens", 0) or 0,
        reasoning=_opt_int(opts, "reasoning_tokens", 0) or 0,
        incomplete=bool(opts.get("incomplete")),
    )


def due(limit: int | None, index: int, last: bool) -> bool:
    """Whether a fault set to fire after `limit` content events fires before event `index`."""
    return limit is not None and (limit == index or (last and limit >= index))


class Exchange:
    """One API request being answered: the record, the response head and the SSE writer."""

    def __init__(self, conn: Connection, request: Request, record: dict, keep_alive: bool) -> None:
        self.conn = conn
        self.request = request
        self.record = record
        self.keep_alive = keep_alive
        self.prompt_tokens: int | None = None

    def base_headers(self) -> list[tuple[str, str]]:
        elapsed = int((time.monotonic() - self.request.received_at) * 1000)
        remaining_tokens = RATE_LIMIT_TOKENS - (self.prompt_tokens or 0)
        return [
            ("date", email.utils.formatdate(usegmt=True)),
            ("x-request-id", self.record["id"]),
            ("openai-processing-ms", str(elapsed)),
            ("openai-version", "2020-10-01"),
            ("x-ratelimit-limit-requests", str(RATE_LIMIT_REQUESTS)),
            ("x-ratelimit-limit-tokens", str(RATE_LIMIT_TOKENS)),
            ("x-ratelimit-remaining-requests", str(RATE_LIMIT_REQUESTS - 1)),
            ("x-ratelimit-remaining-tokens", str(remaining_tokens)),
            ("x-ratelimit-reset-requests", "6ms"),
            ("x-ratelimit-reset-tokens", "0s"),
            ("access-control-expose-headers", "X-Request-ID"),
        ]

    def head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        headers = headers + [("connection", "keep-alive" if self.keep_alive else "close")]
        if self.keep_alive:
            headers.append(("keep-alive", "timeout=600"))
        self.record["status"] = status
        self.record["response_headers"] = {name: value for name, value in headers}
        phrase = status_phrase(status)
        lines = [f"HTTP/1.1 {status} {phrase}"] + [f"{name}: {value}" for name, value in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send_body(self, status: int, body: bytes, content_type: str, extra=()) -> None:
        headers = self.base_headers() + list(extra)
        headers += [("content-type", content_type), ("content-length", str(len(body)))]
        self.record["response_body"] = body.decode("utf-8", "replace")
        await self.conn.send(self.head(status, headers) + body)

    async def send_json(self, status: int, payload: dict, extra=()) -> None:
        await self.send_body(status, compact(payload).encode(), "application/json", extra)

    async def send_error(self, status: int, message: str, kind: str, param=None, code=None) -> None:
        extra = [("retry-after", "0"), ("x-should-retry", "false")] if status == 429 or status >= 500 else []
        await self.send_json(status, error_body(message, kind, param, code), extra)

    async def start_stream(self) -> None:
        headers = self.base_headers() + [
            ("content-type", "text/event-stream; charset=utf-8"),
            ("transfer-encoding", "chunked"),
        ]
        self.record["sent_events"] = []
        await self.conn.send(self.head(200, headers))

    async def chunk(self, data: bytes) -> None:
        await self.conn.send(b"%x\r\n%s\r\n" % (len(data), data))

    async def event(self, data: str, name: str | None, keepalive: bool) -> None:
        """One SSE event as its own chunk, after an optional `: keep-alive` comment chunk."""
        if keepalive:
            await self.chunk(b": keep-alive\n\n")
        prefix = f"event: {name}\n" if name else ""
        self.record["sent_events"].append({"event": name, "data": data})
        await self.chunk(f"{prefix}data: {data}\n\n".encode())

    async def end_stream(self) -> None:
        await self.conn.send(b"0\r\n\r\n")


class MockUpstream:
    """The HTTP application: routes, control endpoints and the two API dialects."""

    def __init__(self, events: int, delay_ms: int, max_records: int, quiet: bool) -> None:
        self.default_events = events
        self.default_delay_ms = delay_ms
        self.store = RecordStore(max_records)
        self.quiet = quiet
        self.connections: set[asyncio.Task] = set()

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
        conn = Connection(reader, writer)
        try:
            while await self.serve_one(conn):
                pass
        except (ConnectionError, OSError, ClientGone):
            pass
        except Exception as error:  # noqa: BLE001 - one bad connection must not stop the mock
            where = traceback.extract_tb(error.__traceback__)[-1]
            print(f"mock_upstream internal error type={type(error).__name__} line={where.lineno}",
                  file=sys.stderr, flush=True)
        finally:
            await conn.stop_watch()
            if task is not None:
                self.connections.discard(task)
            writer.close()

    async def serve_one(self, conn: Connection) -> bool:
        """Read and answer one request; whether the connection may carry another."""
        try:
            head = await conn.read_head()
            if head is None:
                return False
            request, length, chunked = parse_head(head, time.monotonic())
            if conn.buffer == b"" and request.headers.get("expect", "").lower() == "100-continue":
                if chunked or length:
                    await conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            if chunked:
                request.body = await conn.read_chunked()
            elif length:
                request.body = await conn.read_exactly(length)
        except ProtocolFault as fault:
            await self.protocol_fault(conn, fault)
            return False
        if request.path.startswith("/__mock/"):
            await self.control(conn, request)
            return request.keep_alive()
        return await self.api(conn, request)

    async def protocol_fault(self, conn: Connection, fault: ProtocolFault) -> None:
        body = json.dumps(error_body(fault.message, "invalid_request_error")).encode()
        head = (
            f"HTTP/1.1 {fault.status} {status_phrase(fault.status)}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        try:
            await conn.send(head.encode() + body)
        except ClientGone:
            pass

    async def control(self, conn: Connection, request: Request) -> None:
        """The /__mock/ endpoints; they leave no record and no log line."""
        query = {k: v[-1] for k, v in parse_qs(request.query).items()}
        status, payload = 200, {"ok": True}
        if request.method == "GET" and request.path == "/__mock/health":
            pass
        elif request.method == "GET" and request.path == "/__mock/requests":
            payload = {"requests": self.store.listing(query.get("tag"))}
        elif request.method == "GET" and request.path == "/__mock/wait":
            status, payload = await self.control_wait(query)
        elif request.method == "POST" and request.path == "/__mock/reset":
            await self.store.reset()
        else:
            status = 404
            message = f"Unknown control endpoint ({request.method} {request.path})."
            payload = error_body(message, "invalid_request_error")
        body = json.dumps(payload).encode()
        connection = "keep-alive" if request.keep_alive() else "close"
        head = (
            f"HTTP/1.1 {status} {status_phrase(status)}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: {connection}\r\n\r\n"
        )
        await conn.send(head.encode() + body)

    async def control_wait(self, query: dict[str, str]) -> tuple[int, dict]:
        tag = query.get("tag")
        until = query.get("until", "finished")
        try:
            timeout = float(query.get("timeout", "10"))
        except ValueError:
            timeout = -1.0
        if not tag or until not in ("finished", "received") or not 0 <= timeout <= 3600:
            return 400, error_body("wait needs tag, until=finished|received and 0 <= timeout <= 3600.",
                                   "invalid_request_error")
        record = await self.store.wait(tag, until, timeout)
        if record is None:
            return 408, error_body(f"No request tagged {tag!r} reached {until!r} in {timeout} s.",
                                   "invalid_request_error")
        return 200, record

    def new_record(self, request: Request) -> dict:
        return {
            "id": "req_" + uuid.uuid4().hex,
            "tag": None,
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": dict(request.headers),
            "body": request.body.decode("utf-8", "replace"),
            "json": None,
            "status": None,
            "stream": False,
            "usage": None,
            "events_sent": 0,
            "completed": False,
            "disconnected": False,
            "received_at": request.received_at,
            "finished_at": None,
            "response_headers": None,
            "response_body": None,
            "sent_events": None,
        }

    async def api(self, conn: Connection, request: Request) -> bool:
        """Answer an API request while watching for hang-up; record how it ended."""
        record = self.new_record(request)
        keep_alive = request.keep_alive()
        exchange = Exchange(conn, request, record, keep_alive)
        body = self.decode_body(request, record)
        await self.store.add(record)
        conn.start_watch()
        try:
            await self.route(exchange, body)
            record["completed"] = True
        except ClientGone:
            record["disconnected"] = True
            keep_alive = False
        except ResetRequested:
            conn.abort()
            keep_alive = False
        finally:
            record["finished_at"] = time.monotonic()
            await conn.stop_watch()
            self.log(record)
            await self.store.notify()
        return keep_alive and not conn.eof

    def decode_body(self, request: Request, record: dict) -> object:
        """The parsed JSON body (also stored in the record), or NOT_PARSED if empty or not JSON."""
        if not request.body:
            return NOT_PARSED
        try:
            value = json.loads(request.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return NOT_PARSED
        record["json"] = value
        if isinstance(value, dict):
            opts = value.get("mock")
            if isinstance(opts, dict) and opts.get("tag") is not None:
                record["tag"] = str(opts["tag"])
            record["stream"] = value.get("stream") is True
        return value

    async def route(self, exchange: Exchange, body: object) -> None:
        request = exchange.request
        endpoint = (request.method, request.path)
        if endpoint == ("GET", "/v1/models"):
            await exchange.send_json(200, {"object": "list", "data": MODELS})
        elif endpoint in (("POST", "/v1/chat/completions"), ("POST", "/v1/responses")):
            await self.generate(exchange, body)
        else:
            message = f"Invalid URL ({request.method} {request.path})"
            await exchange.send_error(404, message, "invalid_request_error")

    async def generate(self, exchange: Exchange, body: object) -> None:
        """The shared path of chat and responses: mock options, faults, validation, answer."""
        if body is NOT_PARSED or not isinstance(body, dict):
            message = "The request body must be a JSON object; it could not be parsed as one."
            await exchange.send_error(400, message, "invalid_request_error")
            return
        opts = body.get("mock") if isinstance(body.get("mock"), dict) else {}
        try:
            plan = make_plan(opts, self.default_events, self.default_delay_ms)
        except BadOption as bad:
            await exchange.send_error(400, bad.message, "invalid_request_error", bad.param)
            return
        chat = exchange.request.path == "/v1/chat/completions"
        exchange.prompt_tokens = 10 + sum(
            len(s.encode("utf-8", "surrogatepass")) for s in content_strings(body.get("messages" if chat else "input"))
        ) // 4
        await exchange.conn.sleep(plan.stall_before)
        if plan.status is not None and plan.status >= 400:
            await self.planned_error(exchange, plan)
            return
        invalid = validate(body, chat)
        if invalid is not None:
            await exchange.send_error(400, invalid[0], "invalid_request_error", invalid[1])
            return
        if plan.not_json:
            await exchange.send_body(200, NOT_JSON_BODY, "application/json")
            return
        dialect = ChatDialect(exchange, body, plan) if chat else ResponsesDialect(exchange, body, plan)
        await dialect.answer()

    async def planned_error(self, exchange: Exchange, plan: Plan) -> None:
        status = plan.status or 500
        default_kind = "server_error" if status >= 500 else "requests" if status == 429 else "invalid_request_error"
        kind = plan.error_type or default_kind
        code = plan.error_code or ("rate_limit_exceeded" if plan.status == 429 else None)
        message = plan.error_message or f"Mock upstream answered {status} as asked."
        await exchange.send_error(status, message, kind, None, code)

    def log(self, record: dict) -> None:
        if self.quiet:
            return
        elapsed = (record["finished_at"] - record["received_at"]) * 1000
        print(
            f"mock_upstream request id={record['id']} method={record['method']} path={record['path']}"
            f" status={record['status']} stream={str(record['stream']).lower()} events={record['events_sent']}"
            f" completed={str(record['completed']).lower()} disconnected={str(record['disconnected']).lower()}"
            f" tag={record['tag']} ms={elapsed:.1f}",
            file=sys.stderr,
            flush=True,
        )


def validate(body: dict, chat: bool) -> tuple[str, str] | None:
    """The 400s OpenAI itself gives for the fields a proxy might damage: (message, param) or None."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "You must provide a model parameter.", "model"
    if chat and not isinstance(body.get("messages"), list):
        return "Missing required parameter: 'messages'.", "messages"
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        kind = type(stream).__name__
        return f"Invalid type for 'stream': expected a boolean, but got {kind} instead.", "stream"
    options = body.get("stream_options")
    if options is not None and stream is not True:
        return "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options"
    if options is not None and not isinstance(options, dict):
        return "Invalid type for 'stream_options': expected an object.", "stream_options"
    # The Responses API knows only include_obfuscation here; include_usage is a chat option.
    known = {"include_usage", "include_obfuscation"} if chat else {"include_obfuscation"}
    unknown = sorted(set(options or {}) - known)
    if unknown:
        return f"Unknown parameter: 'stream_options.{unknown[0]}'.", f"stream_options.{unknown[0]}"
    return None


class Dialect:
    """What chat and responses share: token counts, texts and the fault-aware event loop."""

    def __init__(self, exchange: Exchange, body: dict, plan: Plan) -> None:
        self.exchange = exchange
        self.body = body
        self.plan = plan
        self.model = body["model"]
        self.created = int(time.time())
        options = body.get("stream_options") or {}
        self.obfuscate = options.get("include_obfuscation") is not False
        self.prompt = exchange.prompt_tokens or 10
        self.completion = plan.events + plan.reasoning

    def text(self, index: int) -> str:
        return f"tok{index} "

    def full_text(self) -> str:
        return "".join(self.text(i) for i in range(self.plan.events))

    async def emit(self, payload: dict, name: str | None = None) -> None:
        await self.exchange.event(compact(payload), name, self.plan.keepalive)

    async def content_events(self) -> bool:
        """Send the deltas with delays and faults; False when a fault ended the stream."""
        plan = self.plan
        for index in range(plan.events + 1):
            last = index == plan.events
            if due(plan.reset_after, index, last):
                raise ResetRequested()
            if due(plan.fail_after, index, last):
                await self.fail()
                return False
            if due(plan.stall_after, index, last):
                await self.exchange.conn.sleep(plan.stall)
            if last:
                return True
            await self.exchange.conn.sleep(plan.delay)
            await self.delta(index)
            self.exchange.record["events_sent"] += 1
        return True

    async def answer(self) -> None:
        if self.body.get("stream") is True:
            self.exchange.record["stream"] = True
            await self.exchange.start_stream()
            await self.stream()
            await self.exchange.end_stream()
            return
        # A non-stream answer takes as long as its stream would have.
        await self.exchange.conn.sleep(self.plan.delay * self.plan.events)
        payload = self.whole()
        if self.plan.reset_after is not None:
            await self.partial_then_reset(compact(payload).encode())
        self.exchange.record["usage"] = payload.get("usage")
        await self.exchange.send_json(200, payload)

    async def partial_then_reset(self, body: bytes) -> None:
        headers = self.exchange.base_headers() + [
            ("content-type", "application/json"), ("content-length", str(len(body)))]
        await self.exchange.conn.send(self.exchange.head(200, headers) + body[: len(body) // 2])
        raise ResetRequested()

    async def delta(self, index: int) -> None:
        raise NotImplementedError

    async def fail(self) -> None:
        raise NotImplementedError

    async def stream(self) -> None:
        raise NotImplementedError

    def whole(self) -> dict:
        raise NotImplementedError

    def fault_error(self) -> dict:
        return {
            "message": self.plan.error_message or "The server had an error while processing your request.",
            "type": self.plan.error_type or "server_error",
            "param": None,
            "code": self.plan.error_code,
        }


class ChatDialect(Dialect):
    """Chat Completions: `chat.completion` objects and `data:`-only chunk streams ending in [DONE]."""

    def __init__(self, exchange: Exchange, body: dict, plan: Plan) -> None:
        super().__init__(exchange, body, plan)
        self.id = "chatcmpl-" + uuid.uuid4().hex[:24]
        options = body.get("stream_options") or {}
        self.include_usage = options.get("include_usage") is True
        self.finish_reason = "length" if plan.incomplete else "stop"

    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": self.plan.cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": self.plan.reasoning, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
            },
        }

    def whole(self) -> dict:
        message = {"role": "assistant", "content": self.full_text(), "refusal": None, "annotations": []}
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}],
            "usage": self.usage(), "service_tier": "default", "system_fingerprint": FINGERPRINT,
        }

    def chunk(self, choices: list, usage: dict | None = None) -> dict:
        payload = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "service_tier": "default", "system_fingerprint": FINGERPRINT, "choices": choices,
        }
        if self.include_usage:
            payload["usage"] = usage
        if self.obfuscate:
            payload["obfuscation"] = obfuscation()
        return payload

    def choice(self, delta: dict, finish_reason: str | None = None) -> list:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    async def delta(self, index: int) -> None:
        await self.emit(self.chunk(self.choice({"content": self.text(index)})))

    async def fail(self) -> None:
        await self.emit({"error": self.fault_error()})

    async def stream(self) -> None:
        await self.emit(self.chunk(self.choice({"role": "assistant", "content": ""})))
        if not await self.content_events():
            return
        await self.emit(self.chunk(self.choice({}, self.finish_reason)))
        if self.include_usage:
            usage = self.usage()
            await self.emit(self.chunk([], usage))
            self.exchange.record["usage"] = usage
        await self.exchange.event("[DONE]", None, self.plan.keepalive)


class ResponsesDialect(Dialect):
    """Responses API: full Response objects and the ordered, numbered event stream."""

    def __init__(self, exchange: Exchange, body: dict, plan: Plan) -> None:
        super().__init__(exchange, body, plan)
        self.id = "resp_" + uuid.uuid4().hex + uuid.uuid4().hex[:16]
        self.message_id = "msg_" + uuid.uuid4().hex + uuid.uuid4().hex[:16]
        self.reasoning_id = "rs_" + uuid.uuid4().hex + uuid.uuid4().hex[:16]
        self.sequence = 0
        self.message_index = 1 if plan.reasoning else 0

    def usage(self) -> dict:
        return {
            "input_tokens": self.prompt,
            "input_tokens_details": {"cached_tokens": self.plan.cached},
            "output_tokens": self.completion,
            "output_tokens_details": {"reasoning_tokens": self.plan.reasoning},
            "total_tokens": self.prompt + self.completion,
        }

    def response(self, status: str, output: list, usage: dict | None, error: dict | None = None) -> dict:
        body = self.body
        incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
        return {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "background": False, "billing": {"payer": "developer"}, "error": error,
            "incomplete_details": incomplete, "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"), "max_tool_calls": None, "model": self.model,
            "output": output, "parallel_tool_calls": True, "previous_response_id": body.get("previous_response_id"),
            "prompt_cache_key": None, "reasoning": {"effort": None, "summary": None}, "safety_identifier": None,
            "service_tier": "default", "store": body.get("store", True), "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tool_choice": "auto", "tools": [],
            "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled", "usage": usage, "user": None,
            "metadata": body.get("metadata") or {},
        }

    def part(self, text: str) -> dict:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def message(self, status: str, content: list) -> dict:
        return {"id": self.message_id, "type": "message", "status": status, "content": content, "role": "assistant"}

    def reasoning_item(self) -> dict:
        return {"id": self.reasoning_id, "type": "reasoning", "summary": []}

    def final_output(self, status: str) -> list:
        output = [self.reasoning_item()] if self.plan.reasoning else []
        return output + [self.message(status, [self.part(self.full_text())])]

    def terminal_status(self) -> str:
        return "incomplete" if self.plan.incomplete else "completed"

    def whole(self) -> dict:
        status = self.terminal_status()
        return self.response(status, self.final_output(status), self.usage())

    async def send(self, kind: str, **fields) -> None:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        await self.emit(payload, kind)

    def text_location(self) -> dict:
        return {"item_id": self.message_id, "output_index": self.message_index, "content_index": 0}

    async def delta(self, index: int) -> None:
        extra = {"obfuscation": obfuscation()} if self.obfuscate else {}
        await self.send("response.output_text.delta", **self.text_location(), delta=self.text(index),
                        logprobs=[], **extra)

    async def fail(self) -> None:
        error = self.fault_error()
        await self.send("error", error={"type": error["type"], "code": error["code"],
                                        "message": error["message"], "param": None})
        failure = {"code": error["code"] or error["type"], "message": error["message"]}
        await self.send("response.failed", response=self.response("failed", [], None, failure))

    async def opening(self) -> None:
        await self.send("response.created", response=self.response("in_progress", [], None))
        await self.send("response.in_progress", response=self.response("in_progress", [], None))
        if self.plan.reasoning:
            await self.send("response.output_item.added", output_index=0,
                            item=self.reasoning_item())
            await self.send("response.output_item.done", output_index=0, item=self.reasoning_item())
        await self.send("response.output_item.added", output_index=self.message_index,
                        item=self.message("in_progress", []))
        await self.send("response.content_part.added", **self.text_location(), part=self.part(""))

    async def stream(self) -> None:
        await self.opening()
        if not await self.content_events():
            return
        status = self.terminal_status()
        text = self.full_text()
        await self.send("response.output_text.done", **self.text_location(), text=text, logprobs=[])
        await self.send("response.content_part.done", **self.text_location(), part=self.part(text))
        await self.send("response.output_item.done", output_index=self.message_index,
                        item=self.message(status, [self.part(text)]))
        usage = self.usage()
        await self.send(f"response.{status}", response=self.response(status, self.final_output(status), usage))
        self.exchange.record["usage"] = usage


def raise_open_file_limit() -> None:
    """Thousands of concurrent streams need thousands of descriptors: lift the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


async def run(args: argparse.Namespace) -> None:
    app = MockUpstream(args.events, args.delay_ms, args.max_records, args.quiet)
    server = await asyncio.start_server(app.serve_connection, args.host, args.port, backlog=args.backlog)
    port = server.sockets[0].getsockname()[1]
    print(f"mock_upstream listening host={args.host} port={port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    for task in list(app.connections):
        task.cancel()
    print("mock_upstream stopped", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="Mock OpenAI-style upstream for Tollgate tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18090, help="0 picks a free port (printed on stderr)")
    parser.add_argument("--delay-ms", type=int, default=0, help="default delay before each content event")
    parser.add_argument("--events", type=int, default=5, help="default number of content events")
    parser.add_argument("--max-records", type=int, default=100_000, help="records kept before the oldest go")
    parser.add_argument("--backlog", type=int, default=16_384)
    parser.add_argument("--quiet", action="store_true", help="no per-request log lines")
    args = parser.parse_args()
    raise_open_file_limit()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
