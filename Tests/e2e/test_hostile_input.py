"""Hostile and malformed input, through real nginx → Tollgate → the mock upstream.

Tables of bad requests: bodies that are not JSON or not an object, wrong types, bad numbers, deep
nesting, invalid UTF-8, NUL bytes, bodies around nginx's size limit, odd Authorization headers,
CR/LF and control bytes in headers, a client that sends its body slowly, one that gives up
half-way, one that never reads its stream. Each request gets an OpenAI-style error with the
right status, or is served correctly. Rejected requests never reach the upstream and leave
nothing behind; the module ends by checking that the workers survived all of it.

The main stack has no database, so metering is off: any Authorization is accepted and never
forwarded (the upstream always gets the platform key), and the log-only metering writes one
`usage.settled` line per admitted request, which stands in for the ledger. The `metered`
section runs credentials, bad bodies and abandoned streams against a stack with PostgreSQL
metering and checks the ledger and the reservations themselves; `Ledger:` comments mark what
they assert there.

Raw sockets send what HTTP client libraries refuse to (bare CR, NUL, non-ASCII header bytes).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

NGINX_BODY_LIMIT = 8 * 1024 * 1024
"""client_max_body_size in nginx/tollgate.conf."""

DEFAULT_OUTPUT_CAP = 16384
"""`tollgate serve --max-output-tokens` default: larger requested limits are clamped to it."""

INT64_MAX = 2**63 - 1


# --- helpers ---------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def raw_request(target: bytes, body: bytes = b"", headers: list[bytes] | None = None, method: bytes = b"POST",
                length: int | None = None, content_type: bytes = b"application/json") -> bytes:
    """An HTTP/1.1 request as bytes, with whatever header bytes the test wants."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close",
             b"Content-Type: " + content_type, *(headers or [])]
    lines.append(b"Content-Length: %d" % (len(body) if length is None else length))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def exchange(port: int, request: bytes, timeout: float = 30) -> Reply:
    """Sends raw request bytes and reads the whole answer (http.client parses it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        body = response.read()
        return Reply(response.status, {name.lower(): value for name, value in response.getheaders()}, body)


def assert_openai_error(reply: Reply, status: int, param: str | None = None, code: str | None = None) -> dict:
    """The raw-socket twin of kit.assert_openai_error, also checking `code` when given."""
    assert reply.status == status, f"expected {status}, got {reply.status}: {reply.body[:300]!r}"
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    error = reply.json()["error"]
    assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str), error
    assert "param" in error and "code" in error, error
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def chat_body(tag: str | None = None, **members: object) -> bytes:
    """A valid chat body (members override the defaults), tagged for the mock."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hi."}], **members}
    if tag is not None:
        body["mock"] = {"tag": tag, "events": 1}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def tagged(body: bytes, tag: str) -> bytes:
    """`body` (a JSON object as bytes) with a mock tag member spliced in before its last brace."""
    cut = body.rindex(b"}")
    return body[:cut] + b',"mock":{"tag":"' + tag.encode() + b'","events":1}' + body[cut:]


def events(text: str, event: str) -> list[str]:
    """The log lines of `event` (matched at the line's start: a quoted value cannot fake one)."""
    pattern = re.compile(r"^ts=\S+ level=\w+ event=" + re.escape(event) + r"( |$)")
    return [line for line in text.splitlines() if pattern.match(line)]


class Ledger:
    """The `usage.settled` lines of the log-only metering: one per admitted request."""

    def __init__(self, log: Path, kit) -> None:
        self.log = log
        self.kit = kit

    def lines(self) -> list[str]:
        return events(self.log.read_text(errors="replace"), "usage.settled")

    def count(self) -> int:
        return len(self.lines())

    def assert_settled_once(self, before: int) -> str:
        """Waits for the one line a served request settles (written after the answer); returns it."""
        self.kit.wait_until(lambda: self.count() > before, timeout=5)
        assert self.count() == before + 1, f"expected 1 settlement, found {self.count() - before}"
        # Ledger: exactly one row, outcome and tokens as reported (test_metered_hostile_but_valid...).
        return self.lines()[-1]

    def assert_untouched(self, before: int) -> None:
        # Ledger: no row and no reservation (test_metered_bad_body_with_a_valid_key...).
        assert self.count() == before, "a rejected request was settled"


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workers_at_start(stack) -> tuple[list[int], int]:
    """The main stack's worker pids and log size before the first hostile request."""
    return sorted(stack.worker_pids()), (stack.run_dir / "tollgate.log").stat().st_size


@pytest.fixture(autouse=True)
def survival_baseline(workers_at_start) -> None:
    """Every test of the module takes part in the final survival check."""


@pytest.fixture(scope="module")
def ledger(stack, kit) -> Ledger:
    return Ledger(stack.run_dir / "tollgate.log", kit)


@pytest.fixture
def port(stack) -> int:
    return stack.http_port


