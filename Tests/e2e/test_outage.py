"""PostgreSQL stops while traffic flows: nothing served is lost, admission follows the outage policy.

Two stacks with their own database: refuse (the default; nginx 18071, mock 18171, two workers)
and allow (nginx 18072, mock 18172, one worker, so that the allowance and the identity cache
are those of the one worker every request reaches). The database is stopped and started with
stack.stop_database() / start_database() (same cluster, same data). Every wait is a condition
polled against a deadline: the mock's /__mock/wait, the journal directory, the ledger.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx2 as httpx
import pytest

JOURNAL_DEADLINE_S = 30.0
LEDGER_DEADLINE_S = 15.0
STALL_MS = 4000
"""How long in-flight streams stall after their first event: time enough to stop PostgreSQL."""
ALLOWANCE = 300
"""TOLLGATE_OUTAGE_ALLOWANCE of the allow stack, in tokens: a handful of small requests."""
ENV = {"TOLLGATE_UPSTREAM_TIMEOUT": "15", "TOLLGATE_UPSTREAM_IDLE_TIMEOUT": "15", "TOLLGATE_GRACE": "10",
       "TOLLGATE_DATABASE_TIMEOUT": "2"}


# --- helpers --------------------------------------------------------------------------------


def outage_stack(kit, name: str, http_port: int, mock_port: int, workers: int, env: dict[str, str]):
    """A started stack with its own PostgreSQL and an empty journal directory."""
    if str(kit.ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(kit.ROOT / "scripts"))
    from stack import Stack

    stack = Stack(kit.ROOT, name=name, http_port=http_port, mock_port=mock_port, workers=workers,
                  database=True, env={**ENV, "TOLLGATE_UPSTREAM_KEY": kit.PLATFORM_KEY,
                                      "TOLLGATE_SQL_DIR": str(kit.ROOT / "sql"), **env})
    # A journal of an earlier run belongs to that run's database.
    shutil.rmtree(stack.run_dir / "journal", ignore_errors=True)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    return stack


def user_with_key(stack) -> tuple[int, str]:
    """A new user with a daily quota far above what a test spends, and a key: (user id, key)."""
    name = f"outage-{uuid.uuid4().hex[:12]}"
    added = stack.tollgate("user", "add", name, "--quota", "1000000", "--period", "day")
    assert added.returncode == 0, added.stderr
    issued = stack.tollgate("key", "issue", name)
    assert issued.returncode == 0, issued.stderr
    [(user_id,)] = stack.psql(f"SELECT id FROM tollgate.users WHERE name = '{name}'")
    return int(user_id), issued.stdout.splitlines()[0]


def chat(stack, key: str, tag: str, prompt: str, stream: bool = False, timeout: float = 30, **mock) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "max_tokens": 50, "stream": stream,
            "messages": [{"role": "user", "content": prompt}], "mock": {"tag": tag, **mock}}
    return httpx.post(f"{stack.base_url}/chat/completions", json=body, timeout=timeout, trust_env=False,
                      headers={"authorization": f"Bearer {key}"})


def journal_dir(stack) -> Path:
    return stack.run_dir / "journal"


def journal_files(stack) -> list[Path]:
    directory = journal_dir(stack)
    if not directory.is_dir():
        return []
    return [path for path in directory.iterdir()
            if not path.name.startswith(".") and path.suffix in (".journal", ".replay")]


def journaled_for(stack, user_id: int) -> list[list[str]]:
    """Journal lines (tab-separated fields) of settlements of `user_id` waiting for replay."""
    lines = []
    for path in journal_files(stack):
        for line in path.read_text(errors="replace").splitlines():
            fields = line.split("\t")
            if len(fields) > 2 and fields[2] == str(user_id):
                lines.append(fields)
    return lines


def ledger_rows(stack, user_id: int) -> list[tuple[str, str, int]]:
    """(outcome, usage_source, total_tokens) of the user's ledger rows, oldest first."""
    rows = stack.psql("SELECT outcome, usage_source, total_tokens FROM tollgate.ledger "
                      f"WHERE user_id = {user_id} ORDER BY started_at")
    return [(outcome, source, int(total)) for outcome, source, total in rows]


def used_and_reserved(stack, user_id: int) -> tuple[int, int]:
    rows = stack.psql("SELECT used_tokens, reserved_tokens FROM tollgate.usage_counters "
                      f"WHERE user_id = {user_id} AND period_start = (now() AT TIME ZONE 'UTC')::date")
    return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)


def wait_ledger(stack, kit, user_id: int, count: int) -> list[tuple]:
    rows = kit.wait_until(lambda: (found := ledger_rows(stack, user_id)) and len(found) >= count and found,
                          LEDGER_DEADLINE_S)
    assert rows, f"user {user_id}: fewer than {count} ledger rows after {LEDGER_DEADLINE_S} s"
    assert len(rows) == count, f"user {user_id}: {len(rows)} ledger rows, expected {count}"
    return rows


def assert_metering_unavailable(kit, response: httpx.Response) -> None:
    error = kit.assert_openai_error(response, 503)
    assert error["type"] == "server_error", error
    assert error["code"] == "metering_unavailable", error


def reported_total(record: dict) -> int:
    assert record["usage"] is not None, "the mock reported no usage"
    return int(record["usage"]["total_tokens"])


