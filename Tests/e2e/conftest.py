"""Fixtures of the end-to-end suite: the stack (nginx → Tollgate → mock upstream), SDK and raw
HTTP clients, and the mock's control API.

Tests never sleep to synchronise: they ask the mock (`/__mock/wait`) or poll a condition
against a deadline. Every prompt carries MARKER so the final log scan can prove that no
prompt text, client key or platform key was written to any log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import httpx2 as httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("TOLLGATE_BINARY") or ROOT / ".build" / "release" / "tollgate")
MOCK_SCRIPT = ROOT / "scripts" / "mock_upstream.py"
CLIENT_KEY = "tg-test-client-key"
PLATFORM_KEY = "sk-platform-test-key"
MARKER = "zebrafinch-7431-prompt-marker"
MODEL = "gpt-4o-mini"
STACK_ENV = {
    "TOLLGATE_UPSTREAM_KEY": PLATFORM_KEY,
    "TOLLGATE_UPSTREAM_TIMEOUT": "2",
    "TOLLGATE_UPSTREAM_IDLE_TIMEOUT": "2",
    "TOLLGATE_GRACE": "10",
}


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.02) -> object:
    """Poll `condition` until it returns something truthy; that value, or None at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


class MockControl:
    """Client of the mock upstream's /__mock/ control API."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=60, trust_env=False)

    def requests(self, tag: str | None = None) -> list[dict]:
        params = {"tag": tag} if tag is not None else {}
        response = self.http.get("/__mock/requests", params=params)
        response.raise_for_status()
        return response.json()["requests"]

    def wait(self, tag: str, timeout: float = 10.0, until: str = "finished") -> dict:
        """The mock's record of the first request tagged `tag`, once it finished (or was received)."""
        params = {"tag": tag, "until": until, "timeout": str(timeout)}
        response = self.http.get("/__mock/wait", params=params, timeout=timeout + 10)
        assert response.status_code == 200, f"mock never saw tag {tag!r} reach {until!r}: {response.text}"
        return response.json()

    def reset(self) -> None:
        self.http.post("/__mock/reset").raise_for_status()

    def close(self) -> None:
        self.http.close()


