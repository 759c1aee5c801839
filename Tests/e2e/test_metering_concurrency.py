"""Quota under concurrency, end to end: 50 requests at once at a quota that fits only some.

Pool A (nginx 18086, mock 18096) owns a private PostgreSQL; pool B (nginx 18087) is a second
`tollgate serve` with its own nginx and socket, sharing A's database and A's mock, as two
machines of one deployment would. Admitted requests stall in the mock before answering, so every
admitted request holds its reservation while the others are admitted or refused; the tests check
that this overlap really happened instead of assuming it.
"""

from __future__ import annotations

import concurrent.futures
import threading
import uuid
from typing import Iterator

import openai
import pytest

STALL_MS = 2500
"""How long the mock holds each admitted request before answering (the upstream timeout is 10 s here)."""

MAX_TOKENS = 1000
FITTING = 7
"""Whole reservations that fit the quota of the burst tests (plus half a reservation spare)."""


def add_user(stack, *options: str) -> tuple[str, int]:
    """A new user with a key; (key, user id)."""
    name = f"burst-{uuid.uuid4().hex[:12]}"
    assert stack.tollgate("user", "add", name, *options).returncode == 0
    issued = stack.tollgate("key", "issue", name)
    assert issued.returncode == 0, issued.stderr
    [(user_id,)] = stack.psql(f"SELECT id FROM tollgate.users WHERE name = '{name}'")
    return issued.stdout.splitlines()[0], int(user_id)


def standing(stack, user_id: int) -> tuple[int, int]:
    """(used_tokens, reserved_tokens) of the user's counter for today; (0, 0) without one."""
    rows = stack.psql("SELECT used_tokens, reserved_tokens FROM tollgate.usage_counters "
                      f"WHERE user_id = {user_id} AND period_start = (now() AT TIME ZONE 'UTC')::date")
    return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)


def request_arguments(prompt: str, tag: str) -> dict:
    """The same messages and max_tokens for every request, so every reservation is the same."""
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_TOKENS,
            "extra_body": {"mock": {"tag": tag, "stall_before_ms": STALL_MS, "events": 2}}}


def observed_reservation(stack, mock, prompt: str, kit) -> int:
    """Tokens one burst request reserves, read from tollgate.reservations while a probe is in flight."""
    # Only a user with a quota holds tokens; this one is far from its limit.
    key, user_id = add_user(stack, "--quota", "1000000", "--period", "day")
    tag = f"probe-{uuid.uuid4().hex[:10]}"
    client = openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=30)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(client.chat.completions.create, **request_arguments(prompt, tag))
        held = kit.wait_until(lambda: stack.psql(
            f"SELECT tokens, estimated_input_tokens FROM tollgate.reservations WHERE user_id = {user_id}"), timeout=10)
        answer.result()
    client.close()
    mock.wait(tag)
    assert held, "the probe request never held a reservation"
    [(tokens, estimated_input)] = held
    assert int(tokens) == int(estimated_input) + MAX_TOKENS and int(estimated_input) > 0
    return int(tokens)


class Sampler:
    """Reads the user's counter in a loop while a burst runs: the peak of used + reserved."""

    def __init__(self, stack, user_id: int) -> None:
        self.stack, self.user_id = stack, user_id
        self.samples: list[tuple[int, int]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append(standing(self.stack, self.user_id))

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=30)


def attempt(client: openai.OpenAI, prompt: str, tag: str) -> tuple[int, object]:
    """One burst request: (200, None) or (429, the error's response)."""
    try:
        client.chat.completions.create(**request_arguments(prompt, tag))
        return 200, None
    except openai.RateLimitError as error:
        return 429, error.response


def burst(clients: list[openai.OpenAI], per_client: int, prompt: str) -> list[tuple[int, object, str]]:
    """per_client requests through each client, all at once; (status, error response, tag) each."""
    jobs = [(client, f"burst-{uuid.uuid4().hex[:12]}") for client in clients for _ in range(per_client)]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(attempt, client, prompt, tag) for client, tag in jobs]
        return [(*future.result(), tag) for future, (_, tag) in zip(futures, jobs)]


