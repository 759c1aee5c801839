"""Metering end to end: the openai SDK → nginx → Tollgate → mock upstream, with a real PostgreSQL.

One stack with its own database (nginx 18085, mock 18095). Every test makes its own users, so
a user's ledger rows are exactly the rows of that test's requests. Settlement happens after the
answer reaches the client: tests wait for ledger rows with a deadline, never with a sleep.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import secrets
import string
import uuid
from pathlib import Path
from typing import Iterator

import openai
import pytest

LEDGER_COLUMNS = ("request_id", "user_id", "key_id", "endpoint", "model", "stream", "key_source", "outcome",
                  "http_status", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens",
                  "total_tokens", "usage_source")
NUMBERS = {"user_id", "key_id", "http_status", "input_tokens", "cached_input_tokens", "output_tokens",
           "reasoning_tokens", "total_tokens"}
ISSUED_KEY = re.compile(r"tg-[a-z0-9]{40}")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
ISSUED: list[str] = []
"""Every key this module issued, for the scans of tables and logs."""


# --- helpers --------------------------------------------------------------------------------


def add_user(stack, *options: str, label: str = "u") -> tuple[str, int]:
    """A new user (name unique to this run) added with `tollgate user add`; (name, id)."""
    name = f"{label}-{uuid.uuid4().hex[:12]}"
    added = stack.tollgate("user", "add", name, *options)
    assert added.returncode == 0, added.stderr
    [(user_id,)] = stack.psql(f"SELECT id FROM tollgate.users WHERE name = '{name}'")
    return name, int(user_id)


def issue_key(stack, name: str) -> tuple[str, int]:
    """`tollgate key issue NAME`: (the key, its id), from the lines it prints."""
    issued = stack.tollgate("key", "issue", name)
    assert issued.returncode == 0, issued.stderr
    lines = issued.stdout.splitlines()
    assert ISSUED_KEY.fullmatch(lines[0]), "the first line is not a Tollgate key"
    key_id = next(int(line.split(":")[1]) for line in lines if line.startswith("id:"))
    ISSUED.append(lines[0])
    return lines[0], key_id


def ledger(stack, user_id: int) -> list[dict]:
    """The user's ledger rows, oldest first, with numbers as int and stream as bool."""
    sql = (f"SELECT {', '.join(LEDGER_COLUMNS)} FROM tollgate.ledger WHERE user_id = {user_id} "
           "ORDER BY started_at, request_id")
    rows = [dict(zip(LEDGER_COLUMNS, row)) for row in stack.psql(sql)]
    for row in rows:
        row.update({name: int(row[name]) for name in NUMBERS if row[name] is not None})
        row["stream"] = row["stream"] == "t"
    return rows


def wait_ledger(stack, kit, user_id: int, count: int, timeout: float = 10.0) -> list[dict]:
    """The user's ledger rows once there are `count` of them (asserts there are exactly that many)."""
    def enough() -> list[dict] | None:
        found = ledger(stack, user_id)
        return found if len(found) >= count else None

    rows = kit.wait_until(enough, timeout)
    assert rows is not None, f"user {user_id}: fewer than {count} ledger rows after {timeout} s"
    assert len(rows) == count, f"user {user_id}: {len(rows)} ledger rows, expected {count}"
    return rows


def counters(stack, user_id: int) -> tuple[int, int]:
    """(used_tokens, reserved_tokens) of the user's counter for today (0, 0 without one)."""
    rows = stack.psql("SELECT used_tokens, reserved_tokens FROM tollgate.usage_counters "
                      f"WHERE user_id = {user_id} AND period_start = (now() AT TIME ZONE 'UTC')::date")
    return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)


