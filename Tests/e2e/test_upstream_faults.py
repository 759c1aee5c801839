"""Upstream timeouts and faults, and a client that hangs up early.

The main stack runs with TOLLGATE_UPSTREAM_TIMEOUT=2 and TOLLGATE_UPSTREAM_IDLE_TIMEOUT=2.
"""

from __future__ import annotations

import time

import openai
import pytest


def chat_body(prompt: str, stream: bool, **mock: object) -> dict:
    return {"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": prompt}],
            "mock": mock}


def contents(chunks) -> list[str]:
    return [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_silent_upstream_before_head_is_504(raw, mock, tag, prompt, kit, stream):
    started = time.monotonic()

    response = raw.post("/chat/completions", json=chat_body(prompt, stream, tag=tag, stall_before_ms=4000))
    elapsed = time.monotonic() - started
    record = mock.wait(tag, timeout=10)

    kit.assert_openai_error(response, 504)
    assert 1.5 <= elapsed < 3.9, f"504 after {elapsed:.2f} s; the upstream timeout is 2 s"
    assert record["disconnected"] and not record["completed"], "Tollgate kept the timed-out upstream call open"


def test_stream_error_event_after_two_chunks_raises_api_error(client, mock, tag, chat):
    message = "upstream blew up after two chunks"
    received = []

    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(**chat(tag=tag, fail_after=2, error_message=message),
                                                    stream=True):
            received.append(chunk)
    record = mock.wait(tag)

    assert not isinstance(caught.value, (openai.APIStatusError, openai.APIConnectionError)), repr(caught.value)
    assert caught.value.message == message
    assert contents(received) == ["tok0 ", "tok1 "]
    assert record["events_sent"] == 2


def test_upstream_reset_mid_stream_becomes_sse_error_event(client, mock, tag, chat):
    received = []

    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(**chat(tag=tag, reset_after=2), stream=True):
            received.append(chunk)
    record = mock.wait(tag)

    assert not isinstance(caught.value, (openai.APIStatusError, openai.APIConnectionError)), (
        f"the stream was cut instead of ending with an SSE error event: {caught.value!r}")
    assert isinstance(caught.value.body, dict) and caught.value.body.get("message"), caught.value.body
    assert contents(received) == ["tok0 ", "tok1 "]
    assert record["events_sent"] == 2 and not record["completed"]


def test_upstream_silent_mid_stream_gets_error_event_after_idle_timeout(client, mock, tag, chat):
    received, arrivals = [], []

    with pytest.raises(openai.APIError) as caught:
        # A short client timeout: without Tollgate's idle timeout the mock would stay silent for 60 s.
        for chunk in client.with_options(timeout=10).chat.completions.create(**chat(tag=tag, stall_after=1),
                                                                             stream=True):
            received.append(chunk)
            arrivals.append(time.monotonic())
    failed_at = time.monotonic()
    record = mock.wait(tag, timeout=10)

    assert not isinstance(caught.value, (openai.APIStatusError, openai.APIConnectionError)), repr(caught.value)
    assert contents(received) == ["tok0 "]
    silence = failed_at - arrivals[-1]
    assert 1.5 <= silence <= 4.5, f"error event came {silence:.2f} s after the last chunk; idle timeout is 2 s"
    assert record["disconnected"], "Tollgate kept the idle upstream call open"


def test_upstream_body_not_json_is_502(raw, mock, tag, prompt, kit):
    response = raw.post("/chat/completions", json=chat_body(prompt, False, tag=tag, not_json=True))

    kit.assert_openai_error(response, 502)
    assert mock.wait(tag)["completed"]


def test_client_closing_stream_stops_upstream_quickly(client, mock, tag, chat, e2e_run_dir):
    stream = client.chat.completions.create(**chat(tag=tag, delay_ms=3000), stream=True)
    first = next(iter(stream))

    closed_at = time.monotonic()
    stream.close()
    record = mock.wait(tag, timeout=10)

    latency_ms = (record["finished_at"] - closed_at) * 1000
    print(f"disconnect latency: {latency_ms:.1f} ms")
    (e2e_run_dir / "disconnect-latency.txt").write_text(f"{latency_ms:.1f} ms\n")
    assert first.choices[0].delta.role == "assistant"
    assert record["disconnected"] and not record["completed"], "the upstream call outlived the client"
    assert record["events_sent"] == 0
    assert latency_ms < 250, f"upstream closed {latency_ms:.1f} ms after the client left"
