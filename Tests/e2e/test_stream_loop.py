"""Open streams are served by each worker's event loop, not by a thread each.

A worker with a single event-loop thread holds 24 open streams at once, while non-stream
requests are still answered; with a thread per request the second stream would wait for the
first to end. Closing the streams aborts each upstream transfer from the loop.
"""

from __future__ import annotations

import contextlib

import httpx2 as httpx
import pytest

THREADS = 1
STREAMS = 24


@pytest.fixture(scope="module")
def few_threads(stack_factory, kit):
    """One worker with one event-loop thread (18070 / 18170)."""
    serving = stack_factory("e2e-stream-loop", 18070, 18170, workers=1, threads=THREADS)
    try:
        yield serving
    finally:
        serving.stop()
    kit.assert_no_secrets(serving.logs(), "stack e2e-stream-loop")


def first_delta(lines) -> str:
    """The data of the first SSE event among `lines` that carries content (the role chunk
    before it carries none). The caller keeps `lines` alive: an abandoned line iterator closes
    its response when it is collected."""
    for line in lines:
        if line.startswith("data: ") and '"content":"tok' in line:
            return line[len("data: "):]
    raise AssertionError("the stream ended before its first delta")


def test_more_open_streams_than_threads(few_threads, kit, make_tag, prompt):
    control = kit.MockControl(few_threads.mock_url)
    headers = {"authorization": f"Bearer {kit.CLIENT_KEY}"}
    tags = [make_tag(f"s{index}") for index in range(STREAMS)]
    readers = []
    with httpx.Client(base_url=few_threads.base_url, headers=headers, timeout=15, trust_env=False,
                      limits=httpx.Limits(max_connections=STREAMS + 4)) as http, contextlib.ExitStack() as held:
        for tag in tags:
            # One event, then the mock stays silent for a minute: the stream stays open.
            body = {"model": kit.MODEL, "stream": True, "messages": [{"role": "user", "content": prompt}],
                    "mock": {"tag": tag, "events": 3, "stall_after": 1, "stall_ms": 60_000}}
            response = held.enter_context(http.stream("POST", "/chat/completions", json=body))
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers.get("x-tollgate-request-id")
            lines = response.iter_lines()
            readers.append(lines)
            assert '"tok0 "' in first_delta(lines), f"stream {tag} did not start"

        # All 24 streams are open and every thread is free again: a plain request is answered.
        plain = http.post("/chat/completions", json={
            "model": kit.MODEL, "messages": [{"role": "user", "content": prompt}],
            "mock": {"tag": make_tag("plain"), "events": 2}})
        assert plain.status_code == 200, plain.text
        assert plain.json()["choices"][0]["message"]["content"] == "tok0 tok1 "

        still_open = [record["tag"] for record in control.requests() if record["tag"] in tags
                      and record["finished_at"] is None]
        assert sorted(still_open) == sorted(tags), "streams ended before the client closed them"

    # The client closed all 24: each upstream transfer is aborted rather than left to stall.
    try:
        for tag in tags:
            record = control.wait(tag, timeout=5)
            assert record["disconnected"] and not record["completed"], record
    finally:
        control.close()