def reported(record: dict) -> dict:
    """The usage the mock reported, as ledger columns (chat and Responses spell it differently)."""
    usage = record["usage"]
    assert usage is not None, "the mock reported no usage"
    if "prompt_tokens" in usage:
        return {"input_tokens": usage["prompt_tokens"],
                "cached_input_tokens": usage["prompt_tokens_details"]["cached_tokens"],
                "output_tokens": usage["completion_tokens"],
                "reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"],
                "total_tokens": usage["total_tokens"]}
    return {"input_tokens": usage["input_tokens"],
            "cached_input_tokens": usage["input_tokens_details"]["cached_tokens"],
            "output_tokens": usage["output_tokens"],
            "reasoning_tokens": usage["output_tokens_details"]["reasoning_tokens"],
            "total_tokens": usage["total_tokens"]}


def tables_as_text(stack) -> str:
    """Every row of every table and view in schema tollgate, cast to text (bytea shows as hex)."""
    names = [name for (name,) in stack.psql(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'tollgate' ORDER BY 1")]
    assert {"users", "api_keys", "byok_keys", "ledger", "reservations"} <= set(names), names
    parts = []
    for name in names:
        rows = stack.psql(f'SELECT t::text FROM tollgate."{name}" t')
        parts.append(f"== {name}\n" + "\n".join(row[0] or "" for row in rows))
    return "\n".join(parts)


def assert_not_in_clear(secret: str, text: str, where: str) -> None:
    """Neither the secret nor its bytes in hex (a bytea column holding it as is) occur in `text`."""
    assert secret not in text, f"{where} holds a key in clear"
    assert secret.encode().hex() not in text.lower(), f"{where} holds a key's bytes in clear (hex)"


def access_log(stack) -> Path:
    return stack.nginx_dir / "logs" / "access.log"


def sdk(stack, key: str | None, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=key or "unused", timeout=30, **options)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metered(stack_factory, kit) -> Iterator[object]:
    """A stack with a private PostgreSQL (nginx 18085, mock 18095); its logs are scanned when done."""
    serving = stack_factory("e2e-metering", 18085, 18095, database=True)
    try:
        yield serving
    finally:
        serving.stop()
    logs = serving.logs()
    kit.assert_no_secrets(logs, "stack e2e-metering after shutdown")
    for key in ISSUED:
        assert key not in logs, "stack e2e-metering: a Tollgate key is in the logs"


@pytest.fixture(scope="module")
def meter_mock(metered, kit) -> Iterator[object]:
    control = kit.MockControl(metered.mock_url)
    yield control
    control.close()


@pytest.fixture
def caller(metered) -> Iterator[dict]:
    """A fresh unlimited user with a key, and an SDK client (no retries) using that key."""
    name, user_id = add_user(metered)
    key, key_id = issue_key(metered, name)
    client = sdk(metered, key, max_retries=0)
    yield {"name": name, "user_id": user_id, "key": key, "key_id": key_id, "client": client}
    client.close()


def call(client, api: str, stream: bool, prompt: str, mock_options: dict) -> None:
    """One call of `api` through the SDK, consumed to the end."""
    extra = {"extra_body": {"mock": mock_options}}
    if api == "chat.completions":
        answer = client.chat.completions.create(model="gpt-4o-mini", stream=stream,
                                                messages=[{"role": "user", "content": prompt}], **extra)
    else:
        answer = client.responses.create(model="gpt-4o-mini", stream=stream, input=prompt, **extra)
    if stream:
        assert list(answer), "the stream carried no event"


# --- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("api", "stream", "cached", "reasoning"), [
    ("chat.completions", False, 3, 2), ("chat.completions", True, 0, 0),
    ("responses", False, 0, 0), ("responses", True, 4, 6),
], ids=["chat", "chat-stream", "responses", "responses-stream"])
def test_call_leaves_one_ledger_row_with_reported_usage(metered, meter_mock, caller, tag, prompt, kit, api, stream,
                                                        cached, reasoning):
    options = {"tag": tag, "events": 3, "cached_tokens": cached, "reasoning_tokens": reasoning}

    call(caller["client"], api, stream, prompt, options)
    record = meter_mock.wait(tag)
    [row] = wait_ledger(metered, kit, caller["user_id"], 1)

    assert record["headers"]["authorization"] == f"Bearer {kit.PLATFORM_KEY}"
    assert UUID.match(row.pop("request_id")), "the ledger's request id is not a time-ordered (version 7) UUID"
    assert row == {"user_id": caller["user_id"], "key_id": caller["key_id"], "endpoint": api, "model": "gpt-4o-mini",
                   "stream": stream, "key_source": "platform", "outcome": "completed", "http_status": 200,
                   "usage_source": "reported", **reported(record)}
    assert (row["cached_input_tokens"], row["reasoning_tokens"]) == (cached, reasoning)
    assert metered.psql(f"SELECT count(*) FROM tollgate.reservations WHERE user_id = {caller['user_id']}") == [("0",)]
    assert len(meter_mock.requests(tag)) == 1


