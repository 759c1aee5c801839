#!/usr/bin/env python3
"""`make soak`: mixed traffic for minutes, then proof that nothing was lost and nothing grew.

    python3 scripts/soak.py [--duration 300] [--concurrency 200] [--quick] [--warmup S]
                            [--users 20] [--port 18065] [--mock-port 18165] [--seed N]

Starts a stack with its own PostgreSQL (scripts/stack.py, Stack(database=True), 2 workers),
USERS users with keys (a few with quotas small enough to run out during the run)
and CONCURRENCY client threads. Each client sends requests one after another: chat completions
and Responses, streamed and not, every one with an output limit so its reservation bounds what
it can spend. 2% of the streams are closed by their client after the first content event; 2% of
all requests ask the mock upstream for an error (a 500 or a 429, or, on a stream, an error event
or a reset after the first content event). --quick runs 30 s with 50 clients.

Progress every 10 s. When the load stops it waits, with a deadline, until the ledger stops
growing, then checks and prints:
  - requests sent and how they ended, by kind; an answer the plan did not ask for is an error;
  - ledger rows against the requests the mock upstream served (each mock record is one upstream
    call, each admitted request one ledger row; quota refusals never reach the upstream);
  - quota overshoot: for each user and quota period, ledger total_tokens above the quota;
  - reservations left and counters that disagree with the ledger;
  - worker restarts (`worker.exited` in the supervisor's log, new worker pids);
  - worker RSS (sum of VmRSS of the worker processes) at start, after warm-up, at every sample
    and at the end.
Exits 1 when a check fails (ledger != upstream, overshoot > 0, a reservation or counter left
wrong, a worker restarted, end RSS > 1.5 x RSS after warm-up, unexpected errors), 2 when the
stack cannot run. Traffic stays on 127.0.0.1; everything started is stopped on exit.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from stack import Stack, StackError  # noqa: E402

MODEL = "gpt-4o-mini"
GENERATION_PATHS = ("/v1/chat/completions", "/v1/responses")
MOCK_RECORD_LIMIT = 100_000
"""mock_upstream.py forgets its oldest records beyond this (its --max-records default)."""
MAX_OUTPUT_TOKENS = 64
"""Sent on every request: well above the mock's longest answer (8 content events)."""
SMALL_QUOTAS = (1_500, 3_000, 6_000, 12_000, 24_000)
"""Quotas ('total' period) of the first users: spent during a run, so 429s and the bound are tested."""
LARGE_QUOTA = 1_000_000_000
FAULT_SHARE = 0.02
ABORT_SHARE = 0.02
PROGRESS_EVERY_S = 10.0
REQUEST_TIMEOUT_S = 60.0
SETTLE_DEADLINE_S = 60.0
SETTLE_QUIET_S = 3.0
RSS_GROWTH_LIMIT = 1.5
QUOTA_BACKOFF_S = 0.2
"""A client refused for quota waits this long before its next request, as a polite client would."""
PROMPTS = (
    "Say hello.",
    "Name three rivers that cross more than one country and say where each one ends.",
    "Write two sentences about toll roads: why they exist and what a fair price for using one looks like. "
    "Then list four things a toll operator must record for every car that passes.",
)


@dataclass(frozen=True)
class Plan:
    """One request of the mix: what to send and what answer that should get."""

    soak_id: str
    user: int
    api: str
    stream: bool
    mock: dict
    expect: str
    """The answer the plan asks for: ok, client_abort, upstream_500, upstream_429 or stream_error."""


