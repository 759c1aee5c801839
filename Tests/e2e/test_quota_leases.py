"""Quota leases (TOLLGATE_QUOTA_LEASE) through real nginx, one worker and PostgreSQL.

With leases on, a worker admits a caller from quota it holds for a few seconds, without asking
the database: what the database learns meanwhile (here, a revoked key) takes effect when the
lease expires. Every request still leaves exactly one ledger row, the counters add up once the
leases have gone back, and a worker killed mid-stream leaves worker_lost rows and gives its
leases back. Stack on nginx 18071 / mock 18171, one worker, leases of 2 seconds.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from typing import Iterator

import httpx2 as httpx
import openai
import pytest

LEASE_SECONDS = 2


@pytest.fixture(scope="module")
def leased(stack_factory, kit) -> Iterator[object]:
    serving = stack_factory("e2e-leases", 18071, 18171, database=True, workers=1,
                            env={"TOLLGATE_QUOTA_LEASE": str(LEASE_SECONDS)})
    try:
        yield serving
    finally:
        serving.stop()
    kit.assert_no_secrets(serving.logs(), "stack e2e-leases after shutdown")


def user_with_key(stack) -> tuple[int, str]:
    name = f"lease-{uuid.uuid4().hex[:12]}"
    assert stack.tollgate("user", "add", name, "--quota", "100000000", "--period", "day").returncode == 0
    issued = stack.tollgate("key", "issue", name)
    assert issued.returncode == 0, issued.stderr
    [(user_id,)] = stack.psql(f"SELECT id FROM tollgate.users WHERE name = '{name}'")
    return int(user_id), issued.stdout.splitlines()[0]


def chat(stack, key: str, **extra: object) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/chat/completions", timeout=30, headers={"authorization": f"Bearer {key}"},
                      json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **extra})


def leases_of(stack, user_id: int) -> int:
    [(count,)] = stack.psql(f"SELECT count(*) FROM tollgate.quota_leases WHERE user_id = {user_id}")
    return int(count)


def take_lease(stack, kit, user_id: int, key: str) -> None:
    """Admits one request the usual way, then waits for the lease the worker takes after it."""
    assert chat(stack, key).status_code == 200
    assert kit.wait_until(lambda: leases_of(stack, user_id) > 0 or None, 10), "no lease was taken"


def test_leased_requests_are_metered_and_a_revoked_key_stops_when_the_lease_expires(leased, kit):
    user_id, key = user_with_key(leased)
    take_lease(leased, kit, user_id, key)
    client = openai.OpenAI(base_url=leased.base_url, api_key=key, max_retries=0)
    for _ in range(20):
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert answer.usage.total_tokens > 0

    [(key_id,)] = leased.psql(f"SELECT id FROM tollgate.api_keys WHERE user_id = {user_id}")
    assert leased.tollgate("key", "revoke", key_id).returncode == 0
    # The lease still vouches for the key: the worker does not ask the database.
    assert chat(leased, key).status_code == 200
    served_after_revoke = [1]

    def refusal() -> httpx.Response | None:
        answer = chat(leased, key)
        if answer.status_code == 200:
            served_after_revoke.append(1)
            return None
        return answer

    refused = kit.wait_until(refusal, LEASE_SECONDS * 5)
    assert refused is not None, "the revoked key still worked after its lease expired"
    kit.assert_openai_error(refused, 401)

    def returned() -> bool | None:
        [(reserved,)] = leased.psql(
            f"SELECT reserved_tokens FROM tollgate.usage_counters WHERE user_id = {user_id}")
        return (leases_of(leased, user_id) == 0 and int(reserved) == 0) or None

    # The refusal dropped the lease; the lease thread gives it back on its next turn (20 ms).
    assert kit.wait_until(returned, 3), "the lease did not go back within 3 s of the refusal"
    [(rows, total)] = leased.psql(
        f"SELECT count(*), sum(total_tokens) FROM tollgate.ledger WHERE user_id = {user_id}")
    [(used,)] = leased.psql(f"SELECT used_tokens FROM tollgate.usage_counters WHERE user_id = {user_id}")
    assert int(rows) == 1 + 20 + len(served_after_revoke), "one ledger row per admitted request, none refused"
    assert int(used) == int(total)
    assert leased.psql(f"SELECT count(*) FROM tollgate.reservations WHERE user_id = {user_id}") == [("0",)]


def test_a_killed_worker_leaves_rows_for_its_leased_streams_and_gives_its_leases_back(leased, kit):
    user_id, key = user_with_key(leased)
    take_lease(leased, kit, user_id, key)
    control = kit.MockControl(leased.mock_url)
    tags = [f"lease-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    outcomes: list[int] = []

    def stream(tag: str) -> None:
        body = {"model": "gpt-4o-mini", "stream": True, "max_tokens": 50,
                "messages": [{"role": "user", "content": "hold on"}],
                "mock": {"tag": tag, "events": 4, "delay_ms": 1500}}
        try:
            with httpx.stream("POST", f"{leased.base_url}/chat/completions", json=body, timeout=30,
                              headers={"authorization": f"Bearer {key}"}) as answer:
                outcomes.append(answer.status_code)
                for _ in answer.iter_bytes():
                    pass
        except httpx.HTTPError:
            pass

    threads = [threading.Thread(target=stream, args=(tag,), daemon=True) for tag in tags]
    for thread in threads:
        thread.start()
    for tag in tags:
        control.wait(tag, until="received")

    def recorded() -> bool | None:
        [(count,)] = leased.psql(f"SELECT count(*) FROM tollgate.reservations WHERE user_id = {user_id}")
        return int(count) == len(tags) or None

    assert kit.wait_until(recorded, 10), "the streams in flight were not recorded as reservations"
    [victim] = leased.worker_pids()
    os.kill(victim, signal.SIGKILL)
    for thread in threads:
        thread.join(30)

    def released() -> list[tuple] | None:
        rows = leased.psql(f"SELECT outcome FROM tollgate.ledger WHERE user_id = {user_id}")
        return rows if len(rows) == 1 + len(tags) and leases_of(leased, user_id) == 0 else None

    rows = kit.wait_until(released, 15)
    assert rows is not None, "the killed worker's streams left no rows, or its lease was not given back"
    assert sorted(outcome for (outcome,) in rows).count("worker_lost") == len(tags)
    assert outcomes == [200] * len(tags)
    [(reserved,)] = leased.psql(f"SELECT reserved_tokens FROM tollgate.usage_counters WHERE user_id = {user_id}")
    assert int(reserved) == 0, "the killed worker's lease still holds quota"
