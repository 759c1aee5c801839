"""Chat Completions through nginx → Tollgate → mock upstream, driven by the openai SDK and raw HTTP."""

from __future__ import annotations

import json
import time

import openai
import pytest

PASSED_THROUGH = [
    "x-request-id", "openai-processing-ms", "openai-version",
    "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
]


def without_null_usage(chunk: dict) -> dict:
    """A chunk without `"usage": null`: a proxy that injected include_usage may pass or drop that key."""
    return {key: value for key, value in chunk.items() if not (key == "usage" and value is None)}


def visible_chunks(record: dict) -> list[dict]:
    """The chunks the mock sent that a client which did not ask for usage should see."""
    sent = [json.loads(event["data"]) for event in record["sent_events"] if event["data"] != "[DONE]"]
    return [without_null_usage(chunk) for chunk in sent if chunk.get("choices")]


def test_chat_non_stream_content_usage_and_headers(client, mock, tag, chat):
    response = client.chat.completions.with_raw_response.create(**chat(tag=tag, events=3))
    completion = response.parse()
    record = mock.wait(tag)

    assert completion.choices[0].message.content == "tok0 tok1 tok2 "
    assert completion.to_dict() == json.loads(record["response_body"])
    assert completion.usage.to_dict() == record["usage"]
    assert completion._request_id == record["id"]
    sent = record["response_headers"]
    received = {name: response.headers.get(name) for name in PASSED_THROUGH}
    assert received == {name: sent[name] for name in PASSED_THROUGH}
    assert response.headers["content-type"].startswith("application/json")


def test_chat_non_stream_hop_by_hop_headers_not_duplicated(raw, mock, tag, prompt):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], "mock": {"tag": tag}}

    response = raw.post("/chat/completions", json=body)
    record = mock.wait(tag)

    assert response.status_code == 200, response.text
    assert record["response_headers"]["keep-alive"] == "timeout=600"
    assert "keep-alive" not in response.headers, "the upstream's Keep-Alive header leaked to the client"
    for name in ("transfer-encoding", "connection", "content-length", "content-type", "x-request-id"):
        values = response.headers.get_list(name)
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
    assert response.headers.get_list("content-type") == ["application/json"]
    assert response.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 tok4 "


def test_chat_stream_chunks_equal_mock_and_arrive_incrementally(client, mock, tag, chat):
    arrivals, chunks = [], []

    stream = client.chat.completions.create(**chat(tag=tag, events=5, delay_ms=300), stream=True)
    for chunk in stream:
        arrivals.append(time.monotonic())
        chunks.append(without_null_usage(chunk.to_dict()))
    record = mock.wait(tag)

    assert chunks == visible_chunks(record)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "tok0 tok1 tok2 tok3 tok4 "
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert arrivals[-1] - arrivals[0] >= 1.0, f"stream was buffered: first-to-last {arrivals[-1] - arrivals[0]:.3f} s"
    assert record["completed"] and not record["disconnected"]


def test_chat_stream_raw_events_equal_mock_and_end_with_done(raw, mock, tag, prompt, kit):
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": prompt}],
            "mock": {"tag": tag, "events": 3}}

    with raw.stream("POST", "/chat/completions", json=body) as response:
        text = response.read().decode()
    events = kit.parse_sse(text)
    record = mock.wait(tag)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert events[-1]["data"] == "[DONE]" and all(event["event"] is None for event in events)
    assert [without_null_usage(json.loads(e["data"])) for e in events[:-1]] == visible_chunks(record)


@pytest.mark.parametrize("client_options", [None, {"include_usage": False}], ids=["unasked", "declined"])
def test_usage_injected_upstream_and_hidden_from_client(client, raw, mock, make_tag, chat, prompt, kit,
                                                         client_options):
    sdk_tag, raw_tag = make_tag("sdk"), make_tag("raw")
    extra = {} if client_options is None else {"stream_options": client_options}
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": prompt}],
            "mock": {"tag": raw_tag, "events": 2}, **extra}

    chunks = list(client.chat.completions.create(**chat(tag=sdk_tag, events=2), stream=True, **extra))
    raw_events = kit.parse_sse(raw.post("/chat/completions", json=body).text)
    record = mock.wait(sdk_tag)

    assert kit.record_json(record)["stream_options"]["include_usage"] is True
    assert record["usage"] is not None, "the mock reported usage, so Tollgate could meter it"
    assert chunks and all(chunk.choices for chunk in chunks), "the client saw a usage chunk it did not ask for"
    raw_chunks = [json.loads(event["data"]) for event in raw_events[:-1]]
    assert raw_chunks and all(chunk["choices"] for chunk in raw_chunks)
    assert all(chunk.get("usage") is None for chunk in raw_chunks)
    assert raw_events[-1]["data"] == "[DONE]"
    assert kit.record_json(mock.wait(raw_tag))["stream_options"]["include_usage"] is True


