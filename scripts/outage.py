#!/usr/bin/env python3
"""`make outage`: shows that no usage is lost while PostgreSQL is down.

    python3 scripts/outage.py [--clients 20] [--duration 30] [--outage-at 10] [--outage 10]
                              [--policy refuse|allow] [--port 18070] [--mock-port 18170]

Starts a stack with its own PostgreSQL (scripts/stack.py, Stack(database=True)), a user with a
key, and steady load: CLIENTS threads, each sending a mix of chat completions and Responses
requests, streamed and not, one after another. At OUTAGE_AT seconds PostgreSQL is stopped
(fast mode: open sessions are cut), OUTAGE seconds later it is started again; the load stops at
DURATION seconds. Requests the workers admitted before the stop settle into their journals;
those arriving during the outage get the 503 of the outage policy (refuse, the default), or are
served within the allowance (allow). Then it waits, with a deadline, for the workers to replay
their journals (the journal directory empties), and compares the ledger with the mock
upstream's own records: rows against requests it completed, total_tokens against the usage it
reported. Prints a short report ending in MATCH or MISMATCH; exits 1 on a mismatch, 2 when the
stack cannot run. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from stack import Stack, StackError  # noqa: E402

USER = "outage-demo"
MODEL = "gpt-4o-mini"
PROMPT = "Name one reason a toll road might keep a local ledger."
GENERATION_PATHS = ("/v1/chat/completions", "/v1/responses")
REPLAY_DEADLINE_S = 60.0
SETTLE_DEADLINE_S = 30.0
BACKOFF_AFTER_503_S = 0.05
"""A refused client waits this long before its next request, as a polite client would."""


@dataclass
class Tally:
    """What the clients saw, by phase of the run. Shared by the client threads under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    served: dict[str, int] = field(default_factory=lambda: {"before": 0, "during": 0, "after": 0})
    refused_503: dict[str, int] = field(default_factory=lambda: {"before": 0, "during": 0, "after": 0})
    other: dict[str, int] = field(default_factory=dict)

    def add(self, phase: str, outcome: str) -> None:
        with self.lock:
            if outcome == "served":
                self.served[phase] += 1
            elif outcome == "503":
                self.refused_503[phase] += 1
            else:
                self.other[outcome] = self.other.get(outcome, 0) + 1


class Timeline:
    """Which phase the run is in: before, during or after the outage."""

    def __init__(self) -> None:
        self.phase = "before"

    def set(self, phase: str) -> None:
        self.phase = phase


def request_body(kind: int) -> tuple[str, dict]:
    """The path and body of request number `kind` of the mix (chat/responses x stream/not)."""
    stream = kind % 2 == 1
    mock = {"events": 5, "delay_ms": 20}
    if kind % 4 < 2:
        body = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": PROMPT}],
                "stream": stream, "mock": mock}
        return "/v1/chat/completions", body
    body = {"model": MODEL, "max_output_tokens": 64, "input": PROMPT, "stream": stream, "mock": mock}
    return "/v1/responses", body


def send(port: int, key: str, kind: int) -> str:
    """One request; 'served' (200 and a complete answer), '503', or a short description."""
    path, body = request_body(kind)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=json.dumps(body),
                           headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as error:
        return f"transport error ({type(error).__name__})"
    finally:
        connection.close()
    if response.status == 503 and '"metering_unavailable"' in text:
        return "503"
    if response.status != 200:
        return f"HTTP {response.status}"
    complete = ("[DONE]" in text or "response.completed" in text) if body["stream"] else '"usage"' in text
    return "served" if complete else "incomplete answer"


def client(port: int, key: str, number: int, stop: threading.Event, timeline: Timeline, tally: Tally) -> None:
    kind = number
    while not stop.is_set():
        phase = timeline.phase
        outcome = send(port, key, kind)
        tally.add(phase, outcome)
        kind += 1
        if outcome == "503":
            stop.wait(BACKOFF_AFTER_503_S)


def issue_key(stack: Stack) -> str:
    """A user with a quota the run cannot exhaust, and a fresh key for it (never printed)."""
    added = stack.tollgate("user", "add", USER, "--quota", "1000000000000", "--period", "total")
    if added.returncode != 0:
        raise StackError(f"tollgate user add failed: {added.stderr.strip()[:200]}")
    issued = stack.tollgate("key", "issue", USER)
    key = next((line.split()[0] for line in issued.stdout.splitlines() if line.startswith("tg-")), None)
    if issued.returncode != 0 or key is None:
        raise StackError("tollgate key issue printed no tg- key")
    return key


