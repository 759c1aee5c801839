#!/usr/bin/env python3
"""`make bench`: Tollgate side by side with its floor (and optionally LiteLLM), on loopback.

    python3 scripts/bench.py [--quick] [--rounds N] [--duration S] [--only SCENARIO[,...]]
                             [--peers litellm] [--hold S] [--port-base P]

Starts everything it needs on 127.0.0.1, runs each scenario against each target, interleaved
within every round (floor, metering off, metering on, peers) so that noise hits them all, and
stops everything again. Figures are medians over the rounds. Progress lines go to stdout while
it runs; then a Markdown table (target | scenario | figure | vs floor | target met?) is printed
and written to .run/bench/results.md, with the raw figures in .run/bench/results.json.

Targets:
  floor     nginx proxying straight to the upstream: no worker, no metering (bench/floor.conf);
  off       nginx -> tollgate serve with metering off (no database), scripts/stack.py's stack;
  on        the same with full metering (Stack(database=True): auth, reservation, settlement,
            ledger row), when this build supports a database; "n/a" otherwise;
  litellm   with --peers litellm: the LiteLLM proxy from PyPI (bench/peers.py).
Scenarios: nonstream64, nonstream1, stream, scaling, capacity, growth (see SCENARIO_HELP).
Upstreams: nginx serving canned bodies (bench/upstream.conf), and for the capacity scenario
a paced SSE server (bench/sse_upstream.py) behind it. Clients: wrk with bench/wrk.lua, and the
stream clients in bench/streams.py.
"""

from __future__ import annotations

import argparse
import http.client
import inspect
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))

from growth import GrowthCluster, growth_support  # noqa: E402
from harness import (BenchError, Managed, Processes, http_get, median, percentile, rss_kib,  # noqa: E402
                     WrkResult, run_wrk, start_nginx, wait_until)
from peers import start_litellm  # noqa: E402
from report import LABELS, LEASE_SECONDS, METERED, build_report  # noqa: E402
from stack import Stack, StackError  # noqa: E402
from stack import stop_leftovers as stop_stack_leftovers  # noqa: E402

SCENARIO_HELP = {
    "nonstream64": "non-stream chat, small body, 64 connections: requests/s, p50/p99",
    "nonstream1": "non-stream chat at 1 connection: the latency each target adds",
    "stream": "streamed chat of N events at 1 connection: time to first event and to last",
    "scaling": "non-stream requests/s at 64 connections with 1, 2 and 4 worker processes",
    "capacity": "concurrent open streams (one event a second) held, worker RSS, non-stream p99 meanwhile",
    "growth": "admit/settle latency with the ledger empty, at 1 M and at 10 M rows",
}
SCENARIOS = tuple(SCENARIO_HELP)
NO_DATABASE = "n/a (no database support in this build)"
DUMMY_KEY = "tg-" + "0" * 40
"""Sent as the bearer token to targets that do not check it, so every target gets the same bytes."""

CHAT_BODY = {"model": "gpt-4o-mini", "max_tokens": 64,
             "messages": [{"role": "user", "content": "Write one short sentence about toll roads."}]}
STREAM_BODY = {**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}}


@dataclass
class Settings:
    """What one run does; --quick shrinks every size and duration."""

    rounds: int
    duration: float
    scenarios: list[str]
    peers: list[str]
    quick: bool
    port_base: int
    hold: float
    steps: list[int]
    stream_events: int
    stream_requests: int
    growth_sizes: list[int]
    growth_pairs: int

    @property
    def warmup(self) -> float:
        return 1.0 if self.quick else 2.0


@dataclass
class Target:
    """One system under test in one scenario group."""

    key: str
    label: str
    url: str | None = None
    auth: str | None = None
    na: str | None = None
    stack: Stack | None = None