def test_usage_chunk_reaches_client_that_asked(client, mock, tag, chat):
    stream = client.chat.completions.create(**chat(tag=tag, events=4), stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    record = mock.wait(tag)

    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.to_dict() == record["usage"]
    assert chunks[-1].usage.completion_tokens == 4
    assert [c.to_dict() for c in chunks] == [json.loads(e["data"]) for e in record["sent_events"][:-1]]


def body_text(tag: str, marker: str, stream: bool, limit: bool = True) -> str:
    """A chat body with odd key order, number literals, escapes, raw UTF-8 and an unknown field.

    With `limit` it names an output limit below Tollgate's default cap (16384), so the policy
    has no reason to touch the body.
    """
    stream_member = '"stream":true,' if stream else ""
    limit_member = '"max_completion_tokens":256,' if limit else ""
    return (
        '{"temperature":1.50,"mock":{"tag":"%s","events":1},%s"messages":[{"content":"caf\\u00e9 é \\ud83d\\ude00 '
        '\\"q\\" \\/ %s","role":"user"}],%s"model":"gpt-4o-mini","top_p":1e2,'
        '"x_unknown_field":{"b":[1,2.0,-0.0,1E-7,12345678901234567890],"a":null,"z":true}}'
        % (tag, stream_member, marker, limit_member)
    )


def post_text(raw, body: str):
    return raw.post("/chat/completions", content=body.encode(), headers={"content-type": "application/json"})


def test_non_stream_body_reaches_upstream_byte_identical(raw, mock, tag, kit):
    body = body_text(tag, kit.MARKER, stream=False)

    response = post_text(raw, body)
    record = mock.wait(tag)

    assert response.status_code == 200, response.text
    assert record["body"] == body


def test_stream_body_identical_except_stream_options(raw, mock, tag, kit):
    body = body_text(tag, kit.MARKER, stream=True)

    response = post_text(raw, body)
    record = mock.wait(tag)

    assert response.status_code == 200, response.text
    received = kit.top_level_members(record["body"])
    assert [m for m in received if m[0] != '"stream_options"'] == kit.top_level_members(body)
    options = [json.loads(value) for key, value in received if key == '"stream_options"']
    assert options == [{"include_usage": True}]


def test_body_without_output_limit_gains_only_the_cap(raw, mock, tag, kit):
    body = body_text(tag, kit.MARKER, stream=False, limit=False)

    response = post_text(raw, body)
    record = mock.wait(tag)

    assert response.status_code == 200, response.text
    received = kit.top_level_members(record["body"])
    added = [json.loads(value) for key, value in received if key == '"max_completion_tokens"']
    assert [m for m in received if m[0] != '"max_completion_tokens"'] == kit.top_level_members(body)
    assert len(added) == 1 and isinstance(added[0], int) and added[0] > 0, added


def test_keepalive_comments_reach_raw_client_and_sdk_still_parses(raw, client, mock, make_tag, chat, prompt, kit):
    raw_tag, sdk_tag = make_tag("raw"), make_tag("sdk")
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": prompt}],
            "mock": {"tag": raw_tag, "events": 2, "keepalive": True}}

    text = raw.post("/chat/completions", json=body).text
    chunks = list(client.chat.completions.create(**chat(tag=sdk_tag, keepalive=True), stream=True))

    comments = kit.comment_lines(text)
    assert comments and all(line.startswith(":") for line in comments), text[:300]
    assert [e["data"] for e in kit.parse_sse(text)][-1] == "[DONE]"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok0 tok1 tok2 tok3 tok4 "
    assert mock.wait(sdk_tag)["completed"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("status", "exception"), [
    (400, openai.BadRequestError), (429, openai.RateLimitError), (500, openai.InternalServerError)])
def test_upstream_error_status_reaches_sdk(client, mock, make_tag, chat, status, exception, stream):
    tag = make_tag(str(status))
    message = f"upstream says no ({status})"

    with pytest.raises(exception) as caught:
        client.chat.completions.create(**chat(tag=tag, status=status, error_message=message), stream=stream)
    record = mock.wait(tag)

    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict) and caught.value.body.get("message") == message
    assert message in caught.value.message
    assert record["status"] == status and record["completed"]


def test_upstream_error_keeps_request_id(client, mock, tag, chat):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**chat(tag=tag, status=400, error_code="bad_thing"))

    assert caught.value.request_id == mock.wait(tag)["id"]
    assert caught.value.code == "bad_thing"


def test_client_key_replaced_by_platform_key_and_identity_encoding(client, raw, mock, make_tag, chat, prompt, kit):
    sdk_tag, raw_tag = make_tag("sdk"), make_tag("raw")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], "mock": {"tag": raw_tag}}

    client.chat.completions.create(**chat(tag=sdk_tag))
    raw.post("/chat/completions", json=body, headers={"accept-encoding": "gzip, deflate, br, zstd"})

    for tag in (sdk_tag, raw_tag):
        headers = mock.wait(tag)["headers"]
        assert headers.get("authorization") == f"Bearer {kit.PLATFORM_KEY}"
        assert not any(kit.CLIENT_KEY in value for value in headers.values()), headers
        assert headers.get("accept-encoding", "identity").strip().lower() == "identity", headers


def test_models_list_is_the_mocks(client, mock):
    upstream = mock.http.get("/v1/models").json()

    models = client.models.list()

    assert [model.to_dict() for model in models] == upstream["data"]
