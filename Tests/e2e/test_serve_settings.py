"""`tollgate serve` on its own: a bad setting stops start-up with one line naming it, and the pool
also listens on HOST:PORT (TCP) instead of a unix socket, spoken to here with a minimal FastCGI
client, as nginx would.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import uuid

import pytest

FCGI_BEGIN_REQUEST, FCGI_END_REQUEST, FCGI_PARAMS, FCGI_STDIN, FCGI_STDOUT = 1, 3, 4, 5, 6
TCP_PORT = 18157


def run_serve(kit, *arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    return subprocess.run([str(kit.BINARY), "serve", *arguments], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("arguments", "env", "named"), [
    (["--workers", "0"], {"TOLLGATE_UPSTREAM_KEY": "sk-x"}, "--workers"),
    (["--threads", "many"], {"TOLLGATE_UPSTREAM_KEY": "sk-x"}, "--threads"),
    ([], {"TOLLGATE_UPSTREAM_KEY": "sk-x", "TOLLGATE_UPSTREAM_URL": "ftp://example"}, "TOLLGATE_UPSTREAM_URL"),
    ([], {"TOLLGATE_UPSTREAM_KEY": "sk-x", "TOLLGATE_BASE_PATH": "v1"}, "TOLLGATE_BASE_PATH"),
    ([], {}, "TOLLGATE_UPSTREAM_KEY"),
    (["--no-such-setting", "1"], {"TOLLGATE_UPSTREAM_KEY": "sk-x"}, "--no-such-setting"),
    ([], {"TOLLGATE_UPSTREAM_KEY": "sk-x", "TOLLGATE_AUTH_MODE": "magic", "TOLLGATE_DATABASE_URL": "host=x"},
     "TOLLGATE_AUTH_MODE"),
    ([], {"TOLLGATE_UPSTREAM_KEY": "sk-x", "TOLLGATE_THREADS": "65"}, "TOLLGATE_THREADS"),
], ids=["workers", "threads", "upstream-url", "base-path", "no-key", "unknown", "auth-mode", "threads-range"])
def test_bad_setting_stops_startup_with_one_line_naming_it(kit, arguments, env, named):
    result = run_serve(kit, "--socket", f"/tmp/tollgate-bad-{uuid.uuid4().hex[:8]}.sock", *arguments, env=env)

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert "sk-x" not in result.stderr


def record(kind: int, content: bytes, request_id: int = 1) -> bytes:
    return struct.pack(">BBHHBx", 1, kind, request_id, len(content), 0) + content


def name_value(name: str, value: str) -> bytes:
    encoded = b""
    for part in (name.encode(), value.encode()):
        encoded += bytes([len(part)]) if len(part) < 128 else struct.pack(">I", len(part) | 0x80000000)
    return encoded + name.encode() + value.encode()


def fastcgi_post(port: int, uri: str, body: bytes) -> bytes:
    """One FastCGI request over TCP, as nginx sends it; the CGI response (head and body)."""
    params = b"".join(name_value(name, value) for name, value in {
        "REQUEST_METHOD": "POST", "REQUEST_URI": uri, "DOCUMENT_URI": uri, "QUERY_STRING": "",
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)), "SERVER_PROTOCOL": "HTTP/1.1",
    }.items())
    message = (record(FCGI_BEGIN_REQUEST, struct.pack(">HB5x", 1, 0)) + record(FCGI_PARAMS, params)
               + record(FCGI_PARAMS, b"") + record(FCGI_STDIN, body) + record(FCGI_STDIN, b""))
    output = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(message)
        pending = b""
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                break
            pending += chunk
            while len(pending) >= 8:
                _, kind, _, length, padding = struct.unpack(">BBHHBx", pending[:8])
                if len(pending) < 8 + length + padding:
                    break
                if kind == FCGI_STDOUT:
                    output += pending[8:8 + length]
                if kind == FCGI_END_REQUEST:
                    return output
                pending = pending[8 + length + padding:]
    return output


def test_serve_listens_on_host_port(kit, stack):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    serve = subprocess.Popen([str(kit.BINARY), "serve", "--socket", f"127.0.0.1:{TCP_PORT}", "--workers", "1",
                              "--threads", "4", "--upstream-url", f"{stack.mock_url}/v1"],
                             env={**clean, "TOLLGATE_UPSTREAM_KEY": kit.PLATFORM_KEY},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def answered() -> bytes | None:
            try:
                return fastcgi_post(TCP_PORT, "/v1/chat/completions",
                                    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}')
            except OSError:
                return None

        response = kit.wait_until(answered, 10)
    finally:
        serve.terminate()
        status = serve.wait(30)

    assert response is not None, "nothing answered on the TCP address"
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"Status: 200"), head
    assert b'"object":"chat.completion"' in body
    assert status == 0