def journal_files(directory: Path) -> list[Path]:
    """Journal files still waiting for replay (`*.journal`, `*.replay`)."""
    if not directory.is_dir():
        return []
    return [path for path in directory.iterdir()
            if not path.name.startswith(".") and path.suffix in (".journal", ".replay")]


def wait_for(condition, deadline_s: float) -> float | None:
    """Polls `condition` every 50 ms; seconds it took, or None at the deadline."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > deadline_s:
            return None
        time.sleep(0.05)
    return time.monotonic() - started


def upstream_totals(mock_port: int) -> tuple[int, int]:
    """Requests the mock completed on the generation paths, and the total tokens it reported."""
    connection = http.client.HTTPConnection("127.0.0.1", mock_port, timeout=30)
    try:
        connection.request("GET", "/__mock/requests")
        records = json.loads(connection.getresponse().read())["requests"]
    finally:
        connection.close()
    completed = [r for r in records if r["path"] in GENERATION_PATHS and r["completed"]]
    tokens = sum(int((r.get("usage") or {}).get("total_tokens", 0)) for r in completed)
    return len(completed), tokens


def ledger_totals(stack: Stack) -> tuple[int, int, int]:
    """Ledger rows, their total_tokens, and how many carry estimated usage."""
    rows = stack.psql("SELECT count(*), coalesce(sum(total_tokens), 0), "
                      "count(*) FILTER (WHERE usage_source = 'estimated') FROM tollgate.ledger")
    count, tokens, estimated = rows[0]
    return int(count or 0), int(tokens or 0), int(estimated or 0)


def log_text(stack: Stack) -> str:
    path = stack.run_dir / "tollgate.log"
    return path.read_text(errors="replace") if path.is_file() else ""


def log_count(stack: Stack, event: str) -> int:
    return log_text(stack).count(f"event={event} ")


def replayed_count(stack: Stack) -> int:
    """Settlements the workers' replays wrote to the ledger, from their journal.replayed lines."""
    return sum(int(n) for n in re.findall(r'event=journal\.replayed .*detail="(\d+) settled', log_text(stack)))


@dataclass
class Run:
    """The measured outcome of one demonstration."""

    tally: Tally
    outage_s: float
    replay_s: float | None
    upstream: tuple[int, int]
    ledger: tuple[int, int, int]
    journaled: int
    replayed: int
    rejected_files: list[str]


