"""Growth benchmark: admission and settlement latency as the usage ledger grows.

A private PostgreSQL cluster (started and removed by the benchmark) holds one database per
ledger size, all made from one template with the schema of sql/*.sql, 1,000 users and the
benchmark user with a key and a quota big enough never to run out. Each measurement is a psql
session calling the functions workers call, `tollgate.admit_batch_fast(...)` then
`tollgate.settle_batch(...)`, each with a batch of one fresh request id, `\\timing` giving each
call's round trip; the sizes are interleaved within every round.

Filling: `INSERT ... SELECT ... FROM generate_series(...)` with the ledger's indexes and
unique constraints dropped during the load and rebuilt after it (read back from the catalog,
so they are the schema's own), because maintaining them row by row takes minutes per
10 million rows. Settings: fsync on; `synchronous_commit = off` in the measuring sessions,
so that a disk flush, the same for every size, does not drown what the size changes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

# harness imports scripts/stack.py; scripts/bench.py has scripts/ on the path already, a run of this
# file on its own (`python3 bench/growth.py batch-cost`) has not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from harness import BenchError, is_running  # noqa: E402

BENCH_KEY = "tg-benchgrowth0000000000000000000000000000"
"""The benchmark user's key in the growth databases (a fixed test value, not a secret)."""

FILLER_USERS = 1000

UUID7_SQL = ("set_byte(overlay(uuid_send(gen_random_uuid()) placing substring(int8send((extract(epoch FROM {at}) "
             "* 1000)::bigint) FROM 3) FROM 1 FOR 6), 6, (get_byte(uuid_send(gen_random_uuid()), 6) & 15) | 112)")
UUID7_SQL = f"encode({UUID7_SQL}, 'hex')::uuid"
"""A request id as the workers make them (UUID version 7: the time in milliseconds, then random
bits), for the rows the ledger is filled with: their order in the primary-key index is the
order of their start, as in a real ledger."""