def replay_after_restart(stack, kit) -> None:
    """Starts the database again and waits until every journal is replayed and deleted."""
    stack.start_database()
    emptied = kit.wait_until(lambda: not journal_files(stack), JOURNAL_DEADLINE_S)
    assert emptied, f"journals not replayed within {JOURNAL_DEADLINE_S} s: {journal_files(stack)}"
    rejected = list(journal_dir(stack).glob("*.rejected"))
    assert not rejected, f"journal lines were rejected: {rejected}"


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def refusing(kit) -> Iterator[object]:
    stack = outage_stack(kit, "e2e-outage", 18071, 18171, workers=2, env={})
    try:
        yield stack
    finally:
        stack.stop()
    kit.assert_no_secrets(stack.logs(), "stack e2e-outage after shutdown")


@pytest.fixture(scope="module")
def allowing(kit) -> Iterator[object]:
    env = {"TOLLGATE_OUTAGE_POLICY": "allow", "TOLLGATE_OUTAGE_ALLOWANCE": str(ALLOWANCE)}
    stack = outage_stack(kit, "e2e-outage-allow", 18072, 18172, workers=1, env=env)
    try:
        yield stack
    finally:
        stack.stop()
    kit.assert_no_secrets(stack.logs(), "stack e2e-outage-allow after shutdown")


# --- tests ----------------------------------------------------------------------------------


def test_refuse_policy_journals_in_flight_and_refuses_new(refusing, kit, make_tag, prompt):
    mock = kit.MockControl(refusing.mock_url)
    user_id, key = user_with_key(refusing)
    warm = make_tag("warm")
    assert chat(refusing, key, warm, prompt).status_code == 200
    wait_ledger(refusing, kit, user_id, 1)

    # Streams admitted before the stop, still running when PostgreSQL goes away.
    in_flight = [make_tag(f"inflight{n}") for n in range(4)]
    answers: dict[str, httpx.Response] = {}
    threads = [threading.Thread(target=lambda t=tag: answers.__setitem__(
        t, chat(refusing, key, t, prompt, stream=True, events=3, stall_after=1, stall_ms=STALL_MS)))
        for tag in in_flight]
    for thread in threads:
        thread.start()
    try:
        for tag in in_flight:
            mock.wait(tag, until="received")
        refusing.stop_database()
        stopped_at = time.monotonic()

        refused = [make_tag(f"refused{n}") for n in range(3)]
        for tag in refused:
            assert_metering_unavailable(kit, chat(refusing, key, tag, prompt))
        listing = httpx.get(f"{refusing.base_url}/models", headers={"authorization": f"Bearer {key}"},
                            timeout=30, trust_env=False)
        assert_metering_unavailable(kit, listing)
        for thread in threads:
            thread.join(timeout=STALL_MS / 1000 + 20)
        records = [mock.wait(tag) for tag in in_flight]
        journaled = kit.wait_until(lambda: len(found := journaled_for(refusing, user_id)) >= 4 and found,
                                   LEDGER_DEADLINE_S)
    finally:
        refusing.start_database()

    assert all(not mock.requests(tag) for tag in refused), "a refused request reached the upstream"
    assert all(answers[tag].status_code == 200 and "[DONE]" in answers[tag].text for tag in in_flight)
    assert all(record["finished_at"] > stopped_at for record in records), \
        "an in-flight stream ended before PostgreSQL stopped: the test proved nothing"
    assert journaled and len(journaled) == 4, f"journaled settlements of the in-flight streams: {journaled}"
    assert key not in "".join("\t".join(fields) for fields in journaled)

    replay_after_restart(refusing, kit)
    rows = wait_ledger(refusing, kit, user_id, 5)
    served = [mock.wait(warm)] + records
    assert all(outcome == "completed" and source == "reported" for outcome, source, _ in rows), rows
    assert sorted(total for _, _, total in rows) == sorted(reported_total(record) for record in served)
    assert used_and_reserved(refusing, user_id) == (sum(reported_total(record) for record in served), 0)
    mock.close()


def test_allow_policy_serves_known_callers_within_the_allowance(allowing, kit, make_tag, prompt):
    mock = kit.MockControl(allowing.mock_url)
    user_id, key = user_with_key(allowing)
    stranger_id, stranger_key = user_with_key(allowing)
    warm = make_tag("warm")
    assert chat(allowing, key, warm, prompt).status_code == 200
    wait_ledger(allowing, kit, user_id, 1)

    allowing.stop_database()
    try:
        stranger = make_tag("stranger")
        assert_metering_unavailable(kit, chat(allowing, stranger_key, stranger, prompt))
        assert not mock.requests(stranger), "an unknown caller's request reached the upstream"

        served, last = [], None
        for n in range(40):
            tag = make_tag(f"outage{n}")
            last = chat(allowing, key, tag, prompt)
            if last.status_code != 200:
                break
            served.append(mock.wait(tag))
        assert_metering_unavailable(kit, last)
        assert len(served) >= 2, f"only {len(served)} request(s) served during the outage"
        assert sum(reported_total(record) for record in served) <= ALLOWANCE
        kit.wait_until(lambda: len(journaled_for(allowing, user_id)) >= len(served), LEDGER_DEADLINE_S)
        assert len(journaled_for(allowing, user_id)) == len(served)
    finally:
        allowing.start_database()

    replay_after_restart(allowing, kit)
    rows = wait_ledger(allowing, kit, user_id, 1 + len(served))
    everything = [mock.wait(warm)] + served
    assert sorted(total for _, _, total in rows) == sorted(reported_total(record) for record in everything)
    # The outage requests had no reservation: their settlements still count (sql/004).
    assert used_and_reserved(allowing, user_id) == (sum(reported_total(record) for record in everything), 0)
    assert ledger_rows(allowing, stranger_id) == []

    after = make_tag("after")
    assert chat(allowing, key, after, prompt).status_code == 200
    wait_ledger(allowing, kit, user_id, 2 + len(served))
    mock.close()