@pytest.fixture
def rejected(mock, ledger):
    """Call at the end of a test: nothing reached the upstream and nothing was settled."""
    forwarded, settled = len(mock.requests()), ledger.count()

    def check() -> None:
        assert len(mock.requests()) == forwarded, "Tollgate forwarded a request it should have rejected"
        ledger.assert_untouched(settled)

    return check


@pytest.fixture
def served(mock, ledger, kit):
    """Call with a tag after a 200: the mock got the request, and it was settled exactly once."""
    settled = ledger.count()

    def check(tag: str, others: int = 0) -> dict:
        """`others`: requests the test had served besides this one since it began."""
        record = mock.wait(tag)
        assert record["completed"], record
        assert record["headers"].get("authorization") == f"Bearer {kit.PLATFORM_KEY}", (
            "the upstream must get the platform key, never the client's Authorization")
        line = ledger.assert_settled_once(settled + others)
        assert " outcome=completed " in line, line
        return record

    return check


# --- bodies Tollgate must refuse -------------------------------------------------------------


def nested(depth: int) -> bytes:
    return b'{"model":"gpt-4o-mini","messages":[],"x":' + b"[" * depth + b"]" * depth + b"}"


MODEL = b'"model":"gpt-4o-mini"'
CHAT_REJECTED = [
    # (id, body, param, code): every one a 400 invalid_request_error.
    ("not-json", b"model=gpt-4o-mini&messages=hello", None, None),
    ("empty", b"", None, None),
    ("whitespace-only", b" \r\n\t ", None, None),
    ("truncated", b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hel', None, None),
    ("trailing-comma", b'{"model":"gpt-4o-mini","messages":[],}', None, None),
    ("nan", b'{"model":"gpt-4o-mini","messages":[],"temperature":NaN}', None, None),
    ("leading-zero", b'{"model":"gpt-4o-mini","messages":[],"seed":012}', None, None),
    ("two-documents", b'{"model":"gpt-4o-mini","messages":[]}{"model":"x"}', None, None),
    ("array-root", b'[{"model":"gpt-4o-mini","messages":[]}]', None, None),
    ("string-root", b'"gpt-4o-mini"', None, None),
    ("number-root", b"42", None, None),
    ("null-root", b"null", None, None),
    ("model-number", b'{"model":42,"messages":[]}', "model", "invalid_type"),
    ("model-object", b'{"model":{"id":"gpt-4o-mini"},"messages":[]}', "model", "invalid_type"),
    ("model-array", b'{"model":["gpt-4o-mini"],"messages":[]}', "model", "invalid_type"),
    ("model-empty", b'{"model":"","messages":[]}', "model", "missing_required_parameter"),
    ("model-null", b'{"model":null,"messages":[]}', "model", "missing_required_parameter"),
    ("model-missing", b'{"messages":[]}', "model", "missing_required_parameter"),
    ("model-twice", b'{"model":"gpt-4o-mini","messages":[],"model":"gpt-4o"}', "model", "duplicate_parameter"),
    ("stream-string", b'{' + MODEL + b',"stream":"true","messages":[]}', "stream", "invalid_type"),
    ("stream-number", b'{' + MODEL + b',"stream":1,"messages":[]}', "stream", "invalid_type"),
    ("messages-object", b'{' + MODEL + b',"messages":{"role":"user"}}', "messages", "invalid_type"),
    ("messages-string", b'{' + MODEL + b',"messages":"hello"}', "messages", "invalid_type"),
    ("messages-missing", b'{' + MODEL + b'}', "messages", "missing_required_parameter"),
    ("messages-null", b'{' + MODEL + b',"messages":null}', "messages", "missing_required_parameter"),
    ("stream-options-string", b'{' + MODEL + b',"stream":true,"stream_options":"usage","messages":[]}',
     "stream_options", "invalid_type"),
    ("include-usage-string", b'{' + MODEL + b',"stream":true,"stream_options":{"include_usage":"yes"},"messages":[]}',
     "stream_options.include_usage", "invalid_type"),
    ("max-tokens-1e30", b'{' + MODEL + b',"messages":[],"max_tokens":1000000000000000000000000000000}',
     "max_tokens", "invalid_value"),
    ("max-tokens-int64-max-plus-one", b'{' + MODEL + b',"messages":[],"max_tokens":9223372036854775808}',
     "max_tokens", "invalid_value"),
    ("max-completion-tokens-exponent", b'{' + MODEL + b',"messages":[],"max_completion_tokens":1e3}',
     "max_completion_tokens", "invalid_value"),
    ("max-tokens-fraction", b'{' + MODEL + b',"messages":[],"max_tokens":12.0}', "max_tokens", "invalid_value"),
    ("max-tokens-string", b'{' + MODEL + b',"messages":[],"max_tokens":"100"}', "max_tokens", "invalid_value"),
    ("max-tokens-negative", b'{' + MODEL + b',"messages":[],"max_tokens":-1}', "max_tokens", "invalid_value"),
    ("max-completion-tokens-int64-min",
     b'{' + MODEL + b',"messages":[],"max_completion_tokens":-9223372036854775808}',
     "max_completion_tokens", "invalid_value"),
    ("nesting-1000", nested(1000), None, None),
    ("nesting-100000", nested(100_000), None, None),
    ("invalid-utf8", b'{' + MODEL + b',"messages":[{"role":"user","content":"\xc3\x28"}]}', None, None),
    ("overlong-utf8", b'{' + MODEL + b',"messages":[{"role":"user","content":"\xc0\xaf"}]}', None, None),
    ("utf8-surrogate", b'{' + MODEL + b',"messages":[{"role":"user","content":"\xed\xa0\x80"}]}', None, None),
    ("utf8-above-u10ffff", b'{' + MODEL + b',"messages":[{"role":"user","content":"\xf4\x90\x80\x80"}]}', None,
     None),
    ("latin1-model", b'{"model":"gpt-4o-mini-\xe9","messages":[]}', None, None),
    ("nul-in-string", b'{' + MODEL + b',"messages":[{"role":"user","content":"a\x00b"}]}', None, None),
    ("nul-between-tokens", b'{' + MODEL + b',\x00"messages":[]}', None, None),
    ("newline-in-string", b'{' + MODEL + b',"messages":[{"role":"user","content":"a\nb"}]}', None, None),
    ("byte-order-mark", b'\xef\xbb\xbf{' + MODEL + b',"messages":[]}', None, None),
]

RESPONSES_REJECTED = [
    ("input-number", b'{"model":"gpt-4.1","input":7}', "input", "invalid_type"),
    ("input-object", b'{"model":"gpt-4.1","input":{"role":"user"}}', "input", "invalid_type"),
    ("input-bool", b'{"model":"gpt-4.1","input":true}', "input", "invalid_type"),
    ("model-array", b'{"model":["gpt-4.1"],"input":"hi"}', "model", "invalid_type"),
    ("max-output-tokens-negative", b'{"model":"gpt-4.1","input":"hi","max_output_tokens":-1}',
     "max_output_tokens", "invalid_value"),
    ("max-output-tokens-1e40", b'{"model":"gpt-4.1","input":"hi","max_output_tokens":1' + b"0" * 40 + b"}",
     "max_output_tokens", "invalid_value"),
    ("not-json", b"input=hello", None, None),
]


@pytest.mark.parametrize(("body", "param", "code"), [case[1:] for case in CHAT_REJECTED],
                         ids=[case[0] for case in CHAT_REJECTED])
def test_chat_body_is_refused_with_400(port, rejected, body, param, code):
    reply = exchange(port, raw_request(b"/v1/chat/completions", body))

    error = assert_openai_error(reply, 400, param=param, code=code)
    assert error["type"] == "invalid_request_error"
    rejected()


@pytest.mark.parametrize(("body", "param", "code"), [case[1:] for case in RESPONSES_REJECTED],
                         ids=[case[0] for case in RESPONSES_REJECTED])
def test_responses_body_is_refused_with_400(port, rejected, body, param, code):
    reply = exchange(port, raw_request(b"/v1/responses", body))

    error = assert_openai_error(reply, 400, param=param, code=code)
    assert error["type"] == "invalid_request_error"
    rejected()


def test_stream_request_with_bad_body_gets_json_error_not_a_stream(port, rejected):
    body = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"\xff"}]}'

    reply = exchange(port, raw_request(b"/v1/chat/completions", body, [b"Accept: text/event-stream"]))

    assert_openai_error(reply, 400)
    rejected()


