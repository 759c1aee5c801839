"""BYOK keys and header mode, end to end with the openai SDK and a real PostgreSQL.

Two stacks with private databases: bearer mode with BYOK (nginx 18088, mock 18098) and header
mode (nginx 18089, mock 18099), where nginx names the user. Test stacks have no auth service:
nginx/testing/tollgate-test-user.conf takes the trusted user from X-Test-Trusted-User, a header
only tests send, in place of the auth_request answer; the client's own X-Tollgate-User must
never count.
"""

from __future__ import annotations

import concurrent.futures
import secrets
import uuid
from typing import Iterator

import openai
import pytest

SECRETS: list[str] = []
"""Every Tollgate key and BYOK key this module handed out, for the log scans."""

COLUMNS = ("user_id", "key_id", "key_source", "outcome", "input_tokens", "output_tokens", "total_tokens")


def add_user(stack, *options: str, key: bool = True) -> dict:
    """A new user (optionally with a key): {"name", "id", "key", "key_id"}."""
    name = f"bh-{uuid.uuid4().hex[:12]}"
    assert stack.tollgate("user", "add", name, *options).returncode == 0
    [(user_id,)] = stack.psql(f"SELECT id FROM tollgate.users WHERE name = '{name}'")
    user = {"name": name, "id": int(user_id), "key": None, "key_id": None}
    if key:
        issued = stack.tollgate("key", "issue", name)
        assert issued.returncode == 0, issued.stderr
        lines = issued.stdout.splitlines()
        user["key"], user["key_id"] = lines[0], int(lines[1].removeprefix("id:"))
        SECRETS.append(user["key"])
    return user


def ledger(stack, user_id: int) -> list[dict]:
    rows = stack.psql(f"SELECT {', '.join(COLUMNS)} FROM tollgate.ledger WHERE user_id = {user_id} "
                      "ORDER BY recorded_at, request_id")
    return [{name: value if name in ("key_source", "outcome") or value is None else int(value)
             for name, value in zip(COLUMNS, row)} for row in rows]


def wait_ledger(stack, kit, user_id: int, count: int) -> list[dict]:
    """The user's ledger rows once there are `count` (asserts exactly that many)."""

    def enough() -> list[dict] | None:
        rows = ledger(stack, user_id)
        return rows if len(rows) >= count else None

    rows = kit.wait_until(enough, timeout=10)
    assert rows is not None and len(rows) == count, f"user {user_id}: expected {count} ledger rows"
    return rows


def used_tokens(stack, user_id: int) -> tuple[int, int]:
    """(used, reserved) of the user's counter for today."""
    rows = stack.psql("SELECT used_tokens, reserved_tokens FROM tollgate.usage_counters "
                      f"WHERE user_id = {user_id} AND period_start = (now() AT TIME ZONE 'UTC')::date")
    return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)


