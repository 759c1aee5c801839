"""A worker killed with SIGKILL in the middle of streams, with metering in PostgreSQL.

The supervisor must replace it within a second, the other worker must keep serving, and the dead
worker's in-flight requests must leave `worker_lost` ledger rows (from their reservations)
instead of nothing, with their reserved tokens released. Stack on nginx 18078 / mock 18178.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx2 as httpx
import pytest

STREAMS = 6


@pytest.fixture(scope="module")
def metered(stack_factory, kit) -> Iterator[object]:
    serving = stack_factory("e2e-worker-loss", 18078, 18178, database=True)
    try:
        yield serving
    finally:
        serving.stop()
    kit.assert_no_secrets(serving.logs(), "stack e2e-worker-loss after shutdown")


def user_with_key(stack) -> tuple[int, str]:
    name = f"loss-{uuid.uuid4().hex[:12]}"
    assert stack.tollgate("user", "add", name, "--quota", "100000000", "--period", "day").returncode == 0
    issued = stack.tollgate("key", "issue", name)
    assert issued.returncode == 0, issued.stderr
    [(user_id,)] = stack.psql(f"SELECT id FROM tollgate.users WHERE name = '{name}'")
    return int(user_id), issued.stdout.splitlines()[0]


def worker_id_of(pid: int) -> str:
    """The worker id the supervisor gave this process (its TOLLGATE_WORKER_ID)."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    [value] = [entry.split(b"=", 1)[1] for entry in entries if entry.startswith(b"TOLLGATE_WORKER_ID=")]
    return value.decode()


def stream_in_background(stack, key: str, tag: str, outcomes: list[str]) -> threading.Thread:
    """A streamed chat that stays open for a while; appends how it ended to `outcomes`."""
    body = {"model": "gpt-4o-mini", "stream": True, "max_tokens": 50,
            "messages": [{"role": "user", "content": "hold on"}],
            "mock": {"tag": tag, "events": 4, "delay_ms": 1500}}

    def run() -> None:
        try:
            with httpx.stream("POST", f"{stack.base_url}/chat/completions", json=body, timeout=30,
                              headers={"authorization": f"Bearer {key}"}) as answer:
                text = "".join(answer.iter_text())
            outcomes.append("done" if "[DONE]" in text else "cut")
        except httpx.HTTPError:
            outcomes.append("cut")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_killed_worker_is_replaced_and_its_requests_are_recorded_as_lost(metered, kit):
    user_id, key = user_with_key(metered)
    control = kit.MockControl(metered.mock_url)
    outcomes: list[str] = []
    tags = [f"loss-{uuid.uuid4().hex[:8]}" for _ in range(STREAMS)]
    threads = [stream_in_background(metered, key, tag, outcomes) for tag in tags]
    for tag in tags:
        control.wait(tag, until="received")

    reserved_by = dict(metered.psql(
        f"SELECT worker_id, count(*) FROM tollgate.reservations WHERE user_id = {user_id} GROUP BY worker_id"))
    pids = {worker_id_of(pid): pid for pid in metered.worker_pids()}
    victim_id = max(reserved_by, key=lambda worker: int(reserved_by[worker]))
    lost = int(reserved_by[victim_id])
    victim = pids[victim_id]
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)

    replaced = kit.wait_until(lambda: len(set(metered.worker_pids()) - set(pids.values())) == 1 or None, 5)
    replaced_after = time.monotonic() - killed_at
    for thread in threads:
        thread.join(30)

    def settled() -> list[tuple] | None:
        rows = metered.psql(f"SELECT outcome, usage_source FROM tollgate.ledger WHERE user_id = {user_id}")
        return rows if len(rows) == STREAMS else None

    rows = kit.wait_until(settled, 15)
    assert replaced, "no new worker appeared after SIGKILL"
    assert replaced_after < 1.0, f"the worker was replaced after {replaced_after:.2f} s"
    assert rows is not None, "not every stream left a ledger row"
    assert sorted(outcome for outcome, _ in rows).count("worker_lost") == lost
    assert all(source == "estimated" for outcome, source in rows if outcome == "worker_lost")
    assert outcomes.count("done") == STREAMS - lost, "streams on the surviving worker did not complete"
    assert metered.psql(f"SELECT count(*) FROM tollgate.reservations WHERE user_id = {user_id}") == [("0",)]
    [(reserved,)] = metered.psql(f"SELECT reserved_tokens FROM tollgate.usage_counters WHERE user_id = {user_id}")
    assert int(reserved) == 0, "the dead worker's reservations still hold quota"

    after = httpx.post(f"{metered.base_url}/chat/completions", timeout=30,
                       headers={"authorization": f"Bearer {key}"},
                       json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "still there?"}]})
    assert after.status_code == 200