@dataclass
class Tally:
    """What the clients saw. Shared by the client threads under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: Counter = field(default_factory=Counter)
    unexpected: Counter = field(default_factory=Counter)
    quota_refused: set = field(default_factory=set)
    """soak ids of the requests refused for quota: none of them may reach the upstream."""
    sent: int = 0

    def add(self, plan: Plan, outcome: str, small_quota: bool) -> None:
        with self.lock:
            self.sent += 1
            self.outcomes[outcome] += 1
            if outcome == "quota_429":
                self.quota_refused.add(plan.soak_id)
            if outcome != plan.expect and not (outcome == "quota_429" and small_quota):
                self.unexpected[f"{outcome} (asked for {plan.expect})"] += 1

    def snapshot(self) -> tuple[int, Counter, int]:
        with self.lock:
            return self.sent, Counter(self.outcomes), sum(self.unexpected.values())


@dataclass
class Account:
    """A soak user: its name, key and quota (tokens, period)."""

    name: str
    key: str
    quota: int
    period: str


# --- the clients ----------------------------------------------------------------------------


def plan_request(rng: random.Random, client: int, number: int, users: int) -> Plan:
    """The next request of a client: API, stream or not, pacing, and any fault or abort."""
    api = rng.choice(("chat", "responses"))
    stream = rng.random() < 0.5
    soak_id = f"c{client}-{number}"
    user = rng.randrange(users)
    mock = {"tag": f"soak-c{client}", "soak_id": soak_id, "user": user,
            "events": rng.randint(3, 8), "delay_ms": rng.randint(100, 250)}
    expect = "ok"
    if rng.random() < FAULT_SHARE:
        faults = ["status-500", "status-429"] + (["fail", "reset"] if stream else [])
        fault = rng.choice(faults)
        if fault.startswith("status-"):
            mock["status"] = int(fault[-3:])
            expect = f"upstream_{fault[-3:]}"
        else:
            mock["fail_after" if fault == "fail" else "reset_after"] = 1
            expect = "stream_error"
    elif stream and rng.random() < ABORT_SHARE:
        expect = "client_abort"
    return Plan(soak_id, user, api, stream, mock, expect)


def request_body(plan: Plan, prompt: str) -> tuple[str, bytes]:
    if plan.api == "chat":
        body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": MAX_OUTPUT_TOKENS}
        path = "/v1/chat/completions"
    else:
        body = {"model": MODEL, "input": prompt, "max_output_tokens": MAX_OUTPUT_TOKENS}
        path = "/v1/responses"
    body.update(stream=plan.stream, mock=plan.mock)
    return path, json.dumps(body).encode()


def send(port: int, key: str, plan: Plan, prompt: str) -> str:
    """One request; how it ended: ok, client_abort, quota_429, upstream_500, stream_error, ..."""
    path, body = request_body(plan, prompt)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request("POST", path, body=body,
                           headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            return error_kind(response.status, response.read())
        if not plan.stream:
            answer = json.loads(response.read())
            return "ok" if isinstance(answer, dict) and answer.get("usage") else "answer without usage"
        return read_stream(response, plan)
    except (OSError, http.client.HTTPException, ValueError) as error:
        return f"transport error ({type(error).__name__})"
    finally:
        connection.close()


def error_kind(status: int, body: bytes) -> str:
    try:
        error = json.loads(body).get("error") or {}
    except (ValueError, AttributeError):
        return f"HTTP {status} without an OpenAI error"
    if status == 429 and error.get("code") == "insufficient_quota":
        return "quota_429"
    if status in (429, 500):
        return f"upstream_{status}"
    return f"HTTP {status} {error.get('code') or error.get('type')}"


def read_stream(response: http.client.HTTPResponse, plan: Plan) -> str:
    """Reads SSE lines to the end; closes after the first content event when the plan aborts."""
    saw_error = finished = False
    while True:
        line = response.readline()
        if not line:
            break
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if text in ("data: [DONE]", "event: response.completed"):
            finished = True
        elif text == "event: error" or text.startswith('data: {"error"'):
            saw_error = True
        elif plan.expect == "client_abort" and ('"delta":{"content":"tok' in text or "output_text.delta" in text):
            return "client_abort"
    if saw_error:
        return "stream_error"
    return "ok" if finished else "stream cut without an error event"


def client(port: int, accounts: list[Account], number: int, seed: int, stop: threading.Event,
           tally: Tally) -> None:
    rng = random.Random(seed * 100_003 + number)
    count = 0
    while not stop.is_set():
        plan = plan_request(rng, number, count, len(accounts))
        account = accounts[plan.user]
        outcome = send(port, account.key, plan, rng.choice(PROMPTS))
        tally.add(plan, outcome, account.quota < LARGE_QUOTA)
        count += 1
        if outcome == "quota_429":
            stop.wait(QUOTA_BACKOFF_S)


# --- the stack and its processes --------------------------------------------------------------


def make_accounts(stack: Stack, count: int) -> list[Account]:
    """Users soak-00 … with keys (never printed); the first ones get SMALL_QUOTAS."""
    accounts = []
    for index in range(count):
        name = f"soak-{index:02d}"
        quota, period = (SMALL_QUOTAS[index], "total") if index < len(SMALL_QUOTAS) else (LARGE_QUOTA, "day")
        added = stack.tollgate("user", "add", name, "--quota", str(quota), "--period", period)
        if added.returncode != 0:
            raise StackError(f"tollgate user add {name} failed: {added.stderr.strip()[:200]}")
        issued = stack.tollgate("key", "issue", name)
        key = next((line.split()[0] for line in issued.stdout.splitlines() if line.startswith("tg-")), None)
        if issued.returncode != 0 or key is None:
            raise StackError(f"tollgate key issue {name} printed no tg- key")
        accounts.append(Account(name, key, quota, period))
    return accounts


def worker_rss_kb(stack: Stack) -> tuple[int, list[int]]:
    """Sum of VmRSS (kB) of the live workers, and their pids."""
    pids = stack.worker_pids()
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total, pids


def exited_workers(stack: Stack) -> int:
    """`worker.exited` lines the supervisor has logged so far."""
    path = stack.run_dir / "tollgate.log"
    return path.read_text(errors="replace").count("event=worker.exited ") if path.is_file() else 0


@dataclass
class Watch:
    """RSS samples and every worker pid seen, from start to end."""

    samples: list[tuple[float, int]] = field(default_factory=list)
    pids: set = field(default_factory=set)
    warm_rss: int | None = None

    def sample(self, stack: Stack, at: float) -> int:
        rss, pids = worker_rss_kb(stack)
        self.samples.append((at, rss))
        self.pids.update(pids)
        return rss


def run_load(stack: Stack, accounts: list[Account], args: argparse.Namespace, watch: Watch) -> Tally:
    """The clients for `duration` seconds, with a progress line (and an RSS sample) every 10 s."""
    stop, tally = threading.Event(), Tally()
    threads = [threading.Thread(target=client, args=(args.port, accounts, n, args.seed, stop, tally), daemon=True)
               for n in range(args.concurrency)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        while not stop.wait(min(PROGRESS_EVERY_S, max(0.0, args.duration - (time.monotonic() - started)))):
            elapsed = time.monotonic() - started
            rss = watch.sample(stack, elapsed)
            if watch.warm_rss is None and elapsed >= args.warmup:
                watch.warm_rss = rss
            progress(elapsed, tally, rss, stack)
            if elapsed >= args.duration:
                break
            trouble = stack.exited_process()
            if trouble:
                print(f"soak: {trouble}", file=sys.stderr, flush=True)
                break
    finally:
        stop.set()
        for thread in threads:
            thread.join(REQUEST_TIMEOUT_S + 10)
    print(f"[{time.monotonic() - started:6.1f} s] load stopped; {sum(t.is_alive() for t in threads)} clients "
          "still busy", flush=True)
    return tally


def progress(elapsed: float, tally: Tally, rss: int, stack: Stack) -> None:
    sent, outcomes, unexpected = tally.snapshot()
    print(f"[{elapsed:6.1f} s] requests {sent} ({sent / max(elapsed, 0.001):.0f}/s), ok {outcomes['ok']}, "
          f"quota 429 {outcomes['quota_429']}, unexpected errors {unexpected}, worker RSS {rss / 1024:.1f} MiB, "
          f"workers {stack.worker_pids()}", flush=True)


# --- after the load -------------------------------------------------------------------------


def mock_records(mock_port: int, clients: int) -> list[dict]:
    """The mock's records of generation requests, fetched per client tag (keeps answers small)."""
    records = []
    connection = http.client.HTTPConnection("127.0.0.1", mock_port, timeout=120)
    try:
        for number in range(clients):
            connection.request("GET", f"/__mock/requests?tag=soak-c{number}")
            answer = json.loads(connection.getresponse().read())["requests"]
            records += [record for record in answer if record["path"] in GENERATION_PATHS]
    finally:
        connection.close()
    return records


