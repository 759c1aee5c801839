"""Nothing a client sends can make Tollgate call anything but the configured upstream, so the
platform key (or a user's own key) can never be sent elsewhere.

A trap server listens on another loopback port; requests try to steer the upstream call there
through the query string, the path, the Host header and forwarding headers. The trap must see
no connection, and every request that was forwarded must have reached the mock upstream.
"""

from __future__ import annotations

import socket
import threading
import uuid

import pytest

TRAP = ("127.0.0.1", 18159)


@pytest.fixture(scope="module")
def trap():
    """A listener that counts the connections it receives."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(TRAP)
    listener.listen(16)
    connections: list[tuple] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                client, address = listener.accept()
            except OSError:
                continue
            connections.append(address)
            client.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield connections
    stop.set()
    thread.join(5)
    listener.close()


STEERING = [
    ("query-userinfo", "/v1/chat/completions?x=@127.0.0.1:18159/", {}),
    ("query-url", "/v1/chat/completions?url=http://127.0.0.1:18159/v1", {}),
    ("encoded-slashes", "/v1/chat/completions%2F..%2F..%2F127.0.0.1:18159", {}),
    ("dot-segments", "/v1/../v1/chat/completions", {}),
    ("double-slash", "//127.0.0.1:18159/v1/chat/completions", {}),
    ("host-header", "/v1/chat/completions", {"host": "127.0.0.1:18159"}),
    ("forwarded-headers", "/v1/chat/completions",
     {"x-forwarded-host": "127.0.0.1:18159", "forwarded": "host=127.0.0.1:18159", "x-original-url": "/x"}),
]


@pytest.mark.parametrize(("target", "headers"), [case[1:] for case in STEERING], ids=[case[0] for case in STEERING])
def test_requests_cannot_steer_the_upstream_call_elsewhere(stack, raw, mock, trap, kit, target, headers):
    tag = f"pin-{uuid.uuid4().hex[:8]}"
    body = {"model": kit.MODEL, "messages": [{"role": "user", "content": "hi"}], "mock": {"tag": tag}}

    answer = raw.post(stack.base_url.rsplit("/v1", 1)[0] + target, json=body, headers=headers)

    assert trap == [], f"the trap received a connection: {trap}"
    if answer.status_code == 200:
        [record] = mock.requests(tag)
        assert record["headers"]["authorization"] == f"Bearer {kit.PLATFORM_KEY}"
        assert record["path"] == "/v1/chat/completions"
    else:
        kit.assert_openai_error(answer, answer.status_code)
        assert mock.requests(tag) == [], "a refused request still reached the upstream"