class ReplayWatch:
    """Measures, from PostgreSQL's restart, how long until the journal directory is empty."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal
        self.seconds: float | None = None
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _watch(self) -> None:
        self.seconds = wait_for(lambda: not journal_files(self.journal), REPLAY_DEADLINE_S)

    def result(self) -> float | None:
        self.thread.join(REPLAY_DEADLINE_S + 5)
        return self.seconds


def load_with_outage(stack: Stack, key: str, args: argparse.Namespace, watch: ReplayWatch) -> tuple[Tally, float]:
    """Runs the load, stopping and restarting PostgreSQL on schedule (starting `watch` once it is
    back); the tally and the outage length."""
    stop, timeline, tally = threading.Event(), Timeline(), Tally()
    threads = [threading.Thread(target=client, args=(args.port, key, n, stop, timeline, tally), daemon=True)
               for n in range(args.clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        # Schedule of the demonstration itself (load phases), not synchronisation of a test.
        time.sleep(args.outage_at)
        print(f"[{time.monotonic() - started:5.1f} s] stopping PostgreSQL", flush=True)
        timeline.set("during")
        stopped_at = time.monotonic()
        stack.stop_database()
        time.sleep(max(0.0, args.outage - (time.monotonic() - stopped_at)))
        print(f"[{time.monotonic() - started:5.1f} s] starting PostgreSQL", flush=True)
        stack.start_database()
        watch.start()
        outage_s = time.monotonic() - stopped_at
        timeline.set("after")
        time.sleep(max(0.0, args.duration - (time.monotonic() - started)))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    print(f"[{time.monotonic() - started:5.1f} s] load stopped", flush=True)
    return tally, outage_s


def demonstrate(stack: Stack, args: argparse.Namespace) -> Run:
    key = issue_key(stack)
    journal = stack.run_dir / "journal"
    watch = ReplayWatch(journal)
    tally, outage_s = load_with_outage(stack, key, args, watch)
    replay_s = watch.result()

    upstream = upstream_totals(args.mock_port)
    # The last settlements run just after their clients got the answer: wait until they are in.
    wait_for(lambda: ledger_totals(stack)[:2] == upstream, SETTLE_DEADLINE_S)
    rejected = sorted(path.name for path in journal.glob("*.rejected")) if journal.is_dir() else []
    return Run(tally, outage_s, replay_s, upstream, ledger_totals(stack), log_count(stack, "usage.journaled"),
               replayed_count(stack), rejected)


def report(run: Run, policy: str) -> bool:
    """Prints the report; True when the ledger matches the upstream exactly."""
    tally = run.tally
    served = sum(tally.served.values())
    matched = run.ledger[:2] == run.upstream and run.replay_s is not None and not run.rejected_files
    print()
    print(f"Outage demonstration (policy {policy}), PostgreSQL down {run.outage_s:.1f} s")
    print(f"  requests served (client saw 200)   {served} "
          f"(before {tally.served['before']}, during {tally.served['during']}, after {tally.served['after']})")
    print(f"  503 metering_unavailable           {sum(tally.refused_503.values())} "
          f"(during the outage {tally.refused_503['during']})")
    if tally.other:
        print(f"  other answers                      {', '.join(f'{k}: {v}' for k, v in sorted(tally.other.items()))}")
    print(f"  settlements journaled              {run.journaled}")
    replay = f"{run.replay_s:.1f} s after the restart" if run.replay_s is not None else "NOT within the deadline"
    print(f"  settlements replayed               {run.replayed}")
    print(f"  journals empty                     {replay}")
    if run.rejected_files:
        print(f"  rejected journal lines in          {', '.join(run.rejected_files)}")
    print(f"  ledger rows / upstream completed   {run.ledger[0]} / {run.upstream[0]}")
    print(f"  ledger tokens / upstream usage     {run.ledger[1]} / {run.upstream[1]}")
    print(f"  ledger rows with estimated usage   {run.ledger[2]}")
    print("MATCH" if matched else "MISMATCH")
    return matched


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Stop PostgreSQL under load and check that no usage is lost.")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (20)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (30)")
    parser.add_argument("--outage-at", type=float, default=10.0, help="seconds into the load PostgreSQL stops (10)")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds PostgreSQL stays down (10)")
    parser.add_argument("--policy", choices=("refuse", "allow"), default="refuse",
                        help="TOLLGATE_OUTAGE_POLICY of the workers (refuse)")
    parser.add_argument("--lease", type=float, default=0.0,
                        help="seconds of TOLLGATE_QUOTA_LEASE for the workers (0: off)")
    parser.add_argument("--port", type=int, default=18070, help="nginx port on 127.0.0.1 (18070)")
    parser.add_argument("--mock-port", type=int, default=18170, help="mock upstream port (18170)")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.outage_at < 0 or args.outage <= 0 or args.duration < args.outage_at + args.outage:
        parser.error("need clients >= 1, outage > 0 and duration >= outage-at + outage")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    # TOLLGATE_SQL_DIR: a binary built elsewhere (TOLLGATE_BINARY) still migrates from this repository.
    env = {"TOLLGATE_GRACE": "5", "TOLLGATE_OUTAGE_POLICY": args.policy, "TOLLGATE_DATABASE_TIMEOUT": "2",
           "TOLLGATE_SQL_DIR": str(ROOT / "sql")}
    if args.lease > 0:
        env["TOLLGATE_QUOTA_LEASE"] = f"{args.lease:g}"
    stack = Stack(ROOT, name="outage", http_port=args.port, mock_port=args.mock_port, workers=2,
                  env=env, database=True)
    # A journal left by an earlier run belongs to that run's database, not to this fresh one.
    shutil.rmtree(stack.run_dir / "journal", ignore_errors=True)
    try:
        stack.start()
        print(f"stack up: nginx :{args.port}, mock :{args.mock_port}, PostgreSQL :{stack.pg_port}, "
              f"{args.clients} clients for {args.duration:g} s, outage at {args.outage_at:g} s for {args.outage:g} s",
              flush=True)
        run = demonstrate(stack, args)
    except StackError as error:
        print(f"outage: {error}", file=sys.stderr)
        return 2
    finally:
        stack.stop()
    return 0 if report(run, args.policy) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
