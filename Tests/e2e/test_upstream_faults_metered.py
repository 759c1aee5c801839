"""Upstream faults with metering: every faulty request ends in time, in the right form, with one ledger row.

The issue's list: refused connection, stall before the first byte, stall mid stream, reset mid
stream, a 5xx, a body that is not JSON (plus an error event the upstream sends mid stream).
Each is tried on chat (streamed, and not streamed where the fault exists for a whole answer) and
on Responses streams. The client must get the right status with an OpenAI error body, or, once a
stream has started, an SSE error event in the API's own form; within the configured timeouts;
and the request must leave exactly one ledger row with outcome `upstream_error`, the status the
client got, and its reservation released. An upstream error answer is never charged: the
upstream did not serve it.

Stacks: "e2e-faults-metered" (nginx 18060, mock 18160, its own PostgreSQL) with both upstream
timeouts at 2 s, and "e2e-faults-refused" (nginx 18061) on the same database whose upstream is
127.0.0.1:18161, where nothing listens. Ledger rows are awaited with a deadline, never a sleep.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator

import httpx2 as httpx
import pytest

TIMEOUT_S = 2
TIMEOUTS = {"TOLLGATE_UPSTREAM_TIMEOUT": str(TIMEOUT_S), "TOLLGATE_UPSTREAM_IDLE_TIMEOUT": str(TIMEOUT_S)}
CLOSED_PORT = 18161
QUOTA = 10_000_000
MAX_TOKENS = 64
TIMED_OUT = (TIMEOUT_S - 0.1, 5.0)
"""Seconds a timed-out request may take: the timeout (less clock granularity), at most 5 s."""
PROMPT_FAULT_S = 1.5
"""A fault that needs no timeout must be answered well before the 2 s timeout would fire."""
LEDGER_COLUMNS = ("user_id", "key_id", "endpoint", "stream", "key_source", "outcome", "http_status",
                  "input_tokens", "output_tokens", "total_tokens", "usage_source")


@dataclass(frozen=True)
class Fault:
    """One upstream fault: the mock options that cause it and what the client and ledger must show."""

    mock: dict | None
    """Options for the mock; None means the refused stack, whose upstream is a closed port."""
    status: int
    """Status the client gets; 200 means the stream started and ends with an SSE error event."""
    code: str | None
    """The error code the client sees (in the JSON body or in the SSE error event)."""
    estimated: bool
    """Whether the ledger row carries estimated usage (the upstream started an answer and reported no
    usage); when False the request must be charged nothing (usage_source 'reported', 0 tokens)."""
    window: tuple[float, float] = (0.0, PROMPT_FAULT_S)
    """Seconds from the request (or, for a stalled stream, from its last content event) to the error."""
    message: str | None = None
    """The upstream's own error message when it must reach the client unchanged."""


FAULTS = {
    "refused": Fault(None, 502, "upstream_unreachable", estimated=False),
    "stall-before-head": Fault({"stall_before_ms": 8000}, 504, "upstream_timeout", estimated=False,
                               window=TIMED_OUT),
    "stall-mid-stream": Fault({"stall_after": 2}, 200, "upstream_timeout", estimated=True, window=TIMED_OUT),
    "reset-mid-stream": Fault({"reset_after": 2}, 200, "upstream_stream_interrupted", estimated=True),
    "reset-mid-body": Fault({"reset_after": 2}, 502, "upstream_stream_interrupted", estimated=True),
    "status-500": Fault({"status": 500, "error_message": "upstream exploded"}, 500, None, estimated=False,
                        message="upstream exploded"),
    "not-json": Fault({"not_json": True}, 502, "upstream_invalid_response", estimated=True),
    "error-event-mid-stream": Fault({"fail_after": 2, "error_message": "upstream gave up", "error_code": "boom"},
                                    200, "boom", estimated=True, message="upstream gave up"),
}


class ChargedForNothing(AssertionError):
    """A request the upstream answered with an error status was charged (estimated) tokens."""