def tables_as_text(stack) -> str:
    """Every row of every table and view of schema tollgate, cast to text."""
    names = [name for (name,) in stack.psql(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'tollgate' ORDER BY 1")]
    assert "byok_keys" in names and "ledger" in names, names
    return "\n".join(f"== {name}\n" + "\n".join(row[0] or "" for row in stack.psql(
        f'SELECT t::text FROM tollgate."{name}" t')) for name in names)


def scan_logs(stack, kit, where: str) -> None:
    logs = stack.logs()
    kit.assert_no_secrets(logs, where)
    for secret in SECRETS:
        assert secret not in logs, f"{where}: a key is in the logs"


@pytest.fixture(scope="module")
def byok_stack(stack_factory, kit) -> Iterator[object]:
    serving = stack_factory("e2e-byok", 18088, 18098, database=True)
    try:
        yield serving
    finally:
        serving.stop()
    scan_logs(serving, kit, "stack e2e-byok after shutdown")


@pytest.fixture(scope="module")
def byok_mock(byok_stack, kit) -> Iterator[object]:
    control = kit.MockControl(byok_stack.mock_url)
    yield control
    control.close()


@pytest.fixture(scope="module")
def header_stack(stack_factory, kit) -> Iterator[object]:
    serving = stack_factory("e2e-header", 18089, 18099, database=True, auth_mode="header")
    try:
        yield serving
    finally:
        serving.stop()
    scan_logs(serving, kit, "stack e2e-header after shutdown")


@pytest.fixture(scope="module")
def header_mock(header_stack, kit) -> Iterator[object]:
    control = kit.MockControl(header_stack.mock_url)
    yield control
    control.close()


def client_for(stack, key: str | None = None, headers: dict | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=key or "not-a-tollgate-key", max_retries=0, timeout=30,
                         default_headers=headers)


def overlapping(first: dict, second: dict) -> bool:
    """True when the mock was working on both requests at one moment."""
    return first["received_at"] < second["finished_at"] and second["received_at"] < first["finished_at"]


def test_byok_user_goes_upstream_with_own_key_while_others_keep_the_platform_key(byok_stack, byok_mock, make_tag,
                                                                                 chat, kit):
    owner = add_user(byok_stack, "--quota", "100000", "--period", "day")
    other = add_user(byok_stack)
    owner_client, other_client = client_for(byok_stack, owner["key"]), client_for(byok_stack, other["key"])
    owner_client.chat.completions.create(**chat(tag=make_tag("before")))
    [platform_row] = wait_ledger(byok_stack, kit, owner["id"], 1)
    standing = used_tokens(byok_stack, owner["id"])
    assert standing == (platform_row["total_tokens"], 0)
    byok_key = f"sk-byok-user-{secrets.token_hex(16)}"
    SECRETS.append(byok_key)
    stored = byok_stack.tollgate("byok", "set", owner["name"], input=byok_key + "\n")
    assert stored.returncode == 0, stored.stderr
    assert byok_key not in stored.stdout + stored.stderr

    # Six of each at once, each held 800 ms by the mock, so the two users' requests share the workers.
    jobs = [(client, make_tag(label)) for _ in range(6) for client, label in ((owner_client, "own"),
                                                                              (other_client, "platform"))]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(lambda job: job[0].chat.completions.create(**chat(tag=job[1], stall_before_ms=800)), jobs))
    records = {tag: byok_mock.wait(tag) for _, tag in jobs}

    own = [records[tag] for client, tag in jobs if client is owner_client]
    theirs = [records[tag] for client, tag in jobs if client is other_client]
    assert any(overlapping(mine, their) for mine in own for their in theirs), "the two users never overlapped"
    assert {record["headers"]["authorization"] for record in own} == {f"Bearer {byok_key}"}
    assert {record["headers"]["authorization"] for record in theirs} == {f"Bearer {kit.PLATFORM_KEY}"}
    owner_rows = wait_ledger(byok_stack, kit, owner["id"], 7)[1:]
    other_rows = wait_ledger(byok_stack, kit, other["id"], 6)
    assert {(row["key_source"], row["outcome"], row["key_id"]) for row in owner_rows} == {
        ("byok", "completed", owner["key_id"])}
    assert {row["key_source"] for row in other_rows} == {"platform"}
    assert sorted(row["total_tokens"] for row in owner_rows) == sorted(r["usage"]["total_tokens"] for r in own)
    assert used_tokens(byok_stack, owner["id"]) == standing, "BYOK usage was counted against the platform quota"

    text = tables_as_text(byok_stack)
    assert byok_key not in text and byok_key.encode().hex() not in text.lower(), "a table holds the BYOK key in clear"
    assert byok_key not in byok_stack.logs()
    [(hint,)] = byok_stack.psql(f"SELECT hint FROM tollgate.byok_keys WHERE user_id = {owner['id']}")
    assert len(hint) <= 4 and byok_key.endswith(hint)

    cleared = byok_stack.tollgate("byok", "clear", owner["name"])
    after_tag = make_tag("after")
    owner_client.chat.completions.create(**chat(tag=after_tag))

    assert cleared.returncode == 0, cleared.stderr
    assert byok_mock.wait(after_tag)["headers"]["authorization"] == f"Bearer {kit.PLATFORM_KEY}"
    last = wait_ledger(byok_stack, kit, owner["id"], 8)[-1]
    assert last["key_source"] == "platform"
    assert used_tokens(byok_stack, owner["id"]) == (standing[0] + last["total_tokens"], 0)
    assert byok_stack.psql(f"SELECT count(*) FROM tollgate.byok_keys WHERE user_id = {owner['id']}") == [("0",)]
    owner_client.close()
    other_client.close()


def test_header_mode_meters_the_trusted_user_not_the_one_the_client_names(header_stack, header_mock, tag, chat, kit):
    trusted, spoofed = add_user(header_stack, key=False), add_user(header_stack, key=False)
    client = client_for(header_stack, headers={"X-Test-Trusted-User": trusted["name"],
                                               "X-Tollgate-User": spoofed["name"]})

    client.chat.completions.create(**chat(tag=tag))
    record = header_mock.wait(tag)

    [row] = wait_ledger(header_stack, kit, trusted["id"], 1)
    assert (row["user_id"], row["key_id"], row["key_source"], row["outcome"]) == (
        trusted["id"], None, "platform", "completed")
    assert row["total_tokens"] == record["usage"]["total_tokens"]
    assert ledger(header_stack, spoofed["id"]) == []
    assert not {"x-tollgate-user", "x-test-trusted-user"} & set(record["headers"])
    client.close()


@pytest.mark.parametrize("spoof", ["X-Tollgate-User", "X_Tollgate_User"])
def test_header_mode_refuses_a_client_that_only_names_itself(header_stack, header_mock, tag, chat, kit, spoof):
    spoofed = add_user(header_stack, key=False)
    client = client_for(header_stack, headers={spoof: spoofed["name"]})
    ledger_size = header_stack.psql("SELECT count(*) FROM tollgate.ledger")

    with pytest.raises((openai.AuthenticationError, openai.PermissionDeniedError)) as refused:
        client.chat.completions.create(**chat(tag=tag))

    kit.assert_openai_error(refused.value.response, refused.value.status_code)
    assert header_mock.requests(tag) == [], "a request without a trusted user reached the upstream"
    assert ledger(header_stack, spoofed["id"]) == []
    assert header_stack.psql("SELECT count(*) FROM tollgate.ledger") == ledger_size
    client.close()
