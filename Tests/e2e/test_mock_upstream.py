"""Self-check of scripts/mock_upstream.py alone: the openai SDK and raw HTTP talk straight to it.

No Tollgate is involved, so these tests are the baseline: when an end-to-end test fails and
these pass, the fault is in the proxy path, not in the mock.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import time

import httpx2 as httpx
import openai
import pytest

MOCK_KEY = "sk-mock-direct-key"


@pytest.fixture(scope="module")
def direct(standalone_mock):
    """The SDK pointed at the mock itself (base_url = mock /v1)."""
    sdk = openai.OpenAI(base_url=f"{standalone_mock.url}/v1", api_key=MOCK_KEY, max_retries=0, timeout=30)
    yield sdk
    sdk.close()


@pytest.fixture(scope="module")
def http(standalone_mock):
    with httpx.Client(base_url=standalone_mock.url, timeout=30, trust_env=False) as session:
        yield session


@pytest.fixture
def control(standalone_mock):
    return standalone_mock.control


def expected_prompt_tokens(*texts: str) -> int:
    return 10 + sum(len(text.encode()) for text in texts) // 4


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One Content-Length response from a raw socket: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        assert more, f"connection closed before a full head: {data!r}"
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = int(lengths[0])
    while len(body) < length:
        more = sock.recv(65536)
        assert more, "connection closed in the middle of a body"
        body += more
    return head, body[:length]


def test_health_and_unknown_routes(http, kit):
    assert http.get("/__mock/health").json() == {"ok": True}

    kit.assert_openai_error(http.get("/v1/nope"), 404)
    kit.assert_openai_error(http.get("/v1/chat/completions"), 404)
    kit.assert_openai_error(http.get("/__mock/nope"), 404)


def test_models_list(direct):
    ids = [model.id for model in direct.models.list()]

    assert "gpt-4o-mini" in ids and len(ids) == len(set(ids)) >= 2


def test_chat_non_stream_content_usage_and_headers(direct, control, tag, prompt, chat):
    raw = direct.chat.completions.with_raw_response.create(**chat(tag=tag, events=3))
    completion = raw.parse()
    record = control.wait(tag)

    assert completion.choices[0].message.content == "tok0 tok1 tok2 "
    assert completion.choices[0].finish_reason == "stop"
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini" and completion.system_fingerprint.startswith("fp_")
    assert completion.usage.prompt_tokens == expected_prompt_tokens(prompt)
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 3
    assert completion.usage.to_dict() == record["usage"]
    assert completion._request_id == record["id"] == raw.headers["x-request-id"]
    assert raw.headers["openai-version"] == "2020-10-01"
    assert raw.headers["content-type"] == "application/json"
    assert json.loads(record["response_body"]) == completion.to_dict()
    assert record["headers"]["authorization"] == f"Bearer {MOCK_KEY}"
    assert record["completed"] and not record["disconnected"] and record["status"] == 200
    assert record["finished_at"] >= record["received_at"]


def test_prompt_tokens_count_text_parts_and_responses_input(direct, control, make_tag):
    parts = [{"type": "text", "text": "a" * 40}, {"type": "text", "text": "é" * 10}]
    chat_tag, responses_tag = make_tag("chat"), make_tag("responses")

    completion = direct.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "system", "content": "b" * 8}, {"role": "user", "content": parts}],
        extra_body={"mock": {"tag": chat_tag, "events": 1}})
    response = direct.responses.create(model="gpt-4o-mini", input="c" * 100,
                                       extra_body={"mock": {"tag": responses_tag, "events": 2}})

    assert completion.usage.prompt_tokens == 10 + (8 + 40 + 20) // 4
    assert response.usage.input_tokens == 10 + 100 // 4
    assert response.usage.output_tokens == 2
    assert control.wait(chat_tag)["usage"]["prompt_tokens"] == completion.usage.prompt_tokens


def test_chat_stream_without_include_usage_has_no_usage_key(http, control, tag, kit):
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}],
            "mock": {"tag": tag, "events": 3}}

    response = http.post("/v1/chat/completions", json=body)
    events = kit.parse_sse(response.text)
    record = control.wait(tag)

    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["transfer-encoding"] == "chunked"
    assert events[-1]["data"] == "[DONE]"
    chunks = [json.loads(event["data"]) for event in events[:-1]]
    assert [chunk["choices"][0]["delta"] for chunk in chunks] == [
        {"role": "assistant", "content": ""}, {"content": "tok0 "}, {"content": "tok1 "}, {"content": "tok2 "}, {}]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None] * 4 + ["stop"]
    assert all("usage" not in chunk for chunk in chunks)
    assert all(isinstance(chunk["obfuscation"], str) and chunk["obfuscation"] for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1 and chunks[0]["object"] == "chat.completion.chunk"
    assert all(event["event"] is None for event in events)
    assert [e["data"] for e in record["sent_events"]] == [e["data"] for e in events]
    assert record["usage"] is None and record["events_sent"] == 3 and record["stream"]


def test_chat_stream_with_include_usage_ends_with_usage_chunk(direct, control, tag, chat):
    args = chat(tag=tag, events=4)
    stream = direct.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    record = control.wait(tag)

    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.to_dict() == record["usage"]
    assert chunks[-1].usage.completion_tokens == 4
    assert all(chunk.usage is None and len(chunk.choices) == 1 for chunk in chunks[:-1])
    sent = [json.loads(e["data"]) for e in record["sent_events"][:-1]]
    assert all("usage" in chunk for chunk in sent)
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == "tok0 tok1 tok2 tok3 "


def test_include_obfuscation_false_removes_padding(http, control, tag, kit):
    body = {"model": "m", "stream": True, "stream_options": {"include_obfuscation": False},
            "messages": [], "mock": {"tag": tag, "events": 2}}

    events = kit.parse_sse(http.post("/v1/chat/completions", json=body).text)

    assert all("obfuscation" not in json.loads(event["data"]) for event in events[:-1])


def test_stream_options_without_stream_and_bad_stream_type_are_400(http, kit):
    base = {"model": "m", "messages": []}

    kit.assert_openai_error(http.post("/v1/chat/completions", json={**base, "stream_options": {}}), 400,
                            param="stream_options")
    kit.assert_openai_error(http.post("/v1/chat/completions", json={**base, "stream": "yes"}), 400, param="stream")
    kit.assert_openai_error(http.post("/v1/chat/completions", json={"messages": []}), 400, param="model")
    responses = {"model": "m", "input": "x", "stream": True, "stream_options": {"include_usage": True}}
    kit.assert_openai_error(http.post("/v1/responses", json=responses), 400, param="stream_options.include_usage")
    kit.assert_openai_error(http.post("/v1/chat/completions", json={**base, "mock": {"events": "x"}}), 400,
                            param="mock.events")


def test_malformed_json_and_non_object_bodies_are_400(http, kit):
    for content in (b'{"model": "m", "messages": [', b"[1, 2]", b"\xff\xfe", b""):
        response = http.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
        kit.assert_openai_error(response, 400)


def test_responses_non_stream(direct, control, tag, prompt):
    response = direct.responses.create(model="gpt-4o-mini", input=prompt, extra_body={"mock": {"tag": tag}})
    record = control.wait(tag)

    assert response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == "tok0 tok1 tok2 tok3 tok4 "
    assert response.usage.to_dict() == record["usage"]
    assert response.usage.input_tokens == expected_prompt_tokens(prompt) and response.usage.output_tokens == 5
    assert response._request_id == record["id"]


def test_responses_stream_helper_and_event_framing(direct, http, control, make_tag, prompt, kit):
    helper_tag, raw_tag = make_tag("helper"), make_tag("raw")

    with direct.responses.stream(model="gpt-4o-mini", input=prompt, extra_body={"mock": {"tag": helper_tag}}) as s:
        final = s.get_final_response()
    body = {"model": "m", "input": "hi", "stream": True, "mock": {"tag": raw_tag, "events": 2}}
    events = kit.parse_sse(http.post("/v1/responses", json=body).text)

    assert final.output_text == "tok0 tok1 tok2 tok3 tok4 "
    assert final.usage.to_dict() == control.wait(helper_tag)["usage"]
    payloads = [json.loads(event["data"]) for event in events]
    assert [event["event"] for event in events] == [p["type"] for p in payloads]
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    assert [p["type"] for p in payloads] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert payloads[0]["response"]["usage"] is None and payloads[-1]["response"]["usage"]["output_tokens"] == 2
    assert all(event["data"] != "[DONE]" for event in events)


def test_responses_reasoning_cached_and_incomplete(direct, control, tag):
    mock = {"tag": tag, "events": 2, "reasoning_tokens": 3, "cached_tokens": 4, "incomplete": True}
    with direct.responses.stream(model="o4-mini", input="x" * 40, extra_body={"mock": mock}) as stream:
        events = list(stream)
    record = control.wait(tag)

    assert events[-1].type == "response.incomplete"
    usage = events[-1].response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (20, 5, 25)
    assert usage.input_tokens_details.cached_tokens == 4 and usage.output_tokens_details.reasoning_tokens == 3
    assert usage.to_dict() == record["usage"]
    assert [item.type for item in events[-1].response.output] == ["reasoning", "message"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("status", "exception"), [
    (400, openai.BadRequestError), (401, openai.AuthenticationError), (404, openai.NotFoundError),
    (429, openai.RateLimitError), (500, openai.InternalServerError), (503, openai.InternalServerError)])
def test_error_statuses_become_sdk_exceptions(direct, http, control, make_tag, chat, status, exception, stream):
    tag = make_tag(str(status))
    message = f"mock failure {status} for {tag}"

    with pytest.raises(exception) as caught:
        direct.chat.completions.create(**chat(tag=tag, status=status, error_message=message), stream=stream)
    record = control.wait(tag)

    assert caught.value.status_code == status
    assert caught.value.body["message"] == message and message in caught.value.message
    assert caught.value.request_id == record["id"]
    retry = {"retry-after": "0", "x-should-retry": "false"}
    sent = {name: record["response_headers"].get(name) for name in retry}
    assert sent == (retry if status == 429 or status >= 500 else {"retry-after": None, "x-should-retry": None})


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_fail_after_sends_error_event_sdk_raises_api_error(direct, control, tag, chat, api):
    mock = {"tag": tag, "fail_after": 2, "error_message": "mock exploded mid-stream"}
    received = []

    with pytest.raises(openai.APIError) as caught:
        if api == "chat":
            for chunk in direct.chat.completions.create(**chat(**mock), stream=True):
                received.append(chunk.choices[0].delta.content)
        else:
            for event in direct.responses.create(model="m", input="x", stream=True, extra_body={"mock": mock}):
                received.append(getattr(event, "delta", None))
    record = control.wait(tag)

    assert not isinstance(caught.value, (openai.APIStatusError, openai.APIConnectionError))
    assert caught.value.message == "mock exploded mid-stream"
    assert [text for text in received if text and text.startswith("tok")] == ["tok0 ", "tok1 "]
    assert record["events_sent"] == 2 and record["completed"] and record["usage"] is None


def test_reset_after_aborts_the_chunked_body(http, control, tag, kit):
    body = {"model": "m", "stream": True, "messages": [], "mock": {"tag": tag, "reset_after": 2}}
    received = b""

    with pytest.raises(httpx.RemoteProtocolError):
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            for piece in response.iter_bytes():
                received += piece
    record = control.wait(tag)

    contents = [json.loads(e["data"])["choices"][0]["delta"].get("content") for e in kit.parse_sse(received.decode())]
    assert contents == ["", "tok0 ", "tok1 "]
    assert record["events_sent"] == 2 and not record["completed"] and not record["disconnected"]


def test_stall_after_goes_silent_then_continues(http, control, tag):
    body = {"model": "m", "stream": True, "messages": [], "mock": {"tag": tag, "stall_after": 1, "stall_ms": 400}}
    arrivals = []

    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and "tok" in line:
                arrivals.append(time.monotonic())
    record = control.wait(tag)

    assert len(arrivals) == 5
    assert arrivals[1] - arrivals[0] >= 0.35
    assert record["completed"] and record["events_sent"] == 5


def test_stall_before_and_not_json(http, control, make_tag):
    stall_tag, not_json_tag = make_tag("stall"), make_tag("notjson")
    started = time.monotonic()

    stalled = http.post("/v1/chat/completions", json={"model": "m", "messages": [],
                                                      "mock": {"tag": stall_tag, "stall_before_ms": 300}})
    elapsed = time.monotonic() - started
    garbage = http.post("/v1/chat/completions", json={"model": "m", "messages": [],
                                                      "mock": {"tag": not_json_tag, "not_json": True}})

    assert stalled.status_code == 200 and elapsed >= 0.3
    assert control.wait(stall_tag)["completed"]
    assert garbage.status_code == 200 and garbage.headers["content-type"] == "application/json"
    with pytest.raises(ValueError):
        json.loads(garbage.text)


def test_disconnect_noticed_while_sleeping(standalone_mock, control, tag):
    body = json.dumps({"model": "m", "stream": True, "messages": [],
                       "mock": {"tag": tag, "delay_ms": 3000}}).encode()
    sock = socket.create_connection(("127.0.0.1", standalone_mock.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    first = sock.recv(65536)

    closed_at = time.monotonic()
    sock.close()
    record = control.wait(tag, timeout=5)

    assert first.startswith(b"HTTP/1.1 200")
    assert record["disconnected"] and not record["completed"] and record["events_sent"] == 0
    assert record["finished_at"] - closed_at < 0.25


def test_chunked_body_with_expect_continue_and_keep_alive(standalone_mock, control, make_tag):
    first_tag, second_tag = make_tag("chunked"), make_tag("second")
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "é" * 50}],
                       "mock": {"tag": first_tag, "events": 1}}).encode()
    second = json.dumps({"model": "m", "messages": [], "mock": {"tag": second_tag}}).encode()

    with socket.create_connection(("127.0.0.1", standalone_mock.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\nTransfer-Encoding: chunked\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        assert sock.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"%x\r\n%s\r\n%x;ext=1\r\n%s\r\n0\r\n\r\n" % (10, body[:10], len(body) - 10, body[10:]))
        head, reply = read_response(sock)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(second), second))
        second_head, _ = read_response(sock)

    assert head.startswith(b"HTTP/1.1 200") and b"connection: keep-alive" in head
    assert json.loads(reply)["choices"][0]["message"]["content"] == "tok0 "
    assert second_head.startswith(b"HTTP/1.1 200")
    assert control.wait(first_tag)["body"] == body.decode()
    assert control.wait(second_tag)["completed"]


def test_keepalive_comments_are_sent_and_sdk_ignores_them(direct, http, tag, make_tag, chat):
    body = {"model": "m", "stream": True, "messages": [], "mock": {"tag": tag, "events": 2, "keepalive": True}}

    text = http.post("/v1/chat/completions", json=body).text
    chunks = list(direct.chat.completions.create(**chat(tag=make_tag("sdk"), keepalive=True), stream=True))

    assert text.count(": keep-alive\n\n") == 5
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok0 tok1 tok2 tok3 tok4 "


def test_wait_times_out_with_408_and_requests_keep_arrival_order(http, control, make_tag, chat, direct):
    tags = [make_tag(str(i)) for i in range(3)]
    shared = make_tag("shared")

    started = time.monotonic()
    timed_out = http.get("/__mock/wait", params={"tag": make_tag("never"), "timeout": "0.3"})
    waited = time.monotonic() - started
    for tag in tags:
        direct.chat.completions.create(**chat(tag=tag, events=1))
    for _ in range(2):
        direct.chat.completions.create(**chat(tag=shared, events=1))

    assert timed_out.status_code == 408 and 0.3 <= waited < 5
    ordered = [r["tag"] for r in control.requests() if r["tag"] in tags]
    assert ordered == tags
    assert len(control.requests(shared)) == 2
    assert http.get("/__mock/wait", params={"tag": shared, "until": "bogus"}).status_code == 400


def test_received_wait_returns_before_finish(control, standalone_mock, tag):
    body = json.dumps({"model": "m", "stream": True, "messages": [],
                       "mock": {"tag": tag, "delay_ms": 2000}}).encode()

    with socket.create_connection(("127.0.0.1", standalone_mock.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body))
        record = control.wait(tag, until="received", timeout=5)

    assert record["finished_at"] is None and record["tag"] == tag
    assert control.wait(tag, timeout=5)["disconnected"]


def test_reset_forgets_records(direct, control, tag, chat):
    direct.chat.completions.create(**chat(tag=tag, events=1))
    assert len(control.requests(tag)) == 1

    control.reset()

    assert control.requests(tag) == [] and control.requests() == []


def test_two_thousand_concurrent_streams(standalone_mock, control):
    count = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 500)), hard))
    body = json.dumps({"model": "m", "stream": True, "messages": [],
                       "mock": {"tag": "crowd", "events": 3, "delay_ms": 500}}).encode()
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def one() -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", standalone_mock.port)
        writer.write(request)
        data = await reader.readuntil(b"\n\r\n0\r\n\r\n")
        writer.close()
        return data.count(b"data: ") == 6 and b"data: [DONE]" in data

    async def crowd() -> list[bool]:
        return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 60)

    started = time.monotonic()
    results = asyncio.run(crowd())
    elapsed = time.monotonic() - started

    assert all(results) and len(results) == count
    records = control.requests("crowd")
    assert len(records) == count and all(r["completed"] for r in records)
    # The streams overlapped: every one was received before the first one finished.
    assert elapsed < 30
    assert max(r["received_at"] for r in records) < min(r["finished_at"] for r in records)


def test_mock_log_has_one_line_per_request_and_no_secrets(standalone_mock, direct, chat, tag, kit):
    direct.chat.completions.create(**chat(tag=tag, events=1))
    standalone_mock.control.wait(tag)

    log = standalone_mock.log_path.read_text()

    assert len([line for line in log.splitlines() if tag in line]) == 1
    assert MOCK_KEY not in log and kit.MARKER not in log and "authorization" not in log.lower()