CASES = [
    ("refused", "chat", False), ("refused", "chat", True), ("refused", "responses", True),
    ("stall-before-head", "chat", False), ("stall-before-head", "chat", True),
    ("stall-before-head", "responses", True),
    ("stall-mid-stream", "chat", True), ("stall-mid-stream", "responses", True),
    ("reset-mid-stream", "chat", True), ("reset-mid-stream", "responses", True),
    ("reset-mid-body", "chat", False),
    ("status-500", "chat", False),
    ("status-500", "chat", True),
    ("status-500", "responses", True),
    ("not-json", "chat", False), ("not-json", "chat", True), ("not-json", "responses", True),
    ("error-event-mid-stream", "chat", True), ("error-event-mid-stream", "responses", True),
]
ISSUED: list[str] = []
"""Every key this module issued, for the scan of the stacks' logs."""


def case_id(case) -> str:
    """A readable test id, e.g. "stall-mid-stream-chat-stream"."""
    name, api, stream = case.values if hasattr(case, "values") else case
    return f"{name}-{api}-{'stream' if stream else 'json'}"


@dataclass
class Answer:
    """What the client received, with monotonic arrival times."""

    status: int
    response: httpx.Response
    started: float
    ended: float
    events: list[tuple[float, dict]] = field(default_factory=list)
    """SSE events as (arrival time, {"event", "data"}) for an event stream."""

    def content_events(self, api: str) -> list[float]:
        """Arrival times of the events that carried generated text."""
        times = []
        for arrived, event in self.events:
            payload = parse_json(event["data"])
            if api == "chat":
                choices = payload.get("choices") if isinstance(payload, dict) else None
                if choices and choices[0].get("delta", {}).get("content"):
                    times.append(arrived)
            elif event["event"] == "response.output_text.delta":
                times.append(arrived)
        return times


def parse_json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


def exchange(stack, key: str, api: str, stream: bool, prompt: str, mock: dict) -> Answer:
    """Sends one request through nginx and reads the answer to its end, timing each SSE event."""
    path = "/chat/completions" if api == "chat" else "/responses"
    body = {"model": "gpt-4o-mini", "stream": stream, "mock": mock}
    if api == "chat":
        body.update(messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS)
    else:
        body.update(input=prompt, max_output_tokens=MAX_TOKENS)
    started = time.monotonic()
    with httpx.stream("POST", f"{stack.base_url}{path}", json=body, timeout=30, trust_env=False,
                      headers={"authorization": f"Bearer {key}"}) as response:
        answer = Answer(response.status_code, response, started, started)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            read_events(response, answer)
        else:
            response.read()
    answer.ended = time.monotonic()
    return answer


def read_events(response: httpx.Response, answer: Answer) -> None:
    pending = ""
    for text in response.iter_text():
        pending += text.replace("\r\n", "\n")
        while "\n\n" in pending:
            block, pending = pending.split("\n\n", 1)
            event = {"event": None, "data": []}
            for line in block.split("\n"):
                name, _, value = line.partition(":")
                if name == "event":
                    event["event"] = value.strip()
                elif name == "data":
                    event["data"].append(value[1:] if value.startswith(" ") else value)
            if event["data"]:
                answer.events.append((time.monotonic(), {**event, "data": "\n".join(event["data"])}))
    assert not pending.strip(), f"the stream ended inside an event: {pending[:200]!r}"


def error_events(answer: Answer, api: str) -> list[tuple[float, dict]]:
    """The SSE error events: `data: {"error":…}` in chat, `event: error` in Responses; (time, error object)."""
    found = []
    for arrived, event in answer.events:
        payload = parse_json(event["data"])
        if api == "chat" and isinstance(payload, dict) and "error" in payload:
            found.append((arrived, payload["error"]))
        elif api == "responses" and event["event"] == "error":
            assert isinstance(payload, dict) and payload.get("type") == "error", event
            found.append((arrived, payload["error"]))
    return found


