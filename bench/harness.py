"""Plumbing of scripts/bench.py: the processes it starts, the nginx instances, wrk, checks.

Every process is started in a session of its own and recorded in a pid file under
.run/bench/pids/ ("PID START_TIME"), so `Processes.stop_all` ends it with its whole group and
a later run ends what a crashed one left behind. Readiness is a condition polled against a
deadline, never a fixed sleep. Standard library only.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from stack import port_free, tail  # noqa: F401 (scripts/ is on the path: bench.py lives there)

BENCH_DIR = Path(__file__).resolve().parent
PLACEHOLDER = re.compile(r"@[A-Z_]+@")
STOP_DEADLINE_S = 10.0
KILL_DEADLINE_S = 5.0


class BenchError(RuntimeError):
    """Something the benchmark needs could not be set up; one line meant for a person."""


# --- /proc ---------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def is_running(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[0] not in ("Z", "X") and fields[2] == str(pgid):
                members.append(int(entry.name))
    return members


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user and system) used so far by the live processes of group `pgid`, in seconds."""
    ticks = 0
    for pid in group_members(pgid):
        fields = _stat_fields(pid)
        if fields and len(fields) > 12:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_kib(pids: list[int]) -> int:
    """Sum of VmRSS of `pids`, KiB (processes already gone count 0)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def children(pid: int) -> list[int]:
    """Live direct children of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[0] not in ("Z", "X") and fields[1] == str(pid):
                found.append(int(entry.name))
    return found


