"""Stacks configured differently from the main one: another base path, an unreachable upstream."""

from __future__ import annotations

import httpx2 as httpx
import openai
import pytest

PLAYGROUND = "/api/playground/assistant/v1"


@pytest.fixture(scope="module")
def playground(stack_factory, kit):
    """A stack serving the API under PLAYGROUND on 18081, with its own mock on 18091."""
    serving = stack_factory("e2e-basepath", 18081, 18091, base_path=PLAYGROUND)
    try:
        yield serving
    finally:
        serving.stop()
    kit.assert_no_secrets(serving.logs(), "stack e2e-basepath")


@pytest.fixture(scope="module")
def unreachable(stack_factory, kit):
    """A stack whose upstream is a loopback port nobody listens on (18082, no mock)."""
    port = kit.free_port()
    serving = stack_factory("e2e-unreachable", 18082, None, upstream_url=f"http://127.0.0.1:{port}/v1")
    try:
        yield serving
    finally:
        serving.stop()
    kit.assert_no_secrets(serving.logs(), "stack e2e-unreachable")


def test_base_path_serves_chat_there(playground, kit, tag, chat):
    control = kit.MockControl(playground.mock_url)
    sdk = openai.OpenAI(base_url=playground.base_url, api_key=kit.CLIENT_KEY, max_retries=0, timeout=30)

    try:
        completion = sdk.chat.completions.create(**chat(tag=tag, events=2))
        record = control.wait(tag)
    finally:
        sdk.close()
        control.close()

    assert playground.base_url.endswith(PLAYGROUND)
    assert completion.choices[0].message.content == "tok0 tok1 "
    assert record["path"] == "/v1/chat/completions"
    assert completion._request_id == record["id"]


def test_base_path_stack_404s_plain_v1(playground, kit, tag, prompt):
    control = kit.MockControl(playground.mock_url)
    url = "http://127.0.0.1:18081/v1/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], "mock": {"tag": tag}}

    try:
        response = httpx.post(url, json=body, headers={"authorization": f"Bearer {kit.CLIENT_KEY}"},
                              timeout=30, trust_env=False)
        forwarded = control.requests(tag)
    finally:
        control.close()

    kit.assert_openai_error(response, 404)
    assert forwarded == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_unreachable_upstream_is_502_server_error(unreachable, kit, prompt, stream):
    body = {"model": "gpt-4o-mini", "stream": stream, "messages": [{"role": "user", "content": prompt}]}
    headers = {"authorization": f"Bearer {kit.CLIENT_KEY}"}

    response = httpx.post(f"{unreachable.base_url}/chat/completions", json=body, headers=headers, timeout=30,
                          trust_env=False)

    error = kit.assert_openai_error(response, 502)
    assert error["type"] == "server_error"


def test_unreachable_upstream_raises_internal_server_error_in_sdk(unreachable, kit, chat):
    sdk = openai.OpenAI(base_url=unreachable.base_url, api_key=kit.CLIENT_KEY, max_retries=0, timeout=30)

    try:
        with pytest.raises(openai.InternalServerError) as caught:
            list(sdk.chat.completions.create(**chat(), stream=True))
    finally:
        sdk.close()

    assert caught.value.status_code == 502