def ledger_rows(stack, user_id: int) -> list[dict]:
    rows = stack.psql(f"SELECT {', '.join(LEDGER_COLUMNS)} FROM tollgate.ledger WHERE user_id = {user_id}")
    numbers = {"user_id", "key_id", "http_status", "input_tokens", "output_tokens", "total_tokens"}
    parsed = [dict(zip(LEDGER_COLUMNS, row)) for row in rows]
    for row in parsed:
        row.update({name: int(row[name]) for name in numbers if row[name] is not None})
        row["stream"] = row["stream"] == "t"
    return parsed


def settled_row(stack, kit, user_id: int) -> dict:
    """The user's single ledger row, once it is there (fails on none within 10 s, or on several)."""
    rows = kit.wait_until(lambda: ledger_rows(stack, user_id), timeout=10)
    assert rows, f"user {user_id}: no ledger row within 10 s"
    assert len(rows) == 1, f"user {user_id}: {len(rows)} ledger rows for one request: {rows}"
    return rows[0]


def closed_port_refuses(port: int) -> bool:
    """True when a connection to 127.0.0.1:port is refused (nothing listens there)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


@pytest.fixture(scope="module")
def faulty(stack_factory, kit) -> Iterator[object]:
    serving = stack_factory("e2e-faults-metered", 18060, 18160, database=True, env=TIMEOUTS)
    try:
        yield serving
    finally:
        serving.stop()
    logs = serving.logs()
    kit.assert_no_secrets(logs, "stack e2e-faults-metered after shutdown")
    assert not any(key in logs for key in ISSUED), "stack e2e-faults-metered: a Tollgate key is in the logs"


@pytest.fixture(scope="module")
def refused(stack_factory, faulty, kit) -> Iterator[object]:
    assert closed_port_refuses(CLOSED_PORT), f"something listens on 127.0.0.1:{CLOSED_PORT}"
    serving = stack_factory("e2e-faults-refused", 18061, None, database_url=faulty.database_url,
                            upstream_url=f"http://127.0.0.1:{CLOSED_PORT}/v1", env=TIMEOUTS)
    try:
        yield serving
    finally:
        serving.stop()
    logs = serving.logs()
    kit.assert_no_secrets(logs, "stack e2e-faults-refused after shutdown")
    assert not any(key in logs for key in ISSUED), "stack e2e-faults-refused: a Tollgate key is in the logs"


@pytest.fixture(scope="module")
def fault_mock(faulty, kit) -> Iterator[object]:
    control = kit.MockControl(faulty.mock_url)
    yield control
    control.close()


@pytest.fixture
def caller(faulty) -> dict:
    """A fresh user with a quota (so every request holds a reservation) and a key for it."""
    name = f"fault-{uuid.uuid4().hex[:12]}"
    added = faulty.tollgate("user", "add", name, "--quota", str(QUOTA), "--period", "day")
    assert added.returncode == 0, added.stderr
    issued = faulty.tollgate("key", "issue", name)
    assert issued.returncode == 0, issued.stderr
    key = issued.stdout.splitlines()[0]
    key_id = next(int(line.split(":")[1]) for line in issued.stdout.splitlines() if line.startswith("id:"))
    [(user_id,)] = faulty.psql(f"SELECT id FROM tollgate.users WHERE name = '{name}'")
    ISSUED.append(key)
    return {"key": key, "key_id": key_id, "user_id": int(user_id)}


def assert_client_outcome(answer: Answer, fault: Fault, api: str, kit) -> None:
    """The status, the error's form and the timing the client saw."""
    if fault.status != 200:
        error = kit.assert_openai_error(answer.response, fault.status)
        assert error["code"] == fault.code, error
        assert error["message"] == (fault.message or error["message"]), error
        assert answer.events == [], "an error answer came as an event stream"
        elapsed = answer.ended - answer.started
        assert fault.window[0] <= elapsed <= fault.window[1], f"answered after {elapsed:.2f} s, not in {fault.window}"
        return

    assert answer.response.headers["content-type"].startswith("text/event-stream")
    content = answer.content_events(api)
    [(failed_at, error)] = error_events(answer, api)
    assert len(content) == 2, f"expected the two content events before the fault, got {len(content)}"
    assert error["code"] == fault.code and error["message"], error
    assert error["message"] == (fault.message or error["message"]), error
    assert {"message", "type", "param", "code"} <= set(error), error
    waited = failed_at - content[-1]
    assert fault.window[0] <= waited <= fault.window[1], f"error event {waited:.2f} s after the last content"
    if api == "chat":
        assert answer.events[-1][1]["data"] != "[DONE]", "a broken chat stream ended as if complete"
        assert parse_json(answer.events[-1][1]["data"]).get("error") is not None, "events followed the error"
    else:
        kinds = [event["event"] for _, event in answer.events]
        assert "response.completed" not in kinds, "a broken Responses stream ended as if complete"
        numbers = [parse_json(event["data"])["sequence_number"] for _, event in answer.events]
        assert numbers == list(range(len(numbers))), f"sequence numbers are not 0..n: {numbers}"