def test_body_over_the_nginx_limit_is_413(raw, kit, rejected):
    filler = "x" * (NGINX_BODY_LIMIT + 1024)
    body = ('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"%s"}]}' % filler).encode()

    response = raw.post("/chat/completions", content=body, headers={"content-type": "application/json"})

    error = kit.assert_openai_error(response, 413)
    assert error["code"] == "request_too_large"
    rejected()


# --- bodies Tollgate must serve ---------------------------------------------------------------


def test_body_just_under_the_nginx_limit_is_served_whole(raw, make_tag, served):
    tag = make_tag()
    head = b'{"model":"gpt-4o-mini","max_completion_tokens":16,"messages":[{"role":"user","content":"'
    tail = b'"}],"mock":{"tag":"' + tag.encode() + b'","events":1}}'
    body = head + b"y" * (NGINX_BODY_LIMIT - 4096 - len(head) - len(tail)) + tail

    response = raw.post("/chat/completions", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 200, response.text[:300]
    record = served(tag)
    assert record["body"].encode() == body, "the upstream got other bytes than the client sent"


SERVED_AS_SENT = [
    # (id, body): forwarded byte for byte (each names an output limit under the cap, so the
    # policy has nothing to write either).
    ("unknown-fields", b'{"model":"gpt-4o-mini","max_completion_tokens":64,"messages":[{"role":"user","content":"hi",'
                       b'"x_extra":{"a":[1,{"b":null}]}}],"frobnicate":{"nested":[true,false,-0.5e-3]},'
                       b'"metadata":{"team":"\xf0\x9f\xa6\x8a"},"\xc3\xa9t\xc3\xa9":1}'),
    # The lone surrogates sit outside `messages`: the mock counts the prompt's UTF-8 bytes and
    # cannot encode them (Tollgate itself reads them as U+FFFD and forwards the bytes as sent).
    ("escaped-nul-and-lone-surrogates", b'{"model":"gpt-4o-mini","max_tokens":8,"messages":[{"role":"user",'
                                        b'"content":"a\\u0000b \\ud83d\\ude00 \\u2028"}],'
                                        b'"metadata":{"note":"\\ud800 \\udfff \\udc00\\ud800"}}'),
    ("negative-and-huge-numbers-elsewhere", b'{"model":"gpt-4o-mini","max_tokens":0,"messages":[],'
                                            b'"temperature":-1.5,"n":-3,"seed":-9223372036854775808,'
                                            b'"top_p":1e400,"presence_penalty":-0}'),
    ("whitespace-and-crlf", b'\r\n {\r\n\t"model" : "gpt-4o-mini" ,\r\n "messages" : [ ] ,'
                            b' "max_tokens" : 5 \r\n}\r\n'),
    ("nesting-100", b'{"model":"gpt-4o-mini","max_tokens":5,"messages":[],"x":' + b"[" * 100 + b"]" * 100 + b"}"),
    ("sql-in-model-and-names", b'{"model":"gpt-4o\'; DROP TABLE tollgate.ledger; --","max_tokens":5,"messages":'
                               b'[{"role":"user","name":"x\' OR \'1\'=\'1","content":"\\"); DELETE FROM users;--"}],'
                               b'"user":"robert\'); DROP TABLE students;--"}'),
    ("log-forging-model", b'{"model":"gpt-4o-mini\\nts=2026-01-01T00:00:00.000Z level=warning event=worker.exited '
                          b'worker=0 pid=1","max_tokens":5,"messages":[]}'),
    ("content-type-text-plain", None),
]


@pytest.mark.parametrize("body", [case[1] for case in SERVED_AS_SENT], ids=[case[0] for case in SERVED_AS_SENT])
def test_unusual_but_valid_body_is_forwarded_byte_for_byte(stack, port, make_tag, served, body):
    tag = make_tag()
    content_type = b"application/json" if body is not None else b"text/plain; charset=latin1"
    body = tagged(body or chat_body(max_tokens=5), tag)

    reply = exchange(port, raw_request(b"/v1/chat/completions", body, content_type=content_type))

    assert reply.status == 200, reply.body[:300]
    record = served(tag)
    assert record["body"].encode() == body, "the upstream got other bytes than the client sent"
    assert reply.json()["object"] == "chat.completion"
    log = (stack.run_dir / "tollgate.log").read_text(errors="replace")
    assert not [line for line in log.splitlines() if line.startswith("ts=2026-01-01")], "a client forged a log line"


def test_enormous_max_tokens_is_clamped_to_the_cap(port, make_tag, served):
    tag = make_tag()

    reply = exchange(port, raw_request(b"/v1/chat/completions", chat_body(tag, max_tokens=INT64_MAX)))

    assert reply.status == 200, reply.body[:300]
    forwarded = json.loads(served(tag)["body"])
    assert forwarded["max_tokens"] == DEFAULT_OUTPUT_CAP, forwarded.get("max_tokens")


def test_chat_stream_keeps_every_member_but_include_usage(port, make_tag, served, kit):
    tag = make_tag()
    body = tagged(b'{"model":"gpt-4o-mini","stream":true,"max_tokens":7,"stream_options":{"include_obfuscation":'
                  b'false},"messages":[{"role":"user","content":"\\u00e9\\ud83d\\ude00"}],"zz":{"k":[1,2]}}', tag)

    reply = exchange(port, raw_request(b"/v1/chat/completions", body))

    assert reply.status == 200 and reply.headers["content-type"].startswith("text/event-stream"), reply.body[:300]
    assert kit.parse_sse(reply.body.decode())[-1]["data"] == "[DONE]"
    record = served(tag)
    sent, forwarded = kit.top_level_members(body.decode()), kit.top_level_members(record["body"])
    assert [m for m in forwarded if m[0] != '"stream_options"'] == [m for m in sent if m[0] != '"stream_options"']
    assert json.loads(record["body"])["stream_options"] == {"include_obfuscation": False, "include_usage": True}


def test_chunked_request_body_is_served(port, make_tag, served):
    tag = make_tag()
    body = chat_body(tag, max_tokens=5)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 17]), body[i:i + 17]) for i in range(0, len(body), 17))
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")

    reply = exchange(port, head + chunks + b"0\r\n\r\n")

    assert reply.status == 200, reply.body[:300]
    assert served(tag)["body"].encode() == body