def wait_until(what: str, check: Callable[[], bool], deadline_s: float,
               problem: Callable[[], str | None] = lambda: None) -> None:
    """Polls `check` until it holds; raises at the deadline or as soon as `problem` says why."""
    end = time.monotonic() + deadline_s
    delay = 0.01
    while not check():
        trouble = problem()
        if trouble:
            raise BenchError(trouble)
        if time.monotonic() >= end:
            raise BenchError(f"{what}: not ready after {deadline_s:g} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes] | None:
    """(status, body) of GET 127.0.0.1:port/path, or None when nothing answers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


# --- processes -----------------------------------------------------------------------------


@dataclass
class Managed:
    """One process the benchmark started."""

    name: str
    popen: subprocess.Popen
    log: Path
    pid_file: Path
    stop_signal: signal.Signals = signal.SIGTERM

    def problem(self) -> str | None:
        code = self.popen.poll()
        return None if code is None else f"{self.name} exited with status {code}; log {self.log}: {tail(self.log)}"


@dataclass
class Processes:
    """The processes of one benchmark run, ended in reverse order of start by `stop_all`."""

    run_dir: Path
    started: list[Managed] = field(default_factory=list)

    @property
    def pid_dir(self) -> Path:
        return self.run_dir / "pids"

    def spawn(self, name: str, command: list[str], log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None, stop_signal: signal.Signals = signal.SIGTERM) -> Managed:
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as handle:
            popen = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                     env=env, cwd=cwd, start_new_session=True)
        pid_file = self.pid_dir / f"{name}.pid"
        pid_file.write_text(f"{popen.pid} {start_time(popen.pid) or ''}\n")
        managed = Managed(name, popen, log, pid_file, stop_signal)
        self.started.append(managed)
        return managed

    def pause(self, managed: Managed, quiet_within: float = 10.0) -> None:
        """Stops the process's whole group (SIGSTOP), once it has been quiet (under a tenth of a core)
        for half a second, or after `quiet_within` seconds: whatever it still does in the background
        must not take CPU from the targets measured meanwhile."""
        end = time.monotonic() + quiet_within
        before = group_cpu_seconds(managed.popen.pid)
        while time.monotonic() < end:
            time.sleep(0.5)
            now = group_cpu_seconds(managed.popen.pid)
            if now - before < 0.05:
                break
            before = now
        _signal_group(managed.popen.pid, signal.SIGSTOP)

    def resume(self, managed: Managed) -> None:
        """Continues a group stopped by `pause`."""
        _signal_group(managed.popen.pid, signal.SIGCONT)

    def stop(self, managed: Managed) -> None:
        """Signals the process, waits for it, then kills whatever is left of its group."""
        pid = managed.popen.pid
        self.resume(managed)
        if managed.popen.poll() is None:
            try:
                os.kill(pid, managed.stop_signal)
            except ProcessLookupError:
                pass
            try:
                managed.popen.wait(STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(pid)
        try:
            managed.popen.wait(KILL_DEADLINE_S)
        except subprocess.TimeoutExpired:
            pass
        managed.pid_file.unlink(missing_ok=True)
        if managed in self.started:
            self.started.remove(managed)

    def stop_all(self) -> None:
        for managed in reversed(list(self.started)):
            self.stop(managed)

    def stop_leftovers(self) -> list[str]:
        """Ends the process groups a previous, crashed run recorded; returns their names."""
        ended = []
        for pid_file in sorted(self.pid_dir.glob("*.pid")) if self.pid_dir.is_dir() else []:
            try:
                pid_text, _, started = pid_file.read_text().strip().partition(" ")
                pid = int(pid_text)
            except (OSError, ValueError):
                pid_file.unlink(missing_ok=True)
                continue
            if is_running(pid) and start_time(pid) == started:
                _kill_group(pid)
                ended.append(pid_file.stem)
            pid_file.unlink(missing_ok=True)
        return ended


def _signal_group(pgid: int, which: signal.Signals) -> None:
    try:
        os.killpg(pgid, which)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(pgid: int) -> None:
    members = group_members(pgid)
    for pid in members:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    end = time.monotonic() + KILL_DEADLINE_S
    while any(is_running(pid) for pid in members) and time.monotonic() < end:
        time.sleep(0.02)


# --- nginx ---------------------------------------------------------------------------------


def find_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BenchError("nginx not found: install it with scripts/deps.sh")


def start_nginx(processes: Processes, name: str, template: Path, prefix: Path, values: dict[str, str],
                health_port: int, before_start: Callable[[Path], None] | None = None,
                listens: list[int] | None = None) -> Managed:
    """Renders `template` into `prefix`/nginx.conf and runs nginx on it until /health answers.

    `before_start(prefix)` may put files into the fresh prefix (html/) first. Refuses ports it
    will listen on (`listens`, by default the health port) that something listens on already:
    the configurations listen with `reuseport`, so a leftover nginx would otherwise share the
    port silently and take part of the traffic.
    """
    taken = [port for port in sorted(set(listens or [health_port])) if not port_free(port)]
    if taken:
        raise BenchError(f"nginx {name}: port(s) {', '.join(map(str, taken))} already in use on 127.0.0.1 "
                         "(a leftover of an earlier run?)")
    shutil.rmtree(prefix, ignore_errors=True)
    for sub in ("logs", "temp", "html"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    text = template.read_text()
    values = {"@PREFIX@": str(prefix), "@USER@": pwd.getpwuid(os.geteuid()).pw_name, **values}
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    left = PLACEHOLDER.search(text)
    if left:
        raise BenchError(f"{template}: unknown placeholder {left.group(0)}")
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    if before_start:
        before_start(prefix)
    command = [find_nginx(), "-p", f"{prefix}/", "-c", str(conf), "-e", str(prefix / "logs" / "error.log"),
               "-g", "daemon off;"]
    managed = processes.spawn(name, command, prefix / "logs" / "nginx.out", cwd=prefix,
                              stop_signal=signal.SIGQUIT)

    def problem() -> str | None:
        exited = managed.problem()
        return f"{exited} | error.log: {tail(prefix / 'logs' / 'error.log')}" if exited else None

    wait_until(f"nginx {name} on port {health_port}", lambda: (http_get(health_port, "/health") or (0,))[0] == 200,
               15.0, problem)
    return managed


# --- wrk -----------------------------------------------------------------------------------


@dataclass
class WrkResult:
    """One wrk run: throughput, latency percentiles (ms) and failures."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    raw: dict

    def as_dict(self) -> dict:
        return {"rps": round(self.rps, 1), "p50_ms": round(self.p50_ms, 3), "p99_ms": round(self.p99_ms, 3),
                "requests": self.requests, "errors": self.errors, "wrk": self.raw}


def run_wrk(url: str, body: Path, connections: int, duration: float, auth: str | None = None,
            accept: str | None = None, delay_ms: int = 0, threads: int | None = None) -> WrkResult:
    """Runs wrk with bench/wrk.lua against `url`; raises BenchError when wrk fails."""
    wrk = shutil.which("wrk")
    if not wrk:
        raise BenchError("wrk not found: install it with scripts/deps.sh")
    threads = threads or min(2, connections)
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_AUTH": auth or "", "BENCH_ACCEPT": accept or "",
           "BENCH_DELAY_MS": str(delay_ms)}
    command = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
               "--timeout", "10s", "--latency", "-s", str(BENCH_DIR / "wrk.lua"), url]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=duration + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk against {url} did not finish") from None
    line = next((l for l in done.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed (status {done.returncode}): {(done.stderr or done.stdout).strip()[:300]}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw["errors"].values())
    return WrkResult(rps=raw["requests"] / seconds if seconds else 0.0, p50_ms=raw["latency_us"]["p50"] / 1000,
                     p99_ms=raw["latency_us"]["p99"] / 1000, requests=raw["requests"], errors=errors, raw=raw)


# --- numbers -------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of `values` (fraction in 0..1); nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[rank]


def median(values: list[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")
