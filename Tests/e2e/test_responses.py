"""Responses API through nginx → Tollgate → mock upstream."""

from __future__ import annotations

import json


def test_responses_non_stream_usage_equals_mock(client, mock, tag, prompt):
    raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input=prompt,
                                                    extra_body={"mock": {"tag": tag, "events": 3}})
    response = raw.parse()
    record = mock.wait(tag)

    assert response.output_text == "tok0 tok1 tok2 "
    assert response.usage.to_dict() == record["usage"]
    assert response.to_dict() == json.loads(record["response_body"])
    assert response._request_id == record["id"]
    assert raw.headers["content-type"].startswith("application/json")


def test_responses_stream_helper_final_response(client, mock, tag, prompt):
    mock_options = {"tag": tag, "events": 4, "cached_tokens": 2, "reasoning_tokens": 3}

    with client.responses.stream(model="o4-mini", input=prompt, extra_body={"mock": mock_options}) as stream:
        final = stream.get_final_response()
    record = mock.wait(tag)

    assert final.status == "completed"
    assert final.output_text == "tok0 tok1 tok2 tok3 "
    assert final.usage.to_dict() == record["usage"]
    assert final.usage.output_tokens == 7 and final.usage.input_tokens_details.cached_tokens == 2
    assert "include_usage" not in (record["json"].get("stream_options") or {}), (
        "include_usage is a chat option; the Responses API rejects it")


def test_responses_raw_stream_keeps_event_lines_and_order(raw, mock, tag, prompt, kit):
    body = {"model": "gpt-4o-mini", "input": prompt, "stream": True, "mock": {"tag": tag, "events": 3}}

    with raw.stream("POST", "/responses", json=body) as response:
        text = response.read().decode()
    events = kit.parse_sse(text)
    record = mock.wait(tag)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = [json.loads(event["data"]) for event in events]
    assert [event["event"] for event in events] == [payload["type"] for payload in payloads]
    assert [payload["sequence_number"] for payload in payloads] == list(range(len(payloads)))
    assert payloads[0]["type"] == "response.created" and payloads[-1]["type"] == "response.completed"
    assert "[DONE]" not in text
    assert [(e["event"], json.loads(e["data"])) for e in events] == [
        (e["event"], json.loads(e["data"])) for e in record["sent_events"]]
    assert payloads[-1]["response"]["usage"] == record["usage"]


def test_responses_incomplete_usage_reaches_client(client, mock, tag, prompt):
    options = {"tag": tag, "events": 2, "incomplete": True}

    events = list(client.responses.create(model="gpt-4o-mini", input=prompt, stream=True,
                                          extra_body={"mock": options}))
    record = mock.wait(tag)

    assert events[-1].type == "response.incomplete"
    assert events[-1].response.usage.to_dict() == record["usage"]