# --- Authorization and other headers ----------------------------------------------------------

HOSTILE_KEY = "tg-hostile-7f3a9c"
"""Part of every client credential below, so the log scan can look for it."""

AUTHORIZATIONS = [
    # (id, header lines). Ledger: with metering on, each is a 401 invalid_api_key (wrong scheme,
    # wrong length, unknown key) without a ledger row or reservation (test_metered_bad_credential...).
    ("missing", []),
    ("empty", [b"Authorization:"]),
    ("scheme-only", [b"Authorization: Bearer"]),
    ("basic-scheme", [b"Authorization: Basic " + b"dGctaG9zdGlsZS03ZjNhOWM6cGFzcw=="]),
    ("lowercase-scheme", [b"Authorization: bearer " + HOSTILE_KEY.encode() + b"-" + b"a" * 22]),
    ("too-short", [b"Authorization: Bearer " + HOSTILE_KEY.encode()]),
    ("one-too-long", [b"Authorization: Bearer " + HOSTILE_KEY.encode() + b"a" * 25]),
    ("4000-chars", [b"Authorization: Bearer " + HOSTILE_KEY.encode() + b"k" * 4000]),
    ("sql-metacharacters", [b"Authorization: Bearer " + HOSTILE_KEY.encode()
                            + b"' OR '1'='1'; DROP TABLE tollgate.api_keys; --"]),
    ("non-ascii-bytes", [b"Authorization: Bearer " + HOSTILE_KEY.encode() + "-clé-🔑".encode() + b"\xff"]),
    ("tabs-and-spaces", [b"Authorization: \t Bearer \t " + HOSTILE_KEY.encode() + b" \t"]),
    ("bare-lf-injects-a-header", [b"Authorization: Bearer " + HOSTILE_KEY.encode() + b"\nX-Injected: 1"]),
]