def assert_mock_saw_one_call(fault_mock, fault: Fault, tag: str, name: str) -> None:
    """Exactly one upstream call per request (no retry), ended the way the fault ends it."""
    record = fault_mock.wait(tag, timeout=15)
    assert len(fault_mock.requests(tag)) == 1, "Tollgate called the upstream more than once"
    if name.startswith("stall"):
        assert record["disconnected"] and not record["completed"], "Tollgate kept the stalled upstream call open"
    elif name.startswith("reset"):
        # A stream is cut after its two content events; a whole answer in the middle of its body.
        assert not record["completed"] and record["events_sent"] == (2 if record["stream"] else 0)
    else:
        assert record["completed"], "the mock did not finish its faulty answer"


@pytest.mark.parametrize(("name", "api", "stream"), CASES,
                         ids=[case_id(case) for case in CASES])
def test_fault_ends_in_time_with_one_upstream_error_row(faulty, refused, fault_mock, caller, tag, prompt, kit,
                                                        name, api, stream):
    fault = FAULTS[name]
    stack = refused if fault.mock is None else faulty

    answer = exchange(stack, caller["key"], api, stream, prompt, {"tag": tag, "events": 5, **(fault.mock or {})})
    if fault.mock is not None:
        assert_mock_saw_one_call(fault_mock, fault, tag, name)
    row = settled_row(faulty, kit, caller["user_id"])

    assert answer.status == fault.status, f"status {answer.status}: {answer.response.headers}"
    assert_client_outcome(answer, fault, api, kit)
    assert row["outcome"] == "upstream_error" and row["http_status"] == fault.status, row
    endpoint = "chat.completions" if api == "chat" else "responses"
    assert (row["endpoint"], row["stream"], row["key_source"]) == (endpoint, stream, "platform"), row
    assert (row["user_id"], row["key_id"]) == (caller["user_id"], caller["key_id"]), row
    assert row["total_tokens"] == row["input_tokens"] + row["output_tokens"], row
    if fault.estimated:
        assert row["usage_source"] == "estimated" and row["input_tokens"] > 0, row
        assert (row["output_tokens"] > 0) == (fault.status == 200), row
    if fault.mock is None:
        assert fault_mock.requests(tag) == [], "the refused stack reached the mock"
    assert faulty.psql(f"SELECT count(*) FROM tollgate.reservations WHERE user_id = {caller['user_id']}") == [("0",)]
    counters = faulty.psql(f"SELECT used_tokens, reserved_tokens FROM tollgate.usage_counters "
                           f"WHERE user_id = {caller['user_id']}")
    assert counters == [(str(row["total_tokens"]), "0")], f"counter {counters} after a row of {row['total_tokens']}"
    # Last, with its own exception type, so it names this failure precisely.
    if not fault.estimated and (row["usage_source"], row["total_tokens"]) != ("reported", 0):
        raise ChargedForNothing(f"a request the upstream did not serve was charged: {row}")