def uuid7() -> str:
    """A UUID version 7 for now, as the workers' RequestID makes it."""
    value = (time.time_ns() // 1_000_000) << 80 | secrets.randbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return str(uuid.UUID(int=value))
TEMPLATE_DB = "growth_template"


def _pg_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not versions:
        raise BenchError("PostgreSQL server binaries not found: install postgresql (scripts/deps.sh)")
    return versions[-1].parent


def bench_key_hash(index: int) -> str:
    """Hex SHA-256 of benchmark user `index`'s key: BENCH_KEY for the first, a variant of it for the others."""
    key = BENCH_KEY if index == 0 else f"{BENCH_KEY[:-6]}{index:06d}"
    return hashlib.sha256(key.encode()).hexdigest()


def sql_files(root: Path) -> list[Path]:
    return sorted((root / "sql").glob("[0-9][0-9][0-9]_*.sql"))


def growth_support(root: Path) -> str | None:
    """None when the schema has admit_batch_fast() and settle_batch(); otherwise why growth cannot run."""
    files = sql_files(root)
    if not files:
        return "no sql/ migrations in this tree"
    text = "".join(path.read_text(errors="replace") for path in files)
    if "tollgate.admit_batch_fast(" not in text or "tollgate.settle_batch(" not in text:
        return "sql/ defines no tollgate.admit_batch_fast / tollgate.settle_batch yet"
    if not shutil.which("psql"):
        return "psql not found (install postgresql-client)"
    return None


@dataclass
class Timings:
    """Round trips of one measuring session, ms."""

    admit_ms: list[float]
    settle_ms: list[float]


class GrowthCluster:
    """The private cluster of the growth benchmark: start, fill, measure, stop."""

    def __init__(self, root: Path, run_dir: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.bin = _pg_bin()
        self.base = self._base_dir(run_dir)
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.kept_log = run_dir / "pg-growth.log"
        self.user_id = 0
        self.key_id = 0

    @staticmethod
    def _base_dir(run_dir: Path) -> Path:
        """Under .run/bench when the postgres user can reach it, else under /tmp."""
        preferred = run_dir / "pg-growth"
        reachable = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(run_dir)],
                                   capture_output=True).returncode == 0
        if reachable:
            return preferred
        digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:10]
        return Path(f"/tmp/tollgate-bench-pg-{digest}")

    def _as_postgres(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(["runuser", "-u", "postgres", "--", *command], capture_output=True, text=True)
        if check and done.returncode != 0:
            raise BenchError(f"{Path(command[0]).name} failed: {(done.stderr or done.stdout).strip()[:400]}")
        return done

    def stop_leftover(self) -> None:
        """Stops a cluster a crashed run left in the same place, then removes it."""
        pid_file = self.data / "postmaster.pid"
        if pid_file.is_file():
            try:
                pid = int(pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pid = 0
            if pid and is_running(pid):
                self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop",
                                  check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    def start(self) -> None:
        self.stop_leftover()
        self.base.mkdir(parents=True)
        shutil.chown(self.base, "postgres", "postgres")
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "--no-sync", "-U",
                          "postgres")
        options = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c shared_buffers=512MB "
                   "-c max_wal_size=16GB -c checkpoint_timeout=1h -c maintenance_work_mem=1GB")
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                          "-o", options, "start")

    def stop(self) -> None:
        """Stops the cluster and removes it, keeping its log as .run/bench/pg-growth.log."""
        if (self.data / "postmaster.pid").is_file():
            self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop",
                              check=False)
        if self.log.is_file():
            self.kept_log.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.log, self.kept_log)
        shutil.rmtree(self.base, ignore_errors=True)

    def psql(self, database: str, sql: str | None = None, file: Path | None = None,
             single_transaction: bool = False) -> str:
        """Runs SQL (text or a file) in `database`; returns unaligned, tuples-only output."""
        command = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
                   "-U", "postgres", "-d", database]
        if single_transaction:
            command.append("-1")
        command += ["-f", str(file)] if file else ["-c", sql or ""]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
        if done.returncode != 0:
            raise BenchError(f"psql on {database}: {done.stderr.strip()[:400]}")
        return done.stdout.strip()

    # -- preparing ----------------------------------------------------------------------------

    def prepare_template(self, database: str = TEMPLATE_DB, bench_users: int = 1) -> None:
        """The template database: schema, filler users, the benchmark users, their keys and quotas.

        The first benchmark user, `bench`, has BENCH_KEY; the others (`bench-1`...) keys of their own.
        """
        self.psql("postgres", f"CREATE DATABASE {database}")
        for path in sql_files(self.root):
            self.psql(database, file=path, single_transaction=True)
        self.psql(database, f"""
            INSERT INTO tollgate.users (name) SELECT 'filler-' || g FROM generate_series(1, {FILLER_USERS - 1}) g;""")
        self.key_hashes = [bench_key_hash(index) for index in range(bench_users)]
        for index, key_hash in enumerate(self.key_hashes):
            name = "bench" if index == 0 else f"bench-{index}"
            self.psql(database, f"""
                INSERT INTO tollgate.users (name) VALUES ('{name}');
                INSERT INTO tollgate.api_keys (user_id, key_hash, prefix)
                    SELECT id, '\\x{key_hash}'::bytea, '{BENCH_KEY[:10]}' FROM tollgate.users WHERE name = '{name}';
                SELECT tollgate.set_quota('{name}', 1000000000000000, 'total');""")
        ids = self.psql(database, "SELECT u.id || ' ' || k.id FROM tollgate.users u JOIN tollgate.api_keys k "
                                  "ON k.user_id = u.id WHERE u.name = 'bench' OR u.name LIKE 'bench-%' ORDER BY u.id")
        pairs = [tuple(int(part) for part in line.split()) for line in ids.splitlines()]
        self.user_ids = [user for user, _ in pairs]
        self.key_ids = [key for _, key in pairs]
        self.user_id, self.key_id = self.user_ids[0], self.key_ids[0]

    def create(self, database: str, template: str = TEMPLATE_DB) -> None:
        self.psql("postgres", f"CREATE DATABASE {database} TEMPLATE {template}")

    def fill(self, database: str, rows: int) -> None:
        """Adds `rows` ledger rows spread over the users and the last rows/4 seconds."""
        if rows <= 0:
            return
        keys = self.psql(database, """
            SELECT c.conname || '|' || pg_get_constraintdef(c.oid) FROM pg_constraint c
            WHERE c.conrelid = 'tollgate.ledger'::regclass AND c.contype IN ('p', 'u')""").splitlines()
        indexes = self.psql(database, """
            SELECT i.indexrelid::regclass || '|' || pg_get_indexdef(i.indexrelid) FROM pg_index i
            WHERE i.indrelid = 'tollgate.ledger'::regclass
              AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)""").splitlines()
        referenced = self.psql(database, "SELECT count(*) FROM pg_constraint WHERE confrelid = "
                                         "'tollgate.ledger'::regclass")
        rebuild = referenced == "0"

        statements = ["SET session_replication_role = replica;", "SET synchronous_commit = off;",
                      "SET maintenance_work_mem = '1GB';"]
        if rebuild:
            statements += [f"DROP INDEX {line.split('|', 1)[0]};" for line in indexes]
            statements += [f"ALTER TABLE tollgate.ledger DROP CONSTRAINT {line.split('|', 1)[0]};" for line in keys]
        statements.append(f"""
            INSERT INTO tollgate.ledger (request_id, user_id, key_id, endpoint, model, stream, key_source, outcome,
                http_status, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, total_tokens,
                usage_source, started_at, ttfb_ms, duration_ms)
            SELECT {UUID7_SQL.format(at="now() - make_interval(secs => g * 0.25)")}, first.id + g % {FILLER_USERS}, NULL,
                   CASE WHEN g % 5 = 0 THEN 'responses' ELSE 'chat.completions' END,
                   CASE WHEN g % 2 = 0 THEN 'gpt-4o-mini' ELSE 'gpt-4.1-nano' END, g % 3 = 0, 'platform',
                   'completed', 200, 20 + g % 400, 0, 5 + g % 700, 0, 25 + g % 400 + g % 700, 'reported',
                   now() - make_interval(secs => g * 0.25), 150.0, 900.0
            FROM generate_series(1, {rows}) g, (SELECT min(id) AS id FROM tollgate.users) first;""")
        if rebuild:
            statements += [f"ALTER TABLE tollgate.ledger ADD CONSTRAINT {name} {definition};"
                           for name, definition in (line.split("|", 1) for line in keys)]
            statements += [line.split("|", 1)[1] + ";" for line in indexes]
        script = self.base.parent / f"fill-{database}.sql"
        script.write_text("\n".join(statements) + "\n")
        try:
            self.psql(database, file=script, single_transaction=True)
        finally:
            script.unlink(missing_ok=True)
        self.psql(database, "VACUUM ANALYZE tollgate.ledger")

    def ledger_rows(self, database: str) -> int:
        return int(self.psql(database, "SELECT count(*) FROM tollgate.ledger"))

    # -- measuring ----------------------------------------------------------------------------

    def measure(self, database: str, pairs: int, warmup: int, batch: int = 1, users: int = 1) -> Timings:
        """Times `pairs` admit_batch+settle_batch round trips (after `warmup` untimed ones) in one session.

        Each call carries `batch` fresh request ids, spread over the first `users` benchmark users
        (the growth scenario: 1 and 1, so each figure is one request's latency). Fails when a
        request was not admitted or a settlement did not leave its ledger row, so a figure never
        comes from calls that were refused.
        """
        calls = [[uuid7() for _ in range(batch)] for _ in range(warmup + pairs)]
        lines = ["SET synchronous_commit = off;", "\\timing on", "\\o /dev/null"]
        for ids in calls:
            owners = [index % users for index in range(len(ids))]
            lines.append(self._admit_batch_sql(ids, owners))
            lines.append(self._settle_batch_sql(ids, owners))
        used_before, _ = self._standing(database)
        script = self.base.parent / f"measure-{database}.sql"
        script.write_text("\n".join(lines) + "\n")
        try:
            output = self.psql(database, file=script)
        finally:
            script.unlink(missing_ok=True)
        times = [float(line.split()[1]) for line in output.splitlines() if line.startswith("Time: ")]
        if len(times) != 2 * len(calls):
            raise BenchError(f"growth: expected {2 * len(calls)} timings from psql, got {len(times)}")
        self._check_settled(database, [i for ids in calls for i in ids], used_before)
        timed = times[2 * warmup :]
        return Timings(admit_ms=timed[0::2], settle_ms=timed[1::2])

    def _admit_batch_sql(self, ids: list[str], owners: list[int]) -> str:
        """One admit_batch_fast call: 16,400 tokens reserved per request (20 estimated input)."""
        count = len(ids)
        uuids = ",".join(f"'{request_id}'" for request_id in ids)
        hashes = ",".join(f"'\\x{self.key_hashes[owner]}'::bytea" for owner in owners)
        return (f"SELECT count(*) FILTER (WHERE outcome = 'admitted') FROM tollgate.admit_batch_fast("
                f"ARRAY[{uuids}]::uuid[], ARRAY[{hashes}], array_fill(NULL::text, ARRAY[{count}]), "
                f"array_fill(16400::bigint, ARRAY[{count}]), array_fill(20::bigint, ARRAY[{count}]), "
                f"array_fill('chat.completions'::text, ARRAY[{count}]), "
                f"array_fill('gpt-4o-mini'::text, ARRAY[{count}]), "
                f"array_fill(false, ARRAY[{count}]), 'bench:growth', NULL);")

    def _settle_batch_sql(self, ids: list[str], owners: list[int]) -> str:
        """One settle_batch call: 25 tokens used per request."""
        count = len(ids)
        uuids = ",".join(f"'{request_id}'" for request_id in ids)
        users = ",".join(str(self.user_ids[owner]) for owner in owners)
        keys = ",".join(str(self.key_ids[owner]) for owner in owners)
        same = [f"array_fill({value}, ARRAY[{count}])" for value in (
            "'chat.completions'::text", "'gpt-4o-mini'::text", "false", "'platform'::text", "'completed'::text",
            "200", "20::bigint", "0::bigint", "5::bigint", "0::bigint", "25::bigint", "'reported'::text", "now()",
            "150.0::float8", "900.0::float8")]
        return (f"SELECT count(*) FILTER (WHERE recorded) FROM tollgate.settle_batch(ARRAY[{uuids}]::uuid[], "
                f"ARRAY[{users}]::bigint[], ARRAY[{keys}]::bigint[], {', '.join(same)});")

    def _standing(self, database: str) -> tuple[int, int]:
        """(used, reserved) tokens of the benchmark users."""
        users = ",".join(str(user) for user in self.user_ids)
        found = self.psql(database, f"""
            SELECT coalesce(sum(used_tokens), 0) || ' ' || coalesce(sum(reserved_tokens), 0)
            FROM tollgate.usage_counters WHERE user_id IN ({users})""")
        used, reserved = (int(part) for part in found.split())
        return used, reserved

    def _check_settled(self, database: str, ids: list[str], used_before: int) -> None:
        """Every call admitted (its 25 tokens reached the counter) and nothing is still held."""
        used, reserved = self._standing(database)
        listed = ",".join(ids)
        rows = int(self.psql(database, "SELECT count(*) FROM tollgate.ledger "
                                       f"WHERE request_id = ANY('{{{listed}}}'::uuid[])"))
        if rows != len(ids) or used - used_before != 25 * len(ids) or reserved != 0:
            raise BenchError(f"growth: {rows} of {len(ids)} ledger rows, {used - used_before} of {25 * len(ids)} "
                             f"tokens counted, {reserved} still reserved (admission refused?)")