def check_burst(stack, mock, kit, user_id: int, quota: int, reservation: int, results, sampler: Sampler) -> None:
    """No overshoot, every refusal justified, and exactly the requests that fit admitted."""
    admitted = [tag for status, _, tag in results if status == 200]
    refused = [response for status, response, _ in results if status == 429]
    assert len(admitted) + len(refused) == len(results)
    assert len(admitted) >= 1
    for response in refused:
        assert response.json()["error"]["code"] == "insufficient_quota"
        assert int(response.headers["x-tollgate-quota-remaining"]) < reservation, "refused although one more fit"
        assert int(response.headers["x-tollgate-quota-limit"]) == quota

    def settled() -> list[tuple] | None:
        rows = stack.psql("SELECT total_tokens, extract(epoch FROM started_at), extract(epoch FROM recorded_at) "
                          f"FROM tollgate.ledger WHERE user_id = {user_id}")
        return rows if len(rows) >= len(admitted) else None

    rows = kit.wait_until(settled, timeout=15)
    assert rows is not None and len(rows) == len(admitted), "not one ledger row per admitted request"
    used, reserved = standing(stack, user_id)
    assert reserved == 0 and used == sum(int(row[0]) for row in rows) <= quota
    assert sampler.samples and max(u + r for u, r in sampler.samples) <= quota, "used + reserved overshot"
    assert max(r for _, r in sampler.samples) == len(admitted) * reservation, "admitted requests never overlapped"
    # No admitted request started after another had settled and freed its reservation, so
    # exactly the whole reservations that fit the quota were admitted.
    assert max(float(row[1]) for row in rows) < min(float(row[2]) for row in rows), "a settlement overlapped the burst"
    assert len(admitted) == quota // reservation == FITTING
    assert all(len(mock.requests(tag)) == 1 for tag in admitted)
    assert sum(len(mock.requests(tag)) for _, _, tag in results) == len(admitted), "a refused request was forwarded"


@pytest.fixture(scope="module")
def pool_a(stack_factory) -> Iterator[object]:
    serving = stack_factory("e2e-quota-a", 18086, 18096, database=True, env={"TOLLGATE_UPSTREAM_TIMEOUT": "10"})
    try:
        yield serving
    finally:
        serving.stop()


@pytest.fixture(scope="module")
def pool_b(stack_factory, pool_a, kit) -> Iterator[object]:
    """A second pool on the same database and mock: its own nginx (18087) and socket."""
    serving = stack_factory("e2e-quota-b", 18087, None, database_url=pool_a.database_url,
                            upstream_url=f"{pool_a.mock_url}/v1", env={"TOLLGATE_UPSTREAM_TIMEOUT": "10"})
    try:
        yield serving
    finally:
        serving.stop()
    kit.assert_no_secrets(serving.logs(), "stack e2e-quota-b after shutdown")


@pytest.fixture(scope="module")
def quota_mock(pool_a, kit) -> Iterator[object]:
    control = kit.MockControl(pool_a.mock_url)
    yield control
    control.close()
    kit.assert_no_secrets(pool_a.logs(), "stack e2e-quota-a")


@pytest.fixture(scope="module")
def reservation(pool_a, quota_mock, prompt, kit) -> int:
    return observed_reservation(pool_a, quota_mock, prompt, kit)


def test_fifty_at_once_on_one_pool_admit_exactly_what_fits(pool_a, quota_mock, reservation, prompt, kit):
    quota = FITTING * reservation + reservation // 2
    key, user_id = add_user(pool_a, "--quota", str(quota), "--period", "day")
    client = openai.OpenAI(base_url=pool_a.base_url, api_key=key, max_retries=0, timeout=30)

    with Sampler(pool_a, user_id) as sampler:
        results = burst([client], 50, prompt)

    check_burst(pool_a, quota_mock, kit, user_id, quota, reservation, results, sampler)
    client.close()


def test_fifty_at_once_across_two_pools_sharing_the_database_admit_exactly_what_fits(pool_a, pool_b, quota_mock,
                                                                                     reservation, prompt, kit):
    quota = FITTING * reservation + reservation // 2
    key, user_id = add_user(pool_a, "--quota", str(quota), "--period", "day")
    clients = [openai.OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=30)
               for stack in (pool_a, pool_b)]
    assert pool_a.socket_path != pool_b.socket_path and pool_a.base_url != pool_b.base_url

    with Sampler(pool_a, user_id) as sampler:
        results = burst(clients, 25, prompt)

    # Had pool B not admitted against the shared counter, its 25 would all have been admitted.
    check_burst(pool_a, quota_mock, kit, user_id, quota, reservation, results, sampler)
    for client in clients:
        client.close()