def unknown_key() -> str:
    return "tg-" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(40))


@pytest.mark.parametrize("case", ["unknown-key", "malformed-key", "revoked-key", "disabled-user",
                                  "missing-authorization"])
def test_rejected_credentials_get_401_and_are_neither_forwarded_nor_metered(metered, meter_mock, caller, make_tag, chat,
                                                                            kit, case):
    client, extra = caller["client"], {}
    if case in ("revoked-key", "disabled-user"):
        control = make_tag("control")
        client.chat.completions.create(**chat(tag=control))
        wait_ledger(metered, kit, caller["user_id"], 1)
    if case == "unknown-key":
        client = sdk(metered, unknown_key(), max_retries=0)
    elif case == "malformed-key":
        client = sdk(metered, kit.PLATFORM_KEY, max_retries=0)
    elif case == "revoked-key":
        assert metered.tollgate("key", "revoke", str(caller["key_id"])).returncode == 0
    elif case == "disabled-user":
        assert metered.tollgate("user", "disable", caller["name"]).returncode == 0
    else:
        extra = {"extra_headers": {"Authorization": openai.Omit()}}
    ledger_size = metered.psql("SELECT count(*) FROM tollgate.ledger")
    tag = make_tag("refused")

    with pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.create(**chat(tag=tag), **extra)

    error = kit.assert_openai_error(refused.value.response, 401)
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    assert caller["key"] not in error["message"] and kit.PLATFORM_KEY not in error["message"]
    if case == "missing-authorization":
        assert "didn't provide an API key" in error["message"], "the SDK still sent an Authorization header"
    assert meter_mock.requests(tag) == [], "a refused request reached the upstream"
    assert metered.psql("SELECT count(*) FROM tollgate.ledger") == ledger_size
    assert metered.psql(f"SELECT count(*) FROM tollgate.reservations WHERE user_id = {caller['user_id']}") == [("0",)]


