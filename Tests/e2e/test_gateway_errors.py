"""Errors Tollgate produces itself: OpenAI-shaped JSON with the right status, nothing forwarded."""

from __future__ import annotations

import pytest


@pytest.fixture
def nothing_forwarded(mock):
    """Call at the end of a test: asserts the mock received no request since the test began."""
    before = len(mock.requests())

    def check() -> None:
        after = len(mock.requests())
        assert after == before, f"Tollgate forwarded {after - before} request(s) it should have rejected"

    return check


def post(raw, path: str, content: bytes):
    return raw.post(path, content=content, headers={"content-type": "application/json"})


def test_unknown_path_is_404(raw, kit, nothing_forwarded):
    kit.assert_openai_error(raw.post("/does-not-exist", json={"model": "gpt-4o-mini"}), 404)
    kit.assert_openai_error(raw.get("/chat/completions/extra"), 404)

    nothing_forwarded()


def test_wrong_method_is_405(raw, kit, nothing_forwarded):
    kit.assert_openai_error(raw.get("/chat/completions"), 405)

    nothing_forwarded()


def test_body_not_json_is_400(raw, kit, prompt, nothing_forwarded):
    kit.assert_openai_error(post(raw, "/chat/completions", f"this is not json {prompt}".encode()), 400)

    nothing_forwarded()


def test_json_array_body_is_400(raw, kit, nothing_forwarded):
    kit.assert_openai_error(post(raw, "/chat/completions", b'[{"model":"gpt-4o-mini","messages":[]}]'), 400)

    nothing_forwarded()


def test_stream_request_with_malformed_body_is_400_json_not_a_stream(raw, kit, prompt, nothing_forwarded):
    body = ('{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"%s"}' % prompt).encode()

    response = post(raw, "/chat/completions", body)

    kit.assert_openai_error(response, 400)
    assert not response.headers["content-type"].startswith("text/event-stream")

    nothing_forwarded()


def test_stream_of_wrong_type_is_400_param_stream(raw, kit, prompt, nothing_forwarded):
    body = {"model": "gpt-4o-mini", "stream": "yes", "messages": [{"role": "user", "content": prompt}]}

    kit.assert_openai_error(raw.post("/chat/completions", json=body), 400, param="stream")

    nothing_forwarded()