@pytest.mark.parametrize("headers", [case[1] for case in AUTHORIZATIONS], ids=[case[0] for case in AUTHORIZATIONS])
def test_any_authorization_is_accepted_and_never_forwarded(port, make_tag, served, headers):
    tag = make_tag()

    reply = exchange(port, raw_request(b"/v1/chat/completions", chat_body(tag, max_tokens=5), headers))

    assert reply.status == 200, reply.body[:300]
    record = served(tag)
    assert HOSTILE_KEY not in json.dumps(record["headers"]), "a client credential reached the upstream"
    assert "x-injected" not in record["headers"], "a client header outside the forwarded set reached the upstream"


NGINX_REFUSED_HEADERS = [
    # (id, request line target, header lines): nginx answers 400 in the OpenAI shape.
    ("bare-cr-in-value", b"/v1/chat/completions", [b"Authorization: Bearer abc\rX-Injected: 1"]),
    ("nul-in-value", b"/v1/chat/completions", [b"Authorization: Bearer a\x00b"]),
    ("header-over-buffer", b"/v1/chat/completions", [b"Authorization: Bearer " + b"k" * 10_000]),
    ("raw-bytes-in-query", b"/v1/chat/completions?a=\xff\x01", []),
    ("authorization-twice", b"/v1/chat/completions", [b"Authorization: Bearer " + HOSTILE_KEY.encode() + b"-1",
                                                      b"Authorization: Bearer " + HOSTILE_KEY.encode() + b"-2"]),
]


@pytest.mark.parametrize(("target", "headers"), [case[1:] for case in NGINX_REFUSED_HEADERS],
                         ids=[case[0] for case in NGINX_REFUSED_HEADERS])
def test_malformed_header_or_request_line_is_400_from_nginx(port, rejected, target, headers):
    reply = exchange(port, raw_request(target, chat_body(max_tokens=5), headers))

    assert_openai_error(reply, 400, code="bad_request")
    rejected()


@pytest.mark.parametrize("header", [b"OpenAI-Beta", b"Idempotency-Key"])
def test_control_byte_in_a_forwarded_header_is_a_client_error_or_dropped(port, make_tag, mock, kit, header):
    # These two headers are forwarded upstream. A control byte in them must not become a 5xx
    # (server_error, which the SDKs retry): refuse with 400, or drop or clean the header.
    tag = make_tag()

    reply = exchange(port, raw_request(b"/v1/chat/completions", chat_body(tag, max_tokens=5),
                                       [header + b": v1\x01X-Injected: 1"]))

    if reply.status == 200:
        record = mock.wait(tag)
        assert all("\x01" not in value for value in record["headers"].values()), record["headers"]
    else:
        error = assert_openai_error(reply, 400, param=None)
        assert error["type"] == "invalid_request_error"
        assert mock.requests(tag) == [], "refused, yet forwarded"


def test_encoded_crlf_in_query_stays_encoded(port, make_tag, served):
    tag = make_tag()

    reply = exchange(port, raw_request(b"/v1/chat/completions?x=%0d%0aX-Injected:%201", chat_body(tag, max_tokens=5)))

    assert reply.status == 200, reply.body[:300]
    record = served(tag)
    assert "x-injected" not in record["headers"]
    assert "\r" not in record["query"] and "\n" not in record["query"], record["query"]