def new_access_lines(path: Path, offset: int) -> list[str]:
    with open(path, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace").splitlines()


def test_quota_stops_the_request_that_no_longer_fits_and_the_sdk_does_not_retry(metered, meter_mock, make_tag, chat,
                                                                                 kit):
    name, user_id = add_user(metered, "--quota", "20000", "--period", "day", label="quota")
    key, _ = issue_key(metered, name)
    # Default retries (2): only x-should-retry: false keeps the SDK from trying again.
    client = sdk(metered, key)
    # Each call reserves its input estimate + 9000 and uses about 8000 (reasoning), so two fit and a third does not.
    heavy = {"max_tokens": 9000}
    for number in (1, 2):
        client.chat.completions.create(**chat(tag=make_tag(f"fits{number}"), reasoning_tokens=8000), **heavy)
    rows = wait_ledger(metered, kit, user_id, 2)
    used = sum(row["total_tokens"] for row in rows)
    assert all(row["output_tokens"] >= 8000 for row in rows) and counters(metered, user_id) == (used, 0)
    log_offset = access_log(metered).stat().st_size
    tag = make_tag("over")

    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(**chat(tag=tag, reasoning_tokens=8000), **heavy)

    response = refused.value.response
    error = kit.assert_openai_error(response, 429)
    assert refused.value.code == "insufficient_quota" and error["type"] == "insufficient_quota"
    assert response.headers["x-should-retry"] == "false"
    assert response.headers["x-tollgate-quota-limit"] == "20000"
    remaining = int(response.headers["x-tollgate-quota-remaining"])
    assert remaining == 20000 - used and remaining < 9000
    today = datetime.datetime.now(datetime.timezone.utc).date()
    reset = datetime.datetime.fromisoformat(response.headers["x-tollgate-quota-reset"].replace("Z", "+00:00"))
    assert reset == datetime.datetime.combine(today + datetime.timedelta(days=1), datetime.time(),
                                              datetime.timezone.utc)
    assert meter_mock.requests(tag) == [], "the refused request (or an SDK retry of it) reached the upstream"
    attempts = kit.wait_until(lambda: new_access_lines(access_log(metered), log_offset), timeout=5)
    assert attempts and len(attempts) == 1, f"nginx saw {len(attempts or [])} attempts: the SDK retried"
    assert '"POST /v1/chat/completions HTTP/1.1" 429 ' in attempts[0]
    assert len(ledger(metered, user_id)) == 2 and counters(metered, user_id) == (used, 0)
    client.close()


@pytest.mark.parametrize("api", ["chat.completions", "responses"])
def test_aborted_stream_is_settled_as_client_aborted_with_estimated_usage(metered, meter_mock, caller, tag, prompt,
                                                                          kit, api):
    options = {"extra_body": {"mock": {"tag": tag, "events": 20, "delay_ms": 500}}, "stream": True}
    if api == "chat.completions":
        stream = caller["client"].chat.completions.create(model=kit.MODEL, messages=[{"role": "user",
                                                                                      "content": prompt}], **options)
    else:
        stream = caller["client"].responses.create(model=kit.MODEL, input=prompt, **options)
    first = next(iter(stream))
    stream.close()

    record = meter_mock.wait(tag, timeout=15)
    [row] = wait_ledger(metered, kit, caller["user_id"], 1)

    assert first is not None
    assert record["disconnected"] and not record["completed"], "the upstream call was not stopped"
    assert row["outcome"] == "client_aborted" and row["usage_source"] == "estimated"
    assert row["input_tokens"] > 0 and row["total_tokens"] >= row["input_tokens"]
    assert (row["endpoint"], row["stream"], row["http_status"], row["key_source"]) == (api, True, 200, "platform")
    assert (row["user_id"], row["key_id"]) == (caller["user_id"], caller["key_id"])


def test_upstream_error_is_settled_and_releases_the_reservation(metered, meter_mock, make_tag, chat, kit):
    name, user_id = add_user(metered, "--quota", "50000", "--period", "day", label="failing")
    key, key_id = issue_key(metered, name)
    client = sdk(metered, key, max_retries=0)
    tag = make_tag("failing")

    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(**chat(tag=tag, status=500, error_message="upstream failure"), max_tokens=500)
    meter_mock.wait(tag)
    [row] = wait_ledger(metered, kit, user_id, 1)

    assert (row["outcome"], row["http_status"], row["key_id"]) == ("upstream_error", 500, key_id)
    assert counters(metered, user_id) == (row["total_tokens"], 0), "the reservation was not released"
    assert metered.psql(f"SELECT count(*) FROM tollgate.reservations WHERE user_id = {user_id}") == [("0",)]
    client.close()


def test_model_listing_needs_a_valid_key_and_is_not_metered(metered, caller, kit):
    listed = caller["client"].models.list()
    with sdk(metered, unknown_key(), max_retries=0) as stranger, pytest.raises(openai.AuthenticationError):
        stranger.models.list()

    assert listed.data, "the mock listed no model"
    assert ledger(metered, caller["user_id"]) == []
    assert metered.psql(f"SELECT count(*) FROM tollgate.reservations WHERE user_id = {caller['user_id']}") == [("0",)]


def snapshot(stack) -> dict:
    """What a migration must not change: the recorded versions and every row of the data tables."""
    return {"versions": stack.psql("SELECT * FROM tollgate.schema_version ORDER BY 1"),
            **{name: stack.psql(f"SELECT t::text FROM tollgate.{name} t ORDER BY 1")
               for name in ("users", "api_keys", "quotas", "usage_counters", "ledger")}}


def test_migrate_twice_changes_nothing(metered, caller, chat, tag, kit):
    caller["client"].chat.completions.create(**chat(tag=tag))
    wait_ledger(metered, kit, caller["user_id"], 1)
    before = snapshot(metered)

    runs = [metered.tollgate("migrate") for _ in range(2)]

    assert [run.returncode for run in runs] == [0, 0], [run.stderr for run in runs]
    assert all("already" in run.stdout for run in runs), [run.stdout for run in runs]
    assert before["versions"] and before["ledger"], "nothing to compare: no versions or no ledger rows"
    assert snapshot(metered) == before


def test_usage_json_reports_the_ledger_totals(metered, caller, make_tag, chat, kit):
    for model, events in (("gpt-4o-mini", 2), ("gpt-4o-mini", 5), ("gpt-4.1-nano", 3)):
        caller["client"].chat.completions.create(**{**chat(tag=make_tag(model), events=events), "model": model})
    rows = wait_ledger(metered, kit, caller["user_id"], 3)

    done = metered.tollgate("usage", "--user", caller["name"], "--json")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    expected = {}
    for row in rows:
        total = expected.setdefault(row["model"], {"user": caller["name"], "model": row["model"], "requests": 0})
        total["requests"] += 1
        for column in ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens"):
            total[column] = total.get(column, 0) + row[column]
    assert report["user"] == caller["name"]
    assert sorted(report["usage"], key=lambda item: item["model"]) == sorted(expected.values(),
                                                                             key=lambda item: item["model"])


def test_no_key_in_clear_in_any_table_or_log(metered, caller, chat, tag, kit):
    caller["client"].chat.completions.create(**chat(tag=tag))
    wait_ledger(metered, kit, caller["user_id"], 1)

    text = tables_as_text(metered)
    logs = metered.logs()

    columns = metered.psql("SELECT column_name FROM information_schema.columns "
                           "WHERE table_schema = 'tollgate' AND table_name = 'api_keys' ORDER BY 1")
    assert {name for (name,) in columns} == {"id", "user_id", "key_hash", "prefix", "created_at", "last_used_at",
                                             "revoked_at"}
    [(digest, prefix)] = metered.psql("SELECT encode(key_hash, 'hex'), prefix FROM tollgate.api_keys "
                                      f"WHERE id = {caller['key_id']}")
    assert digest == hashlib.sha256(caller["key"].encode()).hexdigest()
    assert caller["key"].startswith(prefix) and len(prefix) <= 12
    assert ISSUED and caller["key"] in ISSUED
    for key in ISSUED:
        assert_not_in_clear(key, text, "a tollgate table")
        assert_not_in_clear(key, logs, "the stack's logs")
    assert not ISSUED_KEY.search(text) and not ISSUED_KEY.search(logs)
    kit.assert_no_secrets(logs, "stack e2e-metering")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_answer_names_its_ledger_row_in_x_tollgate_request_id(metered, caller, tag, prompt, kit, stream):
    raw = caller["client"].chat.completions.with_raw_response.create(
        model="gpt-4o-mini", stream=stream, messages=[{"role": "user", "content": prompt}],
        extra_body={"mock": {"tag": tag, "events": 2}})
    request_id = raw.headers.get("x-tollgate-request-id")
    answer = raw.parse()
    if stream:
        assert list(answer), "the stream carried no event"

    [row] = wait_ledger(metered, kit, caller["user_id"], 1)

    assert request_id is not None and UUID.match(request_id), "no Tollgate request id in the answer's headers"
    assert row["request_id"] == request_id