class Bench:
    """One benchmark run: the shared upstream, the targets, the scenarios and their figures."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.run_dir = ROOT / ".run" / "bench"
        self.processes = Processes(self.run_dir)
        self.stacks: list[Stack] = []
        self.raw: dict[str, dict[str, list[dict]]] = {}
        self.notes: dict[str, dict[str, str]] = {}
        self.extra: dict[str, dict] = {}
        self.started = time.monotonic()
        self.binary = ROOT / ".build" / "release" / "tollgate"
        self.metering_na = self._metering_support()
        self.litellm: Managed | None = None
        self.failed = False
        port = settings.port_base
        self.ports = {"canned": port + 1, "paced": port + 2, "sse": port + 3, "floor": port + 4, "litellm": port + 5}

    # -- progress -----------------------------------------------------------------------------

    def say(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        print(f"[{elapsed // 60:2d}:{elapsed % 60:02d}] {text}", flush=True)

    def record(self, scenario: str, target: str, figure: dict) -> None:
        self.raw.setdefault(scenario, {}).setdefault(target, []).append(figure)

    def note(self, scenario: str, target: str, text: str) -> None:
        self.notes.setdefault(scenario, {})[target] = text

    # -- support checks -----------------------------------------------------------------------

    def _metering_support(self) -> str | None:
        """None when this build can meter with a database; otherwise NO_DATABASE."""
        parameters = inspect.signature(Stack.__init__).parameters
        if "database" not in parameters or not hasattr(Stack, "tollgate"):
            return NO_DATABASE
        try:
            usage = subprocess.run([str(self.binary), "help"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return NO_DATABASE
        return None if "migrate" in usage.stdout + usage.stderr else NO_DATABASE

    # -- infrastructure -----------------------------------------------------------------------

    def write_bodies(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.chat_body = self.run_dir / "body-chat.json"
        self.stream_body = self.run_dir / "body-stream.json"
        self.chat_body.write_text(json.dumps(CHAT_BODY))
        self.stream_body.write_text(json.dumps(STREAM_BODY))

    def start_upstream(self) -> None:
        """The canned upstream nginx (and, when capacity runs, the paced SSE server behind it)."""
        if "capacity" in self.settings.scenarios:
            sse = self.processes.spawn("sse-upstream", [sys.executable, str(ROOT / "bench" / "sse_upstream.py"),
                                                        "--port", str(self.ports["sse"])],
                                       self.run_dir / "sse-upstream.log")
            wait_until("paced SSE upstream", lambda: http_get(self.ports["sse"], "/__stats") is not None, 15.0,
                       sse.problem)
        prefix = self.run_dir / "upstream"
        values = {"@CANNED_PORT@": str(self.ports["canned"]), "@PACED_PORT@": str(self.ports["paced"]),
                  "@SSE_PORT@": str(self.ports["sse"])}
        template = ROOT / "bench" / "upstream.conf"
        # The pre-rendered stream has to exist before nginx serves it; start_nginx makes html/.
        self.upstream = start_nginx(self.processes, "upstream-nginx", template, prefix, values,
                                    self.ports["canned"], before_start=self._write_canned_stream,
                                    listens=[self.ports["canned"], self.ports["paced"]])
        self.say(f"canned upstream on :{self.ports['canned']} (JSON, or {self.settings.stream_events} "
                 f"pre-rendered events), paced upstream on :{self.ports['paced']}")

    def _write_canned_stream(self, prefix: Path) -> None:
        (prefix / "html" / "sse.txt").write_bytes(canned_stream(self.settings.stream_events))

    def start_floor(self) -> None:
        values = {"@PORT@": str(self.ports["floor"]), "@CANNED_PORT@": str(self.ports["canned"]),
                  "@PACED_PORT@": str(self.ports["paced"])}
        start_nginx(self.processes, "floor-nginx", ROOT / "bench" / "floor.conf", self.run_dir / "floor", values,
                    self.ports["floor"])
        self.say(f"floor nginx on :{self.ports['floor']}")

    def floor_target(self, paced: bool = False) -> Target:
        path = "/paced/v1" if paced else "/v1"
        return Target("floor", LABELS["floor"], f"http://127.0.0.1:{self.ports['floor']}{path}/chat/completions",
                      f"Bearer {DUMMY_KEY}")

    def upstream_url(self, paced: bool = False) -> str:
        return f"http://127.0.0.1:{self.ports['paced' if paced else 'canned']}/v1"

    def start_tollgate(self, key: str, name: str, port: int, workers: int, paced: bool = False,
                       threads: int | None = None) -> Target:
        """A Tollgate stack as a target: metering off ("off"), on ("on"), or on with quota leases
        ("leased"); `workers` processes of `threads` event loops each (the worker's default, one,
        when None).

        A target that cannot run gets `na` (why) instead of a URL; the benchmark goes on without it.
        """
        target = Target(key, LABELS[key])
        if key in METERED and self.metering_na:
            target.na = self.metering_na
            return target
        env = {"TOLLGATE_GRACE": "2", "TOLLGATE_UPSTREAM_KEY": "sk-bench-canned-upstream"}
        if key == "leased":
            env["TOLLGATE_QUOTA_LEASE"] = str(LEASE_SECONDS)
        options: dict = {"name": name, "http_port": port, "mock_port": None, "workers": workers,
                         "threads": threads, "upstream_url": self.upstream_url(paced), "env": env}
        if key in METERED:
            options.update(database=True, pg_port=port + 100)
        stack = Stack(ROOT, **options)
        self.say(f"starting {name}: {workers} worker(s)" + (f" of {threads} loops" if threads else "") + f" on :{port}"
                 + (" with PostgreSQL" if key in METERED else "")
                 + (f" and {LEASE_SECONDS} s quota leases" if key == "leased" else ""))
        self.stacks.append(stack)
        try:
            stack.start()
            target.auth = f"Bearer {self._issue_key(stack)}" if key in METERED else f"Bearer {DUMMY_KEY}"
        except (StackError, BenchError, OSError) as error:
            self.stacks.remove(stack)
            stack.stop()
            target.na = f"failed to start: {error}"
            self.say(f"{name}: {target.na}")
            return target
        target.stack = stack
        target.url = f"{stack.base_url}/chat/completions"
        return target

    @staticmethod
    def _issue_key(stack: Stack) -> str:
        """Adds the benchmark user (a quota it cannot exhaust) and returns a fresh key for it."""
        added = stack.tollgate("user", "add", "bench", "--quota", "1000000000000000", "--period", "total")
        if added.returncode != 0:
            raise BenchError(f"tollgate user add failed: {(added.stderr or added.stdout).strip()[:200]}")
        issued = stack.tollgate("key", "issue", "bench")
        key = next((line.split()[0] for line in issued.stdout.splitlines() if line.startswith("tg-")), None)
        if issued.returncode != 0 or not key:
            raise BenchError("tollgate key issue printed no tg- key")
        return key

    def stop_stack(self, target: Target) -> None:
        if target.stack:
            target.stack.stop()
            if target.stack in self.stacks:
                self.stacks.remove(target.stack)
            target.stack = None

    def start_litellm(self) -> Target:
        target = Target("litellm", LABELS["litellm"])
        try:
            self.litellm, master_key = start_litellm(self.processes, self.run_dir, self.ports["litellm"],
                                                     self.upstream_url(), self.say)
        except (BenchError, OSError, subprocess.CalledProcessError) as error:
            target.na = f"n/a (LiteLLM did not start: {error})"
            self.say(target.na)
            return target
        target.url = f"http://127.0.0.1:{self.ports['litellm']}/v1/chat/completions"
        target.auth = f"Bearer {master_key}"
        self.processes.pause(self.litellm)
        return target

    def stop_all(self) -> None:
        for stack in reversed(self.stacks):
            try:
                stack.stop()
            except (StackError, OSError) as error:
                print(f"bench: stopping {stack.name}: {error}", file=sys.stderr)
        self.stacks.clear()
        self.processes.stop_all()

    # -- checks -------------------------------------------------------------------------------

    def usable(self, scenario: str, targets: list[Target], stream: bool) -> list[Target]:
        """Targets that answer one correct request; the others get a note and are skipped."""
        ready = []
        for target in targets:
            if target.na:
                self.note(scenario, target.key, target.na)
                continue
            with self.awake(target):
                problem = check_chat(target.url or "", target.auth, stream, self.settings.stream_events)
            if problem:
                self.note(scenario, target.key, f"failed: {problem}")
                self.say(f"{scenario}: {target.label} answered wrongly ({problem}); skipped")
                continue
            ready.append(target)
        return ready

    def ledger_rows(self, target: Target) -> int | None:
        if target.key not in METERED or target.stack is None:
            return None
        rows = target.stack.psql("SELECT count(*) FROM tollgate.ledger")
        return int(rows[0][0])

    # -- scenarios ----------------------------------------------------------------------------

    def wrk(self, target: Target, connections: int, duration: float, scenario: str | None = None) -> WrkResult | None:
        """One wrk run of non-stream chat against `target`; None (and a note) when wrk failed."""
        try:
            with self.awake(target):
                return run_wrk(target.url or "", self.chat_body, connections, duration, auth=target.auth,
                               threads=1 if connections == 1 else 2)
        except BenchError as error:
            if scenario:
                self.note(scenario, target.key, f"failed: {error}")
            self.say(f"{target.label}: {error}")
            return None

    @contextmanager
    def awake(self, target: Target) -> Iterator[None]:
        """LiteLLM runs only for its own turns: between them its process group is stopped, since
        left running it went on working through the requests a run left behind (and respawning a
        worker) while the other targets were measured."""
        if target.key != "litellm" or self.litellm is None:
            yield
            return
        self.processes.resume(self.litellm)
        try:
            yield
        finally:
            self.processes.pause(self.litellm)

    def run_wrk_scenario(self, scenario: str, targets: list[Target], connections: int) -> None:
        """Interleaved wrk rounds over `targets` (non-stream chat)."""
        targets = self.usable(scenario, targets, stream=False)
        for target in targets:
            self.wrk(target, connections, self.settings.warmup)
        ledger_before = {t.key: self.ledger_rows(t) for t in targets}
        for round_index in range(self.settings.rounds):
            for target in targets:
                result = self.wrk(target, connections, self.settings.duration, scenario=scenario)
                if result is None:
                    continue
                self.record(scenario, target.key, result.as_dict())
                self.say(f"{scenario} round {round_index + 1}/{self.settings.rounds} {target.label}: "
                         f"{result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
                         + (f", {result.errors} errors" if result.errors else ""))
        for target in targets:
            before = ledger_before.get(target.key)
            if before is not None:
                written = (self.ledger_rows(target) or 0) - before
                self.extra.setdefault(scenario, {}).setdefault("ledger_rows_written", {})[target.key] = written
                if written <= 0:
                    self.note(scenario, target.key, "failed: no ledger row was written")

    def run_stream(self, targets: list[Target]) -> None:
        targets = self.usable("stream", targets, stream=True)
        for round_index in range(self.settings.rounds):
            for target in targets:
                try:
                    figure = stream_probe(target, self.stream_body, self.settings.stream_requests,
                                          warmup=10 if round_index == 0 else 3)
                except (BenchError, subprocess.SubprocessError, ValueError) as error:
                    self.note("stream", target.key, f"failed: {error}")
                    continue
                self.record("stream", target.key, figure)
                self.say(f"stream round {round_index + 1}/{self.settings.rounds} {target.label}: TTFE p50 "
                         f"{figure['ttfe_p50_ms']:.2f} ms, TTLE p50 {figure['ttle_p50_ms']:.2f} ms, "
                         f"{figure['rps']:.0f} streams/s" + (f", {figure['failures']} failures"
                                                              if figure["failures"] else ""))

    def run_scaling(self, floor: Target, main: dict[str, Target]) -> None:
        """Requests/s at 64 connections with 1, 2 and 4 worker processes of one event loop each."""
        base = self.settings.port_base + 20
        targets: list[tuple[str, int, Target]] = []
        for workers in (1, 2, 4):
            for key in ("off", "on"):
                port = base + (0 if key == "off" else 2) + 4 * (workers // 2)
                target = replace(self.start_tollgate(key, f"bench-{key}-w{workers}", port, workers),
                                 key=f"{key}@{workers}")
                targets.append((workers, target))
        checked = self.usable("scaling", [floor] + [t for _, t in targets], stream=False)
        for target in checked:
            self.wrk(target, 64, self.settings.warmup)
        for round_index in range(self.settings.rounds):
            for workers, target in [(0, floor)] + targets:
                if target not in checked:
                    continue
                result = self.wrk(target, 64, self.settings.duration, scenario="scaling")
                if result is None:
                    continue
                self.record("scaling", target.key, {**result.as_dict(), "workers": workers})
                self.say(f"scaling round {round_index + 1}/{self.settings.rounds} {target.label}"
                         + (f", {workers} worker(s)" if workers else "") + f": {result.rps:,.0f} req/s")
        for _, target in targets:
            self.stop_stack(target)

    def run_capacity(self) -> None:
        """For each target in turn: step up the number of held streams until a step fails."""
        steps = self.settings.steps
        self.say(f"capacity: steps {', '.join(map(str, steps))} streams, {self.settings.hold:g} s hold each")
        for key in ("floor", "off", "on"):
            if key == "floor":
                target = self.floor_target(paced=True)
            else:
                target = self.start_tollgate(key, f"bench-{key}-capacity", self.settings.port_base + 30, 2,
                                             paced=True)
            if not self.usable("capacity", [target], stream=False):
                self.stop_stack(target)
                continue
            try:
                for streams in steps:
                    figure = self.capacity_step(target, streams)
                    self.record("capacity", key, figure)
                    if not figure["held"]:
                        break
            finally:
                self.stop_stack(target)

    def capacity_step(self, target: Target, streams: int) -> dict:
        self.say(f"capacity {target.label}: opening {streams} streams")
        worker_pids = target.stack.worker_pids() if target.stack else []
        command = [sys.executable, str(ROOT / "bench" / "streams.py"), "hold", "--url", target.url or "",
                   "--body", str(self.stream_body), "--streams", str(streams), "--hold", str(self.settings.hold)]
        env = {**os.environ, "BENCH_AUTH": target.auth or ""}
        client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        relay = threading.Thread(target=self._relay, args=(client, target.label), daemon=True)
        relay.start()
        probe: dict = {}
        rss_peak = 0
        assert client.stdout is not None
        for line in client.stdout:
            if line.strip() == "HOLDING":
                self.say(f"capacity {target.label}: holding {streams} streams for {self.settings.hold:g} s")
                prober = threading.Thread(target=self._capacity_probe, args=(target, probe), daemon=True)
                prober.start()
                end = time.monotonic() + self.settings.hold - 0.5
                while time.monotonic() < end:
                    rss_peak = max(rss_peak, rss_kib(worker_pids))
                    time.sleep(0.5)
                prober.join()
            elif line.startswith("{"):
                result = json.loads(line)
                break
        else:
            result = {"failures": streams, "failure_kinds": {"client": 1}, "alive": 0, "stalled": 0}
        client.wait()
        relay.join(timeout=5)
        self._wait_streams_gone()
        probe_ok = probe.get("errors", 1) == 0 and probe.get("requests", 0) > 0
        held = result.get("failures", 1) == 0 and result.get("stalled", 1) == 0 and result.get("alive") == streams
        figure = {"streams": streams, "held": held, "client": result, "probe": probe,
                  "worker_rss_kib": rss_peak if worker_pids else None, "probe_ok": probe_ok}
        self.say(f"capacity {target.label}: {streams} streams "
                 + ("held" if held else f"NOT held ({result.get('failures')} failures, "
                                        f"{result.get('stalled')} stalled: {result.get('failure_kinds')})")
                 + (f", worker RSS {rss_peak / 1024:.0f} MiB" if worker_pids else "")
                 + (f", non-stream p99 {probe['p99_ms']:.1f} ms" if probe.get("requests") else ""))
        return figure

    def _relay(self, client: subprocess.Popen, label: str) -> None:
        assert client.stderr is not None
        for line in client.stderr:
            if line.strip():
                self.say(f"capacity {label}:{line.rstrip()}")

    def _capacity_probe(self, target: Target, into: dict) -> None:
        """Paced non-stream requests while the streams are held: 4 connections, one request each 50 ms."""
        try:
            result = run_wrk(target.url or "", self.chat_body, 4, max(1.0, self.settings.hold - 2), auth=target.auth,
                             delay_ms=50, threads=1)
            into.update(result.as_dict())
        except BenchError as error:
            into.update({"errors": 1, "failure": str(error)})

    def _wait_streams_gone(self) -> None:
        def idle() -> bool:
            answer = http_get(self.ports["sse"], "/__stats")
            return answer is not None and json.loads(answer[1]).get("open") == 0

        try:
            wait_until("streams of the last step to close", idle, 60.0)
        except BenchError as error:
            self.say(f"capacity: {error}")

    def run_growth(self) -> None:
        reason = growth_support(ROOT)
        if reason:
            self.note("growth", "store", f"n/a ({reason})")
            self.say(f"growth: n/a ({reason})")
            return
        cluster = GrowthCluster(ROOT, self.run_dir, self.settings.port_base + 40)
        self.say("growth: starting a private PostgreSQL")
        cluster.start()
        try:
            databases = self._fill_growth(cluster)
            pairs = self.settings.growth_pairs
            for round_index in range(self.settings.rounds):
                for rows, database in databases:
                    timings = cluster.measure(database, pairs, warmup=max(20, pairs // 10))
                    figure = {"rows": rows, "admit_ms": summary_ms(timings.admit_ms),
                              "settle_ms": summary_ms(timings.settle_ms)}
                    self.record("growth", str(rows), figure)
                    self.say(f"growth round {round_index + 1}/{self.settings.rounds} ledger {rows:,} rows: admit p50 "
                             f"{figure['admit_ms']['p50']:.3f} ms, settle p50 {figure['settle_ms']['p50']:.3f} ms")
        finally:
            cluster.stop()

    def _fill_growth(self, cluster: GrowthCluster) -> list[tuple[int, str]]:
        cluster.prepare_template()
        databases: list[tuple[int, str]] = []
        previous_rows, previous_db = 0, None
        for rows in self.settings.growth_sizes:
            database = f"ledger_{rows}"
            cluster.create(database, previous_db or "growth_template")
            if rows > previous_rows:
                self.say(f"growth: filling {database} with {rows - previous_rows:,} more ledger rows")
                started = time.monotonic()
                cluster.fill(database, rows - previous_rows)
                self.say(f"growth: {database} filled in {time.monotonic() - started:.0f} s")
            found = cluster.ledger_rows(database)
            if found != rows:
                raise BenchError(f"growth: {database} holds {found} ledger rows, expected {rows}")
            databases.append((rows, database))
            previous_rows, previous_db = rows, database
        # Write the load's dirty pages out now rather than in the middle of a measurement.
        cluster.psql("postgres", "CHECKPOINT")
        return databases

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> None:
        scenarios = self.settings.scenarios
        ended = self.processes.stop_leftovers()
        for run_dir in sorted((ROOT / ".run").glob("bench-*")):
            ended += [f"{run_dir.name}/{name}" for name in stop_stack_leftovers(run_dir)]
        if ended:
            self.say(f"ended leftovers of an earlier run: {', '.join(ended)}")
        self.write_bodies()
        needs_http = any(s != "growth" for s in scenarios)
        if needs_http:
            if not self.binary.is_file():
                raise BenchError(f"tollgate binary missing: {self.binary} (make build)")
            self.start_upstream()
            self.start_floor()
        self.say("metering on: " + (self.metering_na or "with PostgreSQL"))

        main_group = [s for s in ("nonstream64", "nonstream1", "stream", "scaling") if s in scenarios]
        if main_group:
            self.guarded(main_group, lambda: self.run_main_group(main_group))
        if "capacity" in scenarios:
            self.guarded(["capacity"], self.run_capacity)
        if "growth" in scenarios:
            self.guarded(["growth"], self.run_growth)

    def guarded(self, scenarios: list[str], step: Callable[[], None]) -> None:
        """Runs `step`; a failure is noted against its scenarios and the run goes on with the next."""
        try:
            step()
        except (BenchError, StackError, OSError, subprocess.SubprocessError) as error:
            self.failed = True
            self.say(f"{', '.join(scenarios)} failed: {error}")
            for scenario in scenarios:
                self.note(scenario, "run", f"failed: {error}")

    def run_main_group(self, scenarios: list[str]) -> None:
        floor = self.floor_target()
        port = self.settings.port_base + 10
        # One worker process with an event loop per core: its loops share one metering queue, so
        # each round trip to PostgreSQL carries the admissions of both (see the README).
        loops = os.cpu_count() or 2
        main = {"off": self.start_tollgate("off", "bench-off", port, 1, threads=loops),
                "on": self.start_tollgate("on", "bench-on", port + 1, 1, threads=loops),
                "leased": self.start_tollgate("leased", "bench-leased", port + 2, 1, threads=loops)}
        peers = [self.start_litellm()] if "litellm" in self.settings.peers else []
        tollgates = [main["off"], main["on"], main["leased"]]
        if "nonstream64" in scenarios:
            self.run_wrk_scenario("nonstream64", [floor] + tollgates + peers, 64)
        if "nonstream1" in scenarios:
            self.run_wrk_scenario("nonstream1", [floor] + tollgates + peers, 1)
        if "stream" in scenarios:
            self.run_stream([floor] + tollgates)
            for peer in peers:
                self.note("stream", peer.key, "not measured (its upstream client does not send "
                                              "Accept: text/event-stream, which the canned upstream streams on)")
        if peers and self.litellm:
            self.processes.stop(self.litellm)
            self.litellm = None
        if "scaling" in scenarios:
            self.run_scaling(floor, main)
        for target in main.values():
            self.stop_stack(target)


# --- clients -------------------------------------------------------------------------------


def canned_stream(events: int) -> bytes:
    """The pre-rendered chat stream the canned upstream sends: role chunk, `events` content
    chunks, finish chunk, usage chunk and [DONE], as openai-wire.md describes with include_usage."""

    def chunk(delta: dict, finish: str | None = None, **extra: object) -> bytes:
        body = {"id": "chatcmpl-canned", "object": "chat.completion.chunk", "created": 1770000000,
                "model": "gpt-4o-mini", "service_tier": "default", "system_fingerprint": "fp_canned",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], "usage": None}
        body.update(extra)
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    parts = [chunk({"role": "assistant", "content": "", "refusal": None})]
    parts += [chunk({"content": f"tok{i} "}) for i in range(events)]
    parts.append(chunk({}, "stop"))
    usage = {"prompt_tokens": 11, "completion_tokens": events, "total_tokens": 11 + events,
             "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                           "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
    parts.append(chunk({}, None, choices=[], usage=usage))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def check_chat(url: str, auth: str | None, stream: bool, events: int) -> str | None:
    """None when `url` answers one chat request correctly; otherwise what was wrong."""
    parts = urlsplit(url)
    body = json.dumps(STREAM_BODY if stream else CHAT_BODY)
    headers = {"Content-Type": "application/json", "Authorization": auth or ""}
    if stream:
        headers["Accept"] = "text/event-stream"
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)
    try:
        connection.request("POST", parts.path, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as error:
        return f"{type(error).__name__}: {error}"
    finally:
        connection.close()
    if response.status != 200:
        return f"HTTP {response.status}: {text[:160]}"
    if not stream:
        try:
            content = json.loads(text)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return f"not a chat completion: {text[:160]}"
        return None if content else "empty completion"
    data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    if not data or data[-1] != "[DONE]":
        return "stream does not end with data: [DONE]"
    contents = 0
    for item in data[:-1]:
        try:
            choices = json.loads(item).get("choices") or []
        except ValueError:
            return f"event is not JSON: {item[:80]}"
        contents += sum(1 for c in choices if (c.get("delta") or {}).get("content"))
    return None if contents == events else f"{contents} content events, expected {events}"


def stream_probe(target: Target, body: Path, requests: int, warmup: int) -> dict:
    command = [sys.executable, str(ROOT / "bench" / "streams.py"), "probe", "--url", target.url or "",
               "--body", str(body), "--requests", str(requests), "--warmup", str(warmup)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "BENCH_AUTH": target.auth or ""})
    if done.returncode != 0:
        raise BenchError(f"stream probe failed: {done.stderr.strip()[:300]}")
    result = json.loads(done.stdout)
    ttfe, ttle = result["ttfe_ms"], result["ttle_ms"]
    return {"requests": len(ttle), "failures": result["failures"], "failure": result["failure"],
            "rps": len(ttle) / result["seconds"] if result["seconds"] else 0.0,
            "ttfe_p50_ms": percentile(ttfe, 0.5), "ttfe_p99_ms": percentile(ttfe, 0.99),
            "ttle_p50_ms": percentile(ttle, 0.5), "ttle_p99_ms": percentile(ttle, 0.99),
            "events_median": median(result["events"])}


def summary_ms(values: list[float]) -> dict:
    return {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99), "count": len(values)}


# --- command line --------------------------------------------------------------------------


def parse_settings(argv: list[str]) -> Settings:
    parser = argparse.ArgumentParser(
        description="Benchmarks Tollgate side by side with nginx alone (and LiteLLM) on loopback.",
        epilog="scenarios: " + "; ".join(f"{k}: {v}" for k, v in SCENARIO_HELP.items()))
    parser.add_argument("--quick", action="store_true", help="one round, short durations: a smoke run (< 2 min)")
    parser.add_argument("--rounds", type=int, help="rounds of every scenario (3; --quick 1)")
    parser.add_argument("--duration", type=float, help="seconds of each wrk run (10; --quick 2)")
    parser.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    parser.add_argument("--peers", default="", help="comma-separated peers to add: litellm")
    parser.add_argument("--hold", type=float, help="seconds each capacity step is held (20; --quick 3)")
    parser.add_argument("--port-base", type=int, default=28100, help="first of the loopback ports used (28100)")
    args = parser.parse_args(argv)

    scenarios = list(SCENARIOS)
    if args.only:
        scenarios = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in scenarios if s not in SCENARIOS]
        if unknown:
            parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if any(p != "litellm" for p in peers):
        parser.error("--peers knows only litellm")
    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    duration = args.duration or (2.0 if quick else 10.0)
    if rounds < 1 or duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    return Settings(rounds=rounds, duration=duration, scenarios=scenarios, peers=peers, quick=quick,
                    port_base=args.port_base, hold=args.hold or (3.0 if quick else 20.0),
                    steps=[250, 500] if quick else [1000, 2500, 5000, 10000], stream_events=100,
                    stream_requests=40 if quick else 200,
                    growth_sizes=[0, 10_000, 100_000] if quick else [0, 1_000_000, 10_000_000],
                    growth_pairs=200 if quick else 1000)


def machine() -> dict:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    binary = ROOT / ".build" / "release" / "tollgate"
    built = time.strftime("%Y-%m-%d %H:%M", time.localtime(binary.stat().st_mtime)) if binary.is_file() else None
    return {"cores": os.cpu_count(), "cpu": model, "kernel": platform.release(), "python": platform.python_version(),
            "commit": commit, "binary_built": built, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def take_lock(run_dir: Path) -> object:
    """Holds .run/bench/lock for the whole run: a second benchmark at the same time would share
    ports and pid files, and take the first one's processes for leftovers of a crashed run."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / "lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        raise BenchError(f"another benchmark is running (pid {handle.read().strip() or '?'}); wait for it") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def main(argv: list[str]) -> int:
    settings = parse_settings(argv)
    bench = Bench(settings)
    try:
        lock = take_lock(bench.run_dir)
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    bench.say(f"make bench: {', '.join(settings.scenarios)}; {settings.rounds} round(s), {settings.duration:g} s "
              f"runs{', peers ' + ','.join(settings.peers) if settings.peers else ''}")
    status = 0
    try:
        bench.run()
    except KeyboardInterrupt:
        bench.say("interrupted: stopping everything")
        status = 130
    except (BenchError, StackError) as error:
        bench.say(f"bench: {error}")
        status = 1
    finally:
        bench.stop_all()
        bench.say("stopped everything the benchmark started")

    about = machine()
    report, summary = build_report(settings, bench.raw, bench.notes, bench.extra, about, bench.metering_na)
    out = bench.run_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(report)
    (out / "results.json").write_text(json.dumps(
        {"settings": settings.__dict__, "machine": about, "raw": bench.raw, "notes": bench.notes,
         "extra": bench.extra, "summary": summary}, indent=2, default=str))
    if status == 0 and bench.failed:
        status = 1
    print()
    print(report)
    print(f"written: {(out / 'results.md').relative_to(ROOT)}, {(out / 'results.json').relative_to(ROOT)}")
    lock.close()
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
