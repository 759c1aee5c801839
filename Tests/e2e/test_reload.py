"""Graceful restarts under load: SIGHUP re-reads the settings file and replaces the workers, and
SIGTERM stops the pool, both without dropping a request that was admitted.

Stacks on nginx 18068 / mock 18168 (reload) and 18069 / 18169 (stop).
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from pathlib import Path
from typing import Iterator

import httpx2 as httpx
import pytest


def chat(stack, model: str = "gpt-4o-mini", **mock: object) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/chat/completions", timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "mock": mock})


class SteadyLoad:
    """Sequential non-stream requests on a few threads until stopped; keeps every status."""

    def __init__(self, stack, tag: str, threads: int = 4) -> None:
        self.stack, self.tag = stack, tag
        self.statuses: list[int | str] = []
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.statuses.append(chat(self.stack, tag=self.tag, delay_ms=20, events=2).status_code)
            except httpx.HTTPError as error:
                self.statuses.append(type(error).__name__)

    def stop(self) -> list[int | str]:
        self.stopped.set()
        for thread in self.threads:
            thread.join(30)
        return self.statuses


def stream_in_background(stack, tag: str, result: list[str]) -> threading.Thread:
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "count"}],
            "mock": {"tag": tag, "events": 10, "delay_ms": 200}}

    def run() -> None:
        with httpx.stream("POST", f"{stack.base_url}/chat/completions", json=body, timeout=30) as answer:
            result.append("".join(answer.iter_text()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def settings_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reload") / "tollgate.env"
    path.write_text("# no model allowlist yet\nTOLLGATE_LOG_LEVEL=info\n")
    return path


@pytest.fixture(scope="module")
def reloadable(stack_factory, settings_file, kit) -> Iterator[object]:
    serving = stack_factory("e2e-reload", 18068, 18168, env={"TOLLGATE_SETTINGS_FILE": str(settings_file)})
    try:
        yield serving
    finally:
        serving.stop()
    kit.assert_no_secrets(serving.logs(), "stack e2e-reload after shutdown")


def test_sighup_rereads_settings_and_replaces_workers_without_dropping_requests(reloadable, settings_file, kit):
    control = kit.MockControl(reloadable.mock_url)
    assert chat(reloadable, model="gpt-4.1").status_code == 200
    old_workers = set(reloadable.worker_pids())
    stream_tag, load_tag = f"hup-{uuid.uuid4().hex[:8]}", f"load-{uuid.uuid4().hex[:8]}"
    streamed: list[str] = []
    stream = stream_in_background(reloadable, stream_tag, streamed)
    control.wait(stream_tag, until="received")
    load = SteadyLoad(reloadable, load_tag)

    settings_file.write_text("TOLLGATE_ALLOWED_MODELS=gpt-4o*\nTOLLGATE_LOG_LEVEL=info\n")
    os.kill(reloadable.supervisor_pid(), signal.SIGHUP)
    replaced = kit.wait_until(lambda: len(reloadable.worker_pids()) == 2
                              and not old_workers & set(reloadable.worker_pids()), 15)
    statuses = load.stop()
    stream.join(30)

    assert replaced, "the old workers were not replaced after SIGHUP"
    assert statuses and all(status == 200 for status in statuses), f"requests failed during the reload: {statuses}"
    assert streamed and streamed[0].count("data: ") == 13 and streamed[0].endswith("data: [DONE]\n\n"), \
        "the stream in flight during the reload did not finish"
    refused = chat(reloadable, model="gpt-4.1")
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
    assert chat(reloadable).status_code == 200
    served = control.requests(load_tag)
    assert len(served) == len(statuses) and all(record["completed"] for record in served)


def test_sigterm_under_load_drops_no_admitted_request(stack_factory, kit):
    stopping = stack_factory("e2e-stop-load", 18069, 18169)
    control = kit.MockControl(stopping.mock_url)
    load_tag, stream_tag = f"term-{uuid.uuid4().hex[:8]}", f"term-s-{uuid.uuid4().hex[:8]}"
    streamed: list[str] = []
    try:
        stream = stream_in_background(stopping, stream_tag, streamed)
        control.wait(stream_tag, until="received")
        load = SteadyLoad(stopping, load_tag)
        kit.wait_until(lambda: len(control.requests(load_tag)) >= 8, 10)
        os.kill(stopping.supervisor_pid(), signal.SIGTERM)
        status = stopping.wait_supervisor(30)
        load.stop()
        stream.join(30)
        served = control.requests(load_tag) + control.requests(stream_tag)
    finally:
        stopping.stop()

    assert status == 0
    assert streamed and streamed[0].endswith("data: [DONE]\n\n"), "the stream in flight was cut by SIGTERM"
    assert served and all(record["completed"] and not record["disconnected"] for record in served), \
        "a request that reached the upstream was dropped by the stop"