def ledger_count(stack: Stack) -> int:
    return int(stack.psql("SELECT count(*) FROM tollgate.ledger")[0][0] or 0)


def wait_for_settlements(stack: Stack, upstream: int) -> tuple[int, float]:
    """Polls until the ledger holds `upstream` rows, or stopped growing for SETTLE_QUIET_S; (rows, seconds)."""
    started = time.monotonic()
    rows, changed_at = ledger_count(stack), started
    while rows != upstream and time.monotonic() - started < SETTLE_DEADLINE_S:
        if time.monotonic() - changed_at >= SETTLE_QUIET_S:
            break
        time.sleep(0.25)
        now = ledger_count(stack)
        if now != rows:
            rows, changed_at = now, time.monotonic()
    return rows, time.monotonic() - started


def wait_for_leases(stack: Stack, lease_s: float) -> float:
    """With quota leases on, polls until every lease has gone back (they expire `lease_s` after they
    were last taken); returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < lease_s + SETTLE_DEADLINE_S:
        if stack.psql("SELECT count(*) FROM tollgate.quota_leases") == [("0",)]:
            break
        time.sleep(0.25)
    return time.monotonic() - started


OVERSHOOT_SQL = """
SELECT u.name, q.tokens, sum(l.total_tokens)
FROM tollgate.ledger l
JOIN tollgate.quotas q ON q.user_id = l.user_id
JOIN tollgate.users u ON u.id = l.user_id
GROUP BY u.name, q.tokens, tollgate.period_start_of(q.period, l.started_at)
ORDER BY u.name
"""

COUNTERS_SQL = """
SELECT count(*) FROM (
    SELECT c.user_id, c.period_start, c.used_tokens, coalesce(sum(l.total_tokens), 0) AS spent
    FROM tollgate.usage_counters c
    JOIN tollgate.quotas q ON q.user_id = c.user_id
    LEFT JOIN tollgate.ledger l ON l.user_id = c.user_id
        AND tollgate.period_start_of(q.period, l.started_at) = c.period_start
    GROUP BY c.user_id, c.period_start, c.used_tokens
) t WHERE used_tokens <> spent
"""


@dataclass
class Findings:
    """Everything the summary prints and judges."""

    ledger_rows: int = 0
    upstream_calls: int = 0
    settle_s: float = 0.0
    refused_forwarded: int = 0
    per_user_diff: list[str] = field(default_factory=list)
    outcomes: list[tuple] = field(default_factory=list)
    overshoot: int = 0
    spent: list[tuple[str, int, int]] = field(default_factory=list)
    reservations_left: int = 0
    reserved_left: int = 0
    leases_s: float | None = None
    counters_off: int = 0
    reported_tokens: tuple[int, int] = (0, 0)
    restarts: int = 0


def examine(stack: Stack, args: argparse.Namespace, accounts: list[Account], tally: Tally,
            watch: Watch) -> Findings:
    found = Findings()
    records = mock_records(args.mock_port, args.concurrency)
    found.upstream_calls = len(records)
    found.ledger_rows, found.settle_s = wait_for_settlements(stack, len(records))
    if args.lease > 0:
        found.leases_s = wait_for_leases(stack, args.lease)
    found.refused_forwarded = sum(1 for r in records if r["json"]["mock"]["soak_id"] in tally.quota_refused)

    by_user = Counter(accounts[r["json"]["mock"]["user"]].name for r in records)
    ledger_by_user = dict(stack.psql("SELECT u.name, count(*) FROM tollgate.ledger l "
                                     "JOIN tollgate.users u ON u.id = l.user_id GROUP BY u.name"))
    for account in accounts:
        mine, theirs = int(ledger_by_user.get(account.name) or 0), by_user.get(account.name, 0)
        if mine != theirs:
            found.per_user_diff.append(f"{account.name}: ledger {mine}, upstream {theirs}")

    found.outcomes = stack.psql("SELECT outcome, usage_source, count(*) FROM tollgate.ledger "
                                "GROUP BY 1, 2 ORDER BY 1, 2")
    quotas = {account.name: account.quota for account in accounts}
    for name, quota, spent in stack.psql(OVERSHOOT_SQL):
        found.overshoot += max(0, int(spent) - int(quota))
        if quotas.get(name, LARGE_QUOTA) < LARGE_QUOTA:
            found.spent.append((name, int(quota), int(spent)))
    found.reservations_left = int(stack.psql("SELECT count(*) FROM tollgate.reservations")[0][0])
    found.reserved_left = int(stack.psql("SELECT coalesce(sum(reserved_tokens), 0) FROM tollgate.usage_counters")[0][0])
    found.counters_off = int(stack.psql(COUNTERS_SQL)[0][0])
    [(ledger_reported,)] = stack.psql("SELECT coalesce(sum(total_tokens), 0) FROM tollgate.ledger "
                                      "WHERE usage_source = 'reported'")
    found.reported_tokens = (int(ledger_reported), sum(int((r["usage"] or {}).get("total_tokens", 0)) for r in records))
    found.restarts = max(exited_workers(stack), len(watch.pids) - args.workers)
    return found


def report(found: Findings, tally: Tally, watch: Watch, args: argparse.Namespace) -> list[str]:
    """Prints the summary table; returns the failed checks (empty when everything holds)."""
    sent, outcomes, unexpected = tally.snapshot()
    start_rss, end_rss = watch.samples[0][1], watch.samples[-1][1]
    warm = watch.warm_rss or start_rss
    row = "  {:<44} {}".format
    print(f"\nSoak summary: {args.duration:g} s of load, {args.concurrency} clients, {args.users} users")
    print(row("requests sent", sent))
    print(row("answered as planned (ok)", outcomes["ok"]))
    for kind, count in sorted(outcomes.items()):
        if kind != "ok":
            print(row(f"  {kind}", count))
    print(row("unexpected answers", unexpected))
    for kind, count in sorted(tally.unexpected.items()):
        print(row(f"  {kind}", count))
    print(row("ledger rows / upstream calls", f"{found.ledger_rows} / {found.upstream_calls} "
                                              f"(settled {found.settle_s:.1f} s after the load)"))
    for outcome, source, count in found.outcomes:
        print(row(f"  ledger {outcome} ({source})", count))
    for line in found.per_user_diff[:10]:
        print(row("  per user differs", line))
    print(row("quota refusals that reached the upstream", found.refused_forwarded))
    print(row("reported tokens ledger / upstream", "{} / {}".format(*found.reported_tokens)))
    for name, quota, spent in found.spent:
        print(row(f"  {name} spent / quota", f"{spent} / {quota}"))
    print(row("quota overshoot (tokens)", found.overshoot))
    print(row("reservations left / reserved tokens left", f"{found.reservations_left} / {found.reserved_left}"
              + (f" (leases back {found.leases_s:.1f} s after the ledger)" if found.leases_s is not None else "")))
    print(row("counters that disagree with the ledger", found.counters_off))
    print(row("worker restarts", found.restarts))
    print(row("worker RSS start / after warm-up / end (MiB)",
              f"{start_rss / 1024:.1f} / {warm / 1024:.1f} / {end_rss / 1024:.1f}"))
    print(row("worker RSS samples (MiB)", " ".join(f"{rss / 1024:.0f}" for _, rss in watch.samples)))

    checks = [
        (found.ledger_rows == found.upstream_calls and not found.per_user_diff, "ledger rows != upstream calls"),
        (found.upstream_calls < MOCK_RECORD_LIMIT, "the mock forgot records (limit reached): comparison void"),
        (found.refused_forwarded == 0, "a quota refusal reached the upstream"),
        (found.overshoot == 0, "quota overshoot"),
        (found.reservations_left == 0 and found.reserved_left == 0, "reservations left after settlement"),
        (found.counters_off == 0, "usage counters disagree with the ledger"),
        (found.restarts == 0, "a worker restarted"),
        (end_rss <= RSS_GROWTH_LIMIT * warm, f"worker RSS grew beyond {RSS_GROWTH_LIMIT}x the warm-up RSS"),
        (unexpected == 0, "unexpected answers"),
        (sent > 0, "no request was sent"),
    ]
    failures = [message for holds, message in checks if not holds]
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    return failures


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Mixed traffic for minutes; nothing lost, nothing grows.")
    parser.add_argument("--duration", type=float, default=None, help="seconds of load (300; --quick: 30)")
    parser.add_argument("--concurrency", type=int, default=None, help="concurrent clients (200; --quick: 50)")
    parser.add_argument("--quick", action="store_true", help="a 30 s smoke run with 50 clients")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before the reference RSS sample (30; --quick: 10)")
    parser.add_argument("--users", type=int, default=20, help=f"users (20; the first {len(SMALL_QUOTAS)} run out)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--port", type=int, default=18065, help="nginx port on 127.0.0.1 (18065)")
    parser.add_argument("--mock-port", type=int, default=18165, help="mock upstream port (18165)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the traffic mix (1)")
    parser.add_argument("--lease", type=float, default=0.0,
                        help="seconds of TOLLGATE_QUOTA_LEASE for the workers (0: off)")
    args = parser.parse_args(argv)
    args.duration = args.duration if args.duration is not None else (30.0 if args.quick else 300.0)
    args.concurrency = args.concurrency if args.concurrency is not None else (50 if args.quick else 200)
    args.warmup = args.warmup if args.warmup is not None else min(30.0 if not args.quick else 10.0, args.duration)
    if args.duration <= 0 or args.concurrency < 1 or args.users < 1 or not 0 <= args.warmup <= args.duration:
        parser.error("need duration > 0, concurrency >= 1, users >= 1 and 0 <= warmup <= duration")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    env = {"TOLLGATE_GRACE": "10", "TOLLGATE_UPSTREAM_TIMEOUT": "30", "TOLLGATE_UPSTREAM_IDLE_TIMEOUT": "30",
           "TOLLGATE_SQL_DIR": str(ROOT / "sql")}
    if args.lease > 0:
        env["TOLLGATE_QUOTA_LEASE"] = f"{args.lease:g}"
    stack = Stack(ROOT, name="soak", http_port=args.port, mock_port=args.mock_port, workers=args.workers,
                  env=env, database=True)
    watch = Watch()
    try:
        stack.start()
        accounts = make_accounts(stack, args.users)
        watch.sample(stack, 0.0)
        print(f"stack up: nginx :{args.port}, mock :{args.mock_port}, PostgreSQL :{stack.pg_port}, "
              f"{args.workers} workers, {args.users} users; {args.concurrency} clients "
              f"for {args.duration:g} s", flush=True)
        tally = run_load(stack, accounts, args, watch)
        found = examine(stack, args, accounts, tally, watch)
        watch.sample(stack, -1.0)
        found.restarts = max(found.restarts, exited_workers(stack), len(watch.pids) - args.workers)
    except StackError as error:
        print(f"soak: {error}", file=sys.stderr)
        return 2
    finally:
        stack.stop()
    return 1 if report(found, tally, watch, args) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