class MockProcess:
    """The mock upstream alone, as a subprocess on a free port (for the mock's self-check)."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.control = MockControl(self.url)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            command = [sys.executable, str(MOCK_SCRIPT), "--host", "127.0.0.1", "--port", str(self.port)]
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        if not wait_until(self.healthy, timeout=10):
            self.stop()
            raise RuntimeError(f"mock upstream not healthy within 10 s; see {self.log_path}")

    def healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"mock upstream exited with {self.process.returncode}; see {self.log_path}")
        try:
            return httpx.get(f"{self.url}/__mock/health", timeout=1, trust_env=False).json() == {"ok": True}
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.control.close()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


class Kit:
    """Constants and helpers the tests share, handed out by the `kit` fixture (tests never import
    conftest, so the suite works under any pytest import mode)."""

    CLIENT_KEY = CLIENT_KEY
    PLATFORM_KEY = PLATFORM_KEY
    MARKER = MARKER
    MODEL = MODEL
    ROOT = ROOT
    BINARY = BINARY
    MockControl = MockControl
    free_port = staticmethod(free_port)
    wait_until = staticmethod(wait_until)

    @staticmethod
    def parse_sse(text: str) -> list[dict]:
        """SSE text → events `{"event", "data", "comments"}`; comments are the `:` lines before an event."""
        events, current = [], {"event": None, "data": [], "comments": []}
        for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
            if line == "":
                if current["data"] or current["event"]:
                    events.append({**current, "data": "\n".join(current["data"])})
                    current = {"event": None, "data": [], "comments": []}
                continue
            if line.startswith(":"):
                current["comments"].append(line)
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                current["event"] = value
            elif name == "data":
                current["data"].append(value)
        return events

    @staticmethod
    def comment_lines(text: str) -> list[str]:
        return [line for line in text.replace("\r\n", "\n").split("\n") if line.startswith(":")]

    @staticmethod
    def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
        """Assert an OpenAI-shaped JSON error with `status`; returns the `error` object."""
        assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text[:500]}"
        content_type = response.headers.get("content-type", "")
        assert content_type.startswith("application/json"), f"error content-type is {content_type!r}"
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"not an OpenAI error: {body!r}"
        error = body["error"]
        assert isinstance(error.get("message"), str) and error["message"], error
        assert isinstance(error.get("type"), str) and error["type"], error
        assert "param" in error and "code" in error, error
        if param is not None:
            assert error["param"] == param, error
        return error

    @staticmethod
    def top_level_members(text: str) -> list[tuple[str, str]]:
        """The members of a JSON object as (raw key, raw value) text, exactly as written, in order."""
        text = text.strip()
        assert text.startswith("{") and text.endswith("}"), text[:80]
        members, depth, start, in_string, escaped = [], 0, 1, False, False
        for index, char in enumerate(text):
            if in_string:
                escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
                continue
            if char == '"':
                in_string = True
            elif char in "{[":
                depth += 1
            elif char in "}]":
                depth -= 1
            if (char == "," and depth == 1) or depth == 0:
                member = text[start:index].strip()
                if member:
                    key, value = Kit.split_member(member)
                    members.append((key, value))
                start = index + 1
        return members

    @staticmethod
    def split_member(member: str) -> tuple[str, str]:
        escaped = False
        for index, char in enumerate(member[1:], start=1):
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                rest = member[index + 1 :].lstrip()
                assert rest.startswith(":"), member[:80]
                return member[: index + 1], rest[1:].strip()
        raise AssertionError(f"unterminated key in {member[:80]!r}")

    @staticmethod
    def assert_no_secrets(text: str, where: str) -> None:
        """No client key, platform key or prompt marker in `text` (a stack's logs)."""
        assert text.strip(), f"{where}: no log text at all, so the secret scan would prove nothing"
        for secret in (CLIENT_KEY, PLATFORM_KEY, MARKER):
            assert secret not in text, f"{where}: logs contain {secret!r}"

    @staticmethod
    def record_json(record: dict) -> dict:
        """The body the mock received, parsed; fails loudly when it was not JSON."""
        assert record["json"] is not None, f"mock got a non-JSON body: {record['body'][:200]!r}"
        return record["json"]


def build_stack(name: str, http_port: int, mock_port: int | None, **options: object):
    """A configured, not yet started Stack (scripts/stack.py) with the suite's environment."""
    if not BINARY.exists():
        pytest.fail(f"{BINARY} is missing: run `swift build -c release` in {ROOT} first", pytrace=False)
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    from stack import Stack

    env = {**STACK_ENV, **options.pop("env", {})}
    options.setdefault("workers", 2)
    return Stack(ROOT, name=name, http_port=http_port, mock_port=mock_port, env=env, **options)


def started(stack):
    """Start `stack`; if that fails, stop whatever part of it did start, then re-raise."""
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    return stack


@pytest.fixture(scope="session")
def stack_factory() -> Callable[..., object]:
    """Builds (not starts) extra stacks; modules start and stop them in their own fixtures."""

    def build_and_start(name: str, http_port: int, mock_port: int | None, **options: object):
        return started(build_stack(name, http_port, mock_port, **options))

    return build_and_start


@pytest.fixture(scope="session")
def stack() -> Iterator[object]:
    """The suite's main stack on 18080 (nginx) / 18090 (mock); its logs are scanned after shutdown."""
    main = started(build_stack("e2e", 18080, 18090))
    try:
        yield main
    finally:
        main.stop()
    Kit.assert_no_secrets(main.logs(), "stack e2e after shutdown")


@pytest.fixture(scope="session")
def client(stack) -> Iterator[openai.OpenAI]:
    sdk = openai.OpenAI(base_url=stack.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
    yield sdk
    sdk.close()


@pytest.fixture(scope="session")
def raw(stack) -> Iterator[httpx.Client]:
    """A plain HTTP client on the stack's base URL, sending the client key like an SDK would."""
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    with httpx.Client(base_url=stack.base_url, headers=headers, timeout=30, trust_env=False) as http:
        yield http


@pytest.fixture(scope="session")
def mock(stack) -> Iterator[MockControl]:
    """Control API of the main stack's mock upstream."""
    control = MockControl(stack.mock_url)
    yield control
    control.close()


@pytest.fixture(scope="session")
def standalone_mock(tmp_path_factory) -> Iterator[MockProcess]:
    """The mock upstream alone on a free port, for the self-check that needs no Tollgate."""
    process = MockProcess(tmp_path_factory.mktemp("mock") / "mock.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def make_tag(request) -> Callable[[str], str]:
    """Unique tags named after the test, so the mock's records can be found again."""

    def make(label: str = "t") -> str:
        return f"{request.node.name[:40]}-{label}-{uuid.uuid4().hex[:10]}"

    return make


@pytest.fixture
def tag(make_tag) -> str:
    return make_tag()


@pytest.fixture(scope="session")
def prompt() -> str:
    return f"Please say hello. {MARKER}"


@pytest.fixture(scope="session")
def kit() -> type[Kit]:
    return Kit


@pytest.fixture(scope="session")
def chat(prompt) -> Callable[..., dict]:
    """Keyword arguments for client.chat.completions.create: the marker prompt plus mock options."""

    def arguments(**mock: object) -> dict:
        return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "extra_body": {"mock": mock}}

    return arguments


@pytest.fixture(scope="session")
def e2e_run_dir() -> Path:
    path = ROOT / ".run" / "e2e"
    path.mkdir(parents=True, exist_ok=True)
    return path


SESSION_STARTED = time.time()


def pytest_terminal_summary(terminalreporter) -> None:
    """Show the disconnect latency measured by this run, without needing `-s`."""
    measured = ROOT / ".run" / "e2e" / "disconnect-latency.txt"
    if measured.is_file() and measured.stat().st_mtime >= SESSION_STARTED:
        terminalreporter.write_line(f"disconnect latency: {measured.read_text().strip()}")


def pytest_report_header(config) -> list[str]:
    present = "present" if BINARY.exists() else "MISSING"
    return [f"tollgate binary: {BINARY} ({present})", f"python: {sys.executable}", f"pid: {os.getpid()}"]