# -- batch sizes, on a running cluster ---------------------------------------------------------

BATCH_SIZES = (1, 16, 64)
BATCH_COST_DB = "growth_batch_cost"


def batch_cost(root: Path, port: int, rounds: int, requests: int, users: int) -> dict[int, dict[str, float]]:
    """PostgreSQL's cost per request of admit_batch and settle_batch at each of BATCH_SIZES, ms.

    Runs on a cluster already listening on 127.0.0.1:`port` that trusts the user postgres (the
    store tests' one, from scripts/stack.py db-start), in a database of its own, created from
    sql/ and dropped at the end. Every round measures each size in turn, `requests` requests
    each, spread over `users` benchmark users; a figure is the median, over the rounds, of the
    median round trip of one call divided by the batch size.
    """
    run_dir = root / ".run" / "bench-batch-cost"
    run_dir.mkdir(parents=True, exist_ok=True)
    cluster = GrowthCluster(root, run_dir, port)
    cluster.base.parent.mkdir(parents=True, exist_ok=True)
    cluster.psql("postgres", f"DROP DATABASE IF EXISTS {BATCH_COST_DB}")
    cluster.prepare_template(BATCH_COST_DB, bench_users=users)
    samples: dict[int, dict[str, list[float]]] = {size: {"admit": [], "settle": []} for size in BATCH_SIZES}
    try:
        for _ in range(rounds):
            for size in BATCH_SIZES:
                calls = max(1, requests // size)
                timings = cluster.measure(BATCH_COST_DB, calls, warmup=max(2, calls // 10), batch=size, users=users)
                samples[size]["admit"].append(statistics.median(timings.admit_ms) / size)
                samples[size]["settle"].append(statistics.median(timings.settle_ms) / size)
    finally:
        cluster.psql("postgres", f"DROP DATABASE IF EXISTS {BATCH_COST_DB}")
    return {size: {call: statistics.median(values) for call, values in calls.items()}
            for size, calls in samples.items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Measurements of the store functions outside scripts/bench.py.")
    commands = parser.add_subparsers(dest="command", required=True)
    cost = commands.add_parser("batch-cost", help="cost per request of admit_batch / settle_batch at batch sizes "
                                                  + ", ".join(map(str, BATCH_SIZES)))
    cost.add_argument("--port", type=int, required=True, help="a PostgreSQL on 127.0.0.1 trusting user postgres")
    cost.add_argument("--rounds", type=int, default=5, help="rounds, sizes interleaved in each (5)")
    cost.add_argument("--requests", type=int, default=1024, help="requests per size and round (1024)")
    cost.add_argument("--users", type=int, default=8, help="users the requests are spread over (8)")
    args = parser.parse_args(argv)

    root = Path(__file__).resolve().parent.parent
    try:
        figures = batch_cost(root, args.port, args.rounds, args.requests, args.users)
    except BenchError as error:
        print(f"growth: {error}", file=sys.stderr)
        return 1
    print(f"PostgreSQL cost per request, ms (median of {args.rounds} rounds, {args.requests} requests per size "
          f"and round, {args.users} users, psql \\timing over TCP 127.0.0.1, synchronous_commit off)")
    print("| batch size | admit_batch | settle_batch | admit + settle |")
    print("|---:|---:|---:|---:|")
    for size, calls in figures.items():
        print(f"| {size} | {calls['admit']:.3f} | {calls['settle']:.3f} | {calls['admit'] + calls['settle']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