# --- slow, impatient and absent clients -------------------------------------------------------


def test_slow_body_is_served_without_holding_up_others(port, raw, make_tag, served, kit):
    tag = make_tag()
    body = chat_body(tag, max_tokens=5)
    pieces = [body[i:i + len(body) // 6 + 1] for i in range(0, len(body), len(body) // 6 + 1)]
    first_piece_sent, outcome = threading.Event(), {}

    def slow_client() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(raw_request(b"/v1/chat/completions", b"", length=len(body)))
            for piece in pieces:
                sock.sendall(piece)
                first_piece_sent.set()
                # Pacing, not synchronisation: this is the slow client under test.
                time.sleep(0.25)
            response = http.client.HTTPResponse(sock, method="POST")
            response.begin()
            outcome["status"], outcome["body"] = response.status, response.read()

    uploader = threading.Thread(target=slow_client)
    uploader.start()
    try:
        assert first_piece_sent.wait(10)
        started = time.monotonic()
        other = raw.post("/chat/completions", content=chat_body(max_tokens=5),
                         headers={"content-type": "application/json"})
        other_took = time.monotonic() - started
        still_uploading = uploader.is_alive()
    finally:
        uploader.join(30)

    assert other.status_code == 200 and other_took < 1.0, f"{other.status_code} after {other_took:.2f} s"
    assert still_uploading, "the slow upload finished before the other request was measured"
    assert outcome.get("status") == 200, outcome
    assert served(tag, others=1)["body"].encode() == body


def test_client_giving_up_half_way_through_its_body_reaches_nobody(port, raw, make_tag, mock, ledger, kit):
    tag, later = make_tag("abandoned"), make_tag("later")
    body = chat_body(tag, max_tokens=5)
    settled = ledger.count()

    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw_request(b"/v1/chat/completions", body[: len(body) // 2], length=len(body)))
    # A request after the abandoned one, on another connection, is served: once it is, the
    # abandoned body has had every chance to be (wrongly) forwarded.
    assert raw.post("/chat/completions", content=chat_body(later, max_tokens=5),
                    headers={"content-type": "application/json"}).status_code == 200
    mock.wait(later)
    kit.wait_until(lambda: ledger.count() > settled, timeout=5)

    assert mock.requests(tag) == [], "an incomplete body was forwarded"
    assert ledger.count() == settled + 1, "only the later request may be settled"


def test_client_that_never_reads_its_stream_holds_one_request_only(stack, raw, make_tag, mock, ledger, kit):
    tag = make_tag()
    # Far more than the socket buffers between the mock and this client hold (a few MB).
    body = chat_body(tag, stream=True, max_tokens=5)
    body = body.replace(b'"events":1', b'"events":50000')
    settled = ledger.count()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.connect(("127.0.0.1", stack.http_port))
        sock.sendall(raw_request(b"/v1/chat/completions", body))
        streaming = kit.wait_until(lambda: [r for r in mock.requests(tag) if r["events_sent"] > 0], timeout=10)
        assert streaming, "the stream never started"
        # Back-pressure: nothing reads, so the upstream must not be able to finish.
        finished = mock.http.get("/__mock/wait", params={"tag": tag, "until": "finished", "timeout": "3"},
                                 timeout=15)
        assert finished.status_code == 408, "the whole stream was buffered for a client that reads nothing"
        started = time.monotonic()
        other = raw.post("/chat/completions", content=chat_body(max_tokens=5),
                         headers={"content-type": "application/json"})
        assert other.status_code == 200 and time.monotonic() - started < 1.0
    finally:
        sock.close()

    record = mock.wait(tag, timeout=15)
    assert record["disconnected"] and not record["completed"], "the upstream call outlived the client"
    kit.wait_until(lambda: ledger.count() >= settled + 2, timeout=10)
    outcomes = [line.split(" outcome=")[1].split()[0] for line in ledger.lines()[settled:]]
    # Ledger: the abandoned stream's row has outcome client_aborted (test_metered_stream_...).
    assert sorted(outcomes) == ["client_aborted", "completed"], outcomes


# --- a stack without an output cap ------------------------------------------------------------


@pytest.fixture(scope="module")
def uncapped(stack_factory, kit):
    """A stack with the output cap switched off (18084 / 18094), so limits reach the worker as sent."""
    serving = stack_factory("e2e-uncapped", 18084, 18094, env={"TOLLGATE_MAX_OUTPUT_TOKENS": "0"})
    try:
        yield serving
    finally:
        serving.stop()
    kit.assert_no_secrets(serving.logs(), "stack e2e-uncapped")


@pytest.mark.parametrize("limit", [INT64_MAX, INT64_MAX - 3, 2**62], ids=["int64-max", "int64-max-minus-3", "2^62"])
def test_enormous_max_tokens_without_a_cap_keeps_the_worker_up(uncapped, kit, make_tag, limit):
    tag = make_tag()
    workers = sorted(uncapped.worker_pids())
    log_path = uncapped.run_dir / "tollgate.log"
    log_offset = log_path.stat().st_size
    control = kit.MockControl(uncapped.mock_url)

    try:
        reply = exchange(uncapped.http_port, raw_request(b"/v1/chat/completions", chat_body(tag, max_tokens=limit)))
        forwarded = control.requests(tag)
    finally:
        control.close()

    exits = events(log_path.read_bytes()[log_offset:].decode(errors="replace"), "worker.exited")
    assert exits == [], f"a worker died on an enormous max_tokens: {exits}"
    assert sorted(uncapped.worker_pids()) == workers
    assert reply.status in (200, 400), reply.body[:300]
    if reply.status == 200:
        assert json.loads(forwarded[0]["body"])["max_tokens"] == limit
    else:
        assert_openai_error(reply, 400, param="max_tokens")


# --- with metering on PostgreSQL ------------------------------------------------------------

METERED_NAME = "o'brien\"); DROP TABLE tollgate.ledger; --"
"""The start of the metered stack's user name: SQL metacharacters reach the store as data."""


def worker_binary(kit) -> Path:
    return Path(os.environ.get("TOLLGATE_BINARY") or kit.ROOT / ".build" / "release" / "tollgate")


@pytest.fixture(scope="module")
def metered(stack_factory, kit):
    """A stack with a private PostgreSQL (nginx 18078, mock 18092), one user whose name is full of
    SQL metacharacters, and that user's key. Logs are scanned for the key when it stops."""
    help_text = subprocess.run([str(worker_binary(kit)), "help"], capture_output=True, text=True).stdout
    if "migrate" not in help_text:
        pytest.skip("this worker binary has no PostgreSQL metering (no `tollgate migrate`)")
    serving = stack_factory("e2e-hostile-metered", 18078, 18092, database=True)
    control = kit.MockControl(serving.mock_url)
    key = ""
    try:
        name = f"{METERED_NAME} {uuid.uuid4().hex[:8]}"
        added = serving.tollgate("user", "add", name, "--quota", "1000000", "--period", "day")
        assert added.returncode == 0, added.stderr
        issued = serving.tollgate("key", "issue", name)
        assert issued.returncode == 0, issued.stderr
        key = issued.stdout.splitlines()[0]
        escaped = name.replace("'", "''")
        [(user_id,)] = serving.psql(f"SELECT id FROM tollgate.users WHERE name = '{escaped}'")
        yield {"stack": serving, "key": key, "name": name, "user_id": int(user_id), "mock": control,
               "workers": sorted(serving.worker_pids())}
    finally:
        control.close()
        serving.stop()
    logs = serving.logs()
    kit.assert_no_secrets(logs, "stack e2e-hostile-metered after shutdown")
    assert not key or key not in logs, "stack e2e-hostile-metered: the Tollgate key is in the logs"
    assert HOSTILE_KEY not in logs, "stack e2e-hostile-metered: a client credential is in the logs"


def trace(metered) -> tuple[int, int, int]:
    """(ledger rows, reservations, requests the mock received) of the metered stack."""
    stack = metered["stack"]
    [(rows,)] = stack.psql("SELECT count(*) FROM tollgate.ledger")
    [(held,)] = stack.psql("SELECT count(*) FROM tollgate.reservations")
    return int(rows), int(held), len(metered["mock"].requests())


METERED_CREDENTIALS = [
    # (id, header lines made from the user's valid key): each a 401 invalid_api_key.
    ("missing", lambda key: []),
    ("empty", lambda key: [b"Authorization:"]),
    ("scheme-only", lambda key: [b"Authorization: Bearer"]),
    ("basic-with-the-key", lambda key: [b"Authorization: Basic " + base64.b64encode(key.encode() + b":")]),
    ("key-without-scheme", lambda key: [b"Authorization: " + key.encode()]),
    ("one-char-short", lambda key: [b"Authorization: Bearer " + key[:-1].encode()]),
    ("one-char-long", lambda key: [b"Authorization: Bearer " + key.encode() + b"a"]),
    ("upper-case", lambda key: [b"Authorization: Bearer " + key.upper().encode()]),
    ("unknown-well-formed", lambda key: [b"Authorization: Bearer tg-" + b"0" * 40]),
    ("key-and-more", lambda key: [b"Authorization: Bearer " + key.encode() + b" " + HOSTILE_KEY.encode()]),
    ("sql-metacharacters", lambda key: [b"Authorization: Bearer tg-' OR '1'='1'; DELETE FROM tollgate.ledger; "
                                        + HOSTILE_KEY.encode()]),
    ("non-ascii", lambda key: [b"Authorization: Bearer " + key[:-2].encode() + "é".encode()]),
]


@pytest.mark.parametrize("credential", [case[1] for case in METERED_CREDENTIALS],
                         ids=[case[0] for case in METERED_CREDENTIALS])
def test_metered_bad_credential_is_401_and_leaves_no_trace(metered, make_tag, credential):
    before = trace(metered)
    headers = credential(metered["key"])

    reply = exchange(metered["stack"].http_port,
                     raw_request(b"/v1/chat/completions", chat_body(make_tag(), max_tokens=5), headers))

    assert_openai_error(reply, 401, code="invalid_api_key")
    assert metered["key"].encode() not in reply.body and HOSTILE_KEY.encode() not in reply.body
    assert trace(metered) == before, "(ledger rows, reservations, forwarded requests) changed"


METERED_BAD_BODIES = [case for case in CHAT_REJECTED if case[0] in {
    "not-json", "empty", "array-root", "model-number", "model-twice", "messages-object", "max-tokens-1e30",
    "max-tokens-negative", "nesting-100000", "invalid-utf8", "nul-in-string"}]


@pytest.mark.parametrize(("body", "param", "code"), [case[1:] for case in METERED_BAD_BODIES],
                         ids=[case[0] for case in METERED_BAD_BODIES])
def test_metered_bad_body_with_a_valid_key_is_400_and_leaves_no_trace(metered, body, param, code):
    before = trace(metered)
    headers = [b"Authorization: Bearer " + metered["key"].encode()]

    reply = exchange(metered["stack"].http_port, raw_request(b"/v1/chat/completions", body, headers))

    assert_openai_error(reply, 400, param=param, code=code)
    assert trace(metered) == before, "(ledger rows, reservations, forwarded requests) changed"


def metered_rows(metered, kit, count: int) -> list[tuple]:
    """The user's ledger rows (outcome, model, http_status, input, output tokens) once there are `count`."""
    stack, user_id = metered["stack"], metered["user_id"]
    sql = ("SELECT outcome, model, http_status, input_tokens, output_tokens FROM tollgate.ledger "
           f"WHERE user_id = {user_id} ORDER BY started_at")
    kit.wait_until(lambda: len(stack.psql(sql)) >= count, timeout=10)
    return stack.psql(sql)


def test_metered_hostile_but_valid_request_is_settled_once_as_sent(metered, make_tag, kit):
    tag = make_tag()
    model = "gpt-4o'; DELETE FROM tollgate.ledger WHERE '1'='1"
    rows_before = len(metered_rows(metered, kit, 0))
    body = chat_body(tag, model=model, max_tokens=5, frobnicate={"x": [None, "\u0000"]})

    reply = exchange(metered["stack"].http_port, raw_request(
        b"/v1/chat/completions", body, [b"Authorization: Bearer " + metered["key"].encode()]))

    assert reply.status == 200, reply.body[:300]
    record = metered["mock"].wait(tag)
    usage = record["usage"]
    rows = metered_rows(metered, kit, rows_before + 1)
    assert len(rows) == rows_before + 1
    assert rows[-1] == ("completed", model, "200", str(usage["prompt_tokens"]), str(usage["completion_tokens"]))
    assert trace(metered)[1] == 0, "a reservation outlived its request"


def test_metered_stream_the_client_never_reads_is_settled_as_aborted(metered, make_tag, kit):
    tag = make_tag()
    rows_before = len(metered_rows(metered, kit, 0))
    body = chat_body(tag, stream=True, max_tokens=5).replace(b'"events":1', b'"events":50000')
    control = metered["mock"]

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.connect(("127.0.0.1", metered["stack"].http_port))
        sock.sendall(raw_request(b"/v1/chat/completions", body, [b"Authorization: Bearer " + metered["key"].encode()]))
        assert kit.wait_until(lambda: [r for r in control.requests(tag) if r["events_sent"] > 0], timeout=10)
    finally:
        sock.close()

    assert control.wait(tag, timeout=15)["disconnected"]
    rows = metered_rows(metered, kit, rows_before + 1)
    assert len(rows) == rows_before + 1 and rows[-1][0] == "client_aborted", rows[-1:]
    assert trace(metered)[1] == 0, "a reservation outlived its request"


def test_metered_workers_survived(metered):
    stack = metered["stack"]

    assert sorted(stack.worker_pids()) == metered["workers"]
    assert events((stack.run_dir / "tollgate.log").read_text(errors="replace"), "worker.exited") == []


# --- runs last ---------------------------------------------------------------------------------


def test_workers_survived_every_hostile_input(stack, workers_at_start, kit):
    pids, log_offset = workers_at_start

    with open(stack.run_dir / "tollgate.log", "rb") as log:
        log.seek(log_offset)
        since = log.read().decode(errors="replace")

    assert sorted(stack.worker_pids()) == pids, "a worker was replaced during the hostile tables"
    assert events(since, "worker.exited") == []


def test_no_client_credential_reached_a_log(stack, kit):
    logs = stack.logs()

    leaks = [line for line in logs.splitlines() if HOSTILE_KEY in line]
    assert leaks == [], f"client credentials written to the logs: {leaks[:3]}"
    kit.assert_no_secrets(logs, "stack e2e after the hostile tables")
