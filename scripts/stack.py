#!/usr/bin/env python3
"""Runs a local Tollgate stack: mock upstream -> `tollgate serve` -> nginx.

Imported by the end-to-end tests (`Stack`) and run by `make run`:

    python3 scripts/stack.py run [--port 8080] [--mock-port 8090]
    python3 scripts/stack.py stop [--name NAME | --all]

Every process is started in a session of its own, so a Ctrl-C in the terminal reaches only
this script, which then stops the stack in order: the workers first (they finish in-flight
requests within their grace), then nginx, then the mock. Readiness is always a condition
polled against a deadline, never a fixed sleep. Standard library only.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import http.client
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Callable

MOCK_PLATFORM_KEY = "sk-platform-mock-0000"
"""Dummy platform key given to the workers when they talk to the mock upstream."""

SOCKET_TEMPLATE_PATH = "unix:/run/tollgate/tollgate.sock"
BASE_LOCATION_TEMPLATE = "location /v1/ {"
PLACEHOLDER = re.compile(r"@[A-Z_]+@")
BASE_PATH_SHAPE = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")

# sun_path holds 108 bytes; stay clearly below it.
MAX_SOCKET_PATH = 100

START_DEADLINE_S = 15.0
PORT_FREE_DEADLINE_S = 5.0
NGINX_QUIT_DEADLINE_S = 10.0
KILL_DEADLINE_S = 5.0
DEFAULT_GRACE_S = 30.0

PROCESSES = ("tollgate", "nginx", "mock")
"""Pid-file names, also the stop order."""


class StackError(RuntimeError):
    """A stack could not start or stop; the message is one line meant for a person."""


# --- /proc helpers -------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _is_running(pid: int) -> bool:
    """True while the process exists and is not a zombie.

    Never reaps: a child's exit status belongs to its Popen (tests read the supervisor's).
    """
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot: tells a pid from a reused one."""
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def _processes() -> list[tuple[int, list[str]]]:
    """Every live process as (pid, stat fields)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[0] not in ("Z", "X"):
                found.append((int(entry.name), fields))
    return found


def _belongs(pid: int, cwd: Path, marker: str) -> bool:
    """True when the process runs in `cwd` and its command line contains `marker`."""
    try:
        here = Path(os.readlink(f"/proc/{pid}/cwd"))
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return here == cwd and marker.encode() in command


def _children(ppid: int) -> list[int]:
    return sorted(pid for pid, fields in _processes() if fields[1] == str(ppid))


def _group(pgid: int) -> list[int]:
    return sorted(pid for pid, fields in _processes() if fields[2] == str(pgid))


def _wait_gone(pids: list[int], deadline_s: float, force: Callable[[], bool] = lambda: False) -> bool:
    end = time.monotonic() + deadline_s
    while any(_is_running(pid) for pid in pids):
        if time.monotonic() >= end or force():
            return False
        time.sleep(0.02)
    return True


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _end_group(pgid: int, first: signal.Signals, deadline_s: float,
               force: Callable[[], bool] = lambda: False) -> bool:
    """Sends `first` to the group leader, then SIGKILL to the whole group after the deadline.

    Returns True when the leader left within the deadline. The group is the process and
    everything it forked (each stack process leads a session of its own).
    """
    _signal_all([pgid], first)
    if _wait_gone([pgid], deadline_s, force):
        leftovers = _group(pgid)
        _signal_all(leftovers, signal.SIGKILL)
        _wait_gone(leftovers, KILL_DEADLINE_S)
        return True
    members = _group(pgid) or [pgid]
    _signal_all(members, signal.SIGKILL)
    _wait_gone(members, KILL_DEADLINE_S)
    return False


# --- readiness -----------------------------------------------------------------------------


def _wait_until(what: str, check: Callable[[], bool], problem: Callable[[], str | None],
                deadline_s: float = START_DEADLINE_S, log: Path | None = None) -> None:
    """Polls `check` until it holds; raises as soon as `problem` reports one, or at the deadline."""
    end = time.monotonic() + deadline_s
    delay = 0.005
    while not check():
        trouble = problem()
        if trouble:
            raise StackError(trouble)
        if time.monotonic() >= end:
            detail = f"; log {log}: {_tail(log)}" if log else ""
            raise StackError(f"{what} not ready after {deadline_s:g} s{detail}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _http_ok(port: int, path: str) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _unix_listening(path: Path) -> bool:
    """True when a socket is listening on `path`, read from /proc/net/unix.

    Looking instead of connecting keeps the workers from seeing a connection without a
    FastCGI request.
    """
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return path.is_socket()
    for line in lines:
        parts = line.split()
        # Flags 00010000 is __SO_ACCEPTCON: the socket is listening.
        if len(parts) >= 8 and parts[7] == str(path) and int(parts[3], 16) & 0x10000:
            return True
    return False


def _port_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port (TIME_WAIT leftovers do not count)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _find_nginx() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise StackError("nginx not found: install it with scripts/deps.sh")


# --- the stack -----------------------------------------------------------------------------


class _Process:
    """One started process: its Popen, its open log file and its pid file."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path, pid_file: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log
        self.pid_file = pid_file

    def problem(self) -> str | None:
        """A one-line complaint with the log's tail if the process already exited."""
        code = self.popen.poll()
        if code is None:
            return None
        return f"{self.name} exited with status {code} during start; log {self.log}: {_tail(self.log)}"


class Stack:
    """A mock upstream (optional), `tollgate serve` and nginx, wired together.

    Files live in root/.run/<name>: tollgate.log, mock.log, nginx/ (rendered config,
    logs/, temp/) and one pid file per process, used to clean up after a run that died.
    """

    def __init__(self, root: Path, name: str = "test", http_port: int = 18080,
                 mock_port: int | None = 18090, workers: int | None = 2, threads: int | None = 64,
                 upstream_url: str | None = None, base_path: str = "/v1",
                 env: dict[str, str] | None = None) -> None:
        self.root = Path(root).resolve()
        self.name = name
        self.http_port = http_port
        self.workers = workers
        self.threads = threads
        self.base_path = _checked_base_path(base_path)
        self.env = dict(env or {})
        self.run_dir = self.root / ".run" / name
        self.nginx_dir = self.run_dir / "nginx"
        self.binary = self.root / ".build" / "release" / "tollgate"
        self.socket_path = _socket_path(self.run_dir)
        self.base_url = f"http://127.0.0.1:{http_port}{self.base_path}"

        if upstream_url is None and mock_port is None:
            raise StackError("Stack needs upstream_url or mock_port")
        self.mock_port = None if upstream_url else mock_port
        self.mock_url = f"http://127.0.0.1:{mock_port}" if self.mock_port else None
        self.upstream_url = upstream_url or f"{self.mock_url}/v1"

        self.serve_returncode: int | None = None
        self._processes: dict[str, _Process] = {}
        self._logs: list[IO[bytes]] = []
        self._force = threading.Event()

    # -- public API ---------------------------------------------------------------------------

    def start(self) -> None:
        """Starts mock (if any), `tollgate serve`, then nginx; each is ready when this returns."""
        if not self.binary.is_file():
            raise StackError(f"tollgate binary missing: {self.binary} (build it: swift build -c release)")
        nginx = _find_nginx()
        stop_leftovers(self.run_dir)
        self._prepare_dirs()
        atexit.register(self.stop)
        try:
            if self.mock_port:
                self._start_mock()
            self._start_serve()
            self._start_nginx(nginx)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stops serve (SIGTERM, waits its grace), nginx (SIGQUIT), then the mock. Idempotent."""
        serve = self._processes.pop("tollgate", None)
        if serve:
            self._stop_serve(serve)
        nginx = self._processes.pop("nginx", None)
        if nginx:
            self._stop_one(nginx, signal.SIGQUIT, NGINX_QUIT_DEADLINE_S)
        mock = self._processes.pop("mock", None)
        if mock:
            self._stop_one(mock, signal.SIGTERM, KILL_DEADLINE_S)
        for log in self._logs:
            log.close()
        self._logs.clear()

    def supervisor_pid(self) -> int:
        """Pid of the `tollgate serve` supervisor."""
        serve = self._processes.get("tollgate")
        if serve is None:
            raise StackError(f"stack {self.name} is not running")
        return serve.popen.pid

    def worker_pids(self) -> list[int]:
        """Pids of the live worker processes (direct children of the supervisor)."""
        return _children(self.supervisor_pid())

    def wait_supervisor(self, timeout: float) -> int | None:
        """Waits up to `timeout` seconds for the supervisor to exit; its status, or None.

        The supervisor is this process's child: tests that signal it must learn its exit
        status here (a plain pid check would see the unreaped zombie).
        """
        serve = self._processes.get("tollgate")
        if serve is None:
            return self.serve_returncode
        try:
            self.serve_returncode = serve.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.serve_returncode

    def logs(self) -> str:
        """All log text this stack wrote (workers, mock, nginx), for secret scanning."""
        files = [self.run_dir / "tollgate.log", self.run_dir / "mock.log"]
        files += sorted((self.nginx_dir / "logs").glob("*.log"))
        files += sorted((self.nginx_dir / "logs").glob("*.out"))
        parts = []
        for path in files:
            if path.is_file():
                parts.append(f"==> {path.relative_to(self.run_dir)} <==\n")
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- starting -----------------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        for port in filter(None, (self.http_port, self.mock_port)):
            try:
                _wait_until(f"port {port}", lambda: _port_free(port), lambda: None, PORT_FREE_DEADLINE_S)
            except StackError:
                raise StackError(f"port {port} on 127.0.0.1 is taken by a program outside this stack") from None
        shutil.rmtree(self.nginx_dir, ignore_errors=True)
        for sub in ("logs", "temp"):
            (self.nginx_dir / sub).mkdir(parents=True, exist_ok=True)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)

    def _spawn(self, name: str, command: list[str], log: Path, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> _Process:
        handle = open(log, "wb")
        self._logs.append(handle)
        popen = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                 env=env, cwd=cwd or self.root, start_new_session=True)
        pid_file = self.run_dir / f"{name}.pid"
        pid_file.write_text(f"{popen.pid} {_start_time(popen.pid) or ''}\n")
        process = _Process(name, popen, log, pid_file)
        self._processes[name] = process
        return process

    def _start_mock(self) -> None:
        script = self.root / "scripts" / "mock_upstream.py"
        if not script.is_file():
            raise StackError(f"mock upstream missing: {script}")
        command = [sys.executable, str(script), "--host", "127.0.0.1", "--port", str(self.mock_port)]
        mock = self._spawn("mock", command, self.run_dir / "mock.log")
        port = self.mock_port or 0
        _wait_until(f"mock upstream on port {port}", lambda: _http_ok(port, "/__mock/health"), mock.problem,
                    log=mock.log)

    def _serve_env(self) -> dict[str, str]:
        """The environment of `tollgate serve`: ours without inherited TOLLGATE_*, plus `env`.

        A stack never sends a key found in this process's environment to the mock; with a
        real upstream it uses the caller's `env` or this process's TOLLGATE_UPSTREAM_KEY.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
        env.update(self.env)
        if "TOLLGATE_UPSTREAM_KEY" not in self.env:
            inherited = os.environ.get("TOLLGATE_UPSTREAM_KEY")
            if self.mock_port:
                env["TOLLGATE_UPSTREAM_KEY"] = MOCK_PLATFORM_KEY
            elif inherited:
                env["TOLLGATE_UPSTREAM_KEY"] = inherited
        return env

    def serve_command(self) -> list[str]:
        """The `tollgate serve` command line (flags win over the environment)."""
        command = [str(self.binary), "serve", "--socket", str(self.socket_path),
                   "--upstream-url", self.upstream_url, "--base-path", self.base_path]
        if self.workers is not None:
            command += ["--workers", str(self.workers)]
        if self.threads is not None:
            command += ["--threads", str(self.threads)]
        return command

    def _start_serve(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        serve = self._spawn("tollgate", self.serve_command(), self.run_dir / "tollgate.log", self._serve_env())
        _wait_until(f"tollgate socket {self.socket_path}", lambda: _unix_listening(self.socket_path), serve.problem,
                    log=serve.log)

        expected = self.workers or 1
        _wait_until(f"{expected} tollgate worker(s)", lambda: len(_children(serve.popen.pid)) >= expected,
                    serve.problem, log=serve.log)

    def _render_nginx(self) -> Path:
        """Writes nginx.conf and the three snippets into the stack's nginx directory."""
        source = self.root / "nginx"
        params = Path("/etc/nginx/fastcgi_params")
        if not params.is_file():
            raise StackError(f"{params} missing: reinstall nginx (scripts/deps.sh)")
        shutil.copyfile(params, self.nginx_dir / "fastcgi_params")
        shutil.copyfile(source / "tollgate-cors.conf", self.nginx_dir / "tollgate-cors.conf")
        _render(source / "tollgate-upstream.conf", self.nginx_dir / "tollgate-upstream.conf",
                {SOCKET_TEMPLATE_PATH: f"unix:{self.socket_path}"})
        _render(source / "tollgate.conf", self.nginx_dir / "tollgate.conf",
                {BASE_LOCATION_TEMPLATE: f"location {self.base_path}/ {{"})

        values = {"@PREFIX@": str(self.nginx_dir), "@PORT@": str(self.http_port),
                  "@SOCKET@": str(self.socket_path), "@USER@": pwd.getpwuid(os.geteuid()).pw_name,
                  "@BASE_PATH@": self.base_path}
        text = (source / "nginx.conf").read_text()
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        left = PLACEHOLDER.search(text)
        if left:
            raise StackError(f"nginx/nginx.conf: unknown placeholder {left.group(0)}")
        conf = self.nginx_dir / "nginx.conf"
        conf.write_text(text)
        return conf

    def _start_nginx(self, nginx: str) -> None:
        conf = self._render_nginx()
        prefix = f"{self.nginx_dir}/"
        # daemon off: the master stays this process's child, so stop() can reap it.
        command = [nginx, "-p", prefix, "-c", str(conf), "-e", str(self.nginx_dir / "logs" / "error.log"),
                   "-g", "daemon off;"]
        process = self._spawn("nginx", command, self.nginx_dir / "logs" / "nginx.out", cwd=self.nginx_dir)

        def problem() -> str | None:
            exited = process.problem()
            return f"{exited} | error.log: {_tail(self.nginx_dir / 'logs' / 'error.log')}" if exited else None

        port = self.http_port
        _wait_until(f"nginx on port {port}", lambda: _http_ok(port, "/__canned/chat"), problem,
                    log=self.nginx_dir / "logs" / "error.log")

    # -- stopping -----------------------------------------------------------------------------

    def _grace(self) -> float:
        raw = self.env.get("TOLLGATE_GRACE") or DEFAULT_GRACE_S
        try:
            return float(raw)
        except ValueError:
            return DEFAULT_GRACE_S

    def _stop_serve(self, serve: _Process) -> None:
        pid = serve.popen.pid
        if serve.popen.poll() is None:
            _end_group(pid, signal.SIGTERM, self._grace() + 10.0, self._force.is_set)
        else:
            # Exited already (a test signalled it): still end workers it may have left.
            leftovers = _group(pid)
            _signal_all(leftovers, signal.SIGKILL)
            _wait_gone(leftovers, KILL_DEADLINE_S)
        self.serve_returncode = _reap(serve.popen)
        serve.pid_file.unlink(missing_ok=True)
        self.socket_path.unlink(missing_ok=True)

    def _stop_one(self, process: _Process, first: signal.Signals, deadline_s: float) -> None:
        if process.popen.poll() is None:
            if not _end_group(process.popen.pid, first, deadline_s, self._force.is_set) and first == signal.SIGQUIT:
                print(f"stack: nginx did not quit within {deadline_s:g} s; killed", file=sys.stderr)
        _reap(process.popen)
        process.pid_file.unlink(missing_ok=True)

    def exited_process(self) -> str | None:
        """A one-line report on the first stack process that has exited, or None."""
        for process in self._processes.values():
            if process.popen.poll() is not None:
                return f"{process.name} exited with status {process.popen.returncode}; log {process.log}"
        return None

    def force_stop(self) -> None:
        """Makes a stop() in progress (or the next one) kill at once instead of waiting."""
        self._force.set()


def _reap(popen: subprocess.Popen[bytes]) -> int | None:
    try:
        return popen.wait(KILL_DEADLINE_S)
    except subprocess.TimeoutExpired:
        return None


def _render(source: Path, target: Path, replacements: dict[str, str]) -> None:
    """Copies `source` to `target`, replacing each key exactly once (fails loudly otherwise)."""
    text = source.read_text()
    for old, new in replacements.items():
        if text.count(old) != 1:
            raise StackError(f"{source}: expected exactly one '{old}' to replace")
        text = text.replace(old, new)
    target.write_text(text)


def _checked_base_path(base_path: str) -> str:
    trimmed = base_path.rstrip("/")
    if not BASE_PATH_SHAPE.match(trimmed):
        raise StackError(f"base path must look like /v1 or /api/playground/assistant/v1, not {base_path!r}")
    return trimmed


def _socket_path(run_dir: Path) -> Path:
    """run_dir/tollgate.sock, or a short path under the temp dir when that is too long."""
    path = run_dir / "tollgate.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(run_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"tollgate-{digest}" / "tollgate.sock"


def stop_leftovers(run_dir: Path) -> list[str]:
    """Ends processes a previous run of this stack left behind, found through its pid files.

    A pid file holds "PID START_TIME". The recorded process is ended (with its process group)
    only while both still match, so a reused pid is left alone. If it is gone, members of its
    group still running (workers whose supervisor died) are killed when they run in the
    stack's directory with the expected command. Returns the names that were ended.
    """
    root = run_dir.parent.parent
    owners = {"tollgate": (root, "tollgate"), "nginx": (run_dir / "nginx", "nginx"),
              "mock": (root, "mock_upstream.py")}
    ended = []
    for name in PROCESSES:
        pid_file = run_dir / f"{name}.pid"
        try:
            pid_text, _, started = pid_file.read_text().strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        if _is_running(pid) and _start_time(pid) == started:
            _end_group(pid, signal.SIGTERM, KILL_DEADLINE_S)
            ended.append(name)
        else:
            orphans = [member for member in _group(pid) if _belongs(member, *owners[name])]
            _signal_all(orphans, signal.SIGKILL)
            _wait_gone(orphans, KILL_DEADLINE_S)
            ended += [name] if orphans else []
        pid_file.unlink(missing_ok=True)
    return ended


# --- command line --------------------------------------------------------------------------


def _env_file_text(stack: Stack, env: dict[str, str]) -> str:
    """Lines for .run/env: every TOLLGATE_* setting in effect, never a real key value."""
    settings = {"TOLLGATE_SOCKET": str(stack.socket_path), "TOLLGATE_UPSTREAM_URL": stack.upstream_url,
                "TOLLGATE_BASE_PATH": stack.base_path}
    if stack.workers is not None:
        settings["TOLLGATE_WORKERS"] = str(stack.workers)
    if stack.threads is not None:
        settings["TOLLGATE_THREADS"] = str(stack.threads)
    settings.update({k: v for k, v in env.items() if k != "TOLLGATE_UPSTREAM_KEY"})

    lines = ["# Settings of the stack `make run` started (scripts/stack.py). Key values are never written.",
             f"# Base URL: {stack.base_url}"]
    lines += [f"{key}={shlex.quote(value)}" for key, value in sorted(settings.items())]
    if stack.threads is None:
        lines.append("# TOLLGATE_THREADS is not set: the binary's default applies.")
    if stack.mock_port:
        lines.append("# The mock's dummy platform key (a real key is never written here):")
        lines.append(f"TOLLGATE_UPSTREAM_KEY={MOCK_PLATFORM_KEY}")
    elif "TOLLGATE_UPSTREAM_KEY" in env:
        lines.append("# TOLLGATE_UPSTREAM_KEY is set in the environment (value not written here).")
    else:
        lines.append("# TOLLGATE_UPSTREAM_KEY is not set.")
    return "\n".join(lines) + "\n"


def _run(args: argparse.Namespace, root: Path) -> int:
    env = {k: v for k, v in os.environ.items() if k.startswith("TOLLGATE_")}
    upstream_url = env.pop("TOLLGATE_UPSTREAM_URL", None) or None
    if upstream_url is None:
        # The mock gets the dummy key, never a real one from this shell.
        env.pop("TOLLGATE_UPSTREAM_KEY", None)
    workers = int(env.pop("TOLLGATE_WORKERS", "") or os.cpu_count() or 1)
    threads_text = env.pop("TOLLGATE_THREADS", "")
    base_path = env.pop("TOLLGATE_BASE_PATH", "") or "/v1"
    env.pop("TOLLGATE_SOCKET", None)

    stack = Stack(root, name="run", http_port=args.port, mock_port=args.mock_port, workers=workers,
                  threads=int(threads_text) if threads_text else None, upstream_url=upstream_url,
                  base_path=base_path, env=env)
    stopping = threading.Event()
    signals_seen = []

    def on_signal(signum: int, _frame: object) -> None:
        signals_seen.append(signum)
        if stopping.is_set():
            stack.force_stop()
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    stack.start()
    env_file = root / ".run" / "env"
    env_file.write_text(_env_file_text(stack, env))
    upstream_note = " (mock)" if stack.mock_port else ""
    print(f"Tollgate is running: nginx :{args.port} -> tollgate serve -> {stack.upstream_url}{upstream_note}")
    print(f"  base URL   {stack.base_url}")
    print(f"  logs       {stack.run_dir.relative_to(root)}/ (tollgate.log, mock.log, nginx/logs/)")
    print(f"  settings   {env_file.relative_to(root)}")
    print("Try a streamed chat completion:")
    body = '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hi"}]}'
    print(f"  curl -N {stack.base_url}/chat/completions -H 'Content-Type: application/json' -d '{body}'")
    print("Ctrl-C stops everything (a second Ctrl-C skips the workers' grace).", flush=True)

    exit_code = 0
    while not stopping.wait(0.5):
        exited = stack.exited_process()
        if exited:
            print(f"stack: {exited}", file=sys.stderr)
            exit_code = 1
            break
    print("Stopping (workers finish in-flight requests first)...", flush=True)
    stack.stop()
    print("Stopped.")
    return exit_code


def _stop(args: argparse.Namespace, root: Path) -> int:
    runs = root / ".run"
    names = [p.name for p in runs.iterdir() if p.is_dir()] if args.all and runs.is_dir() else [args.name]
    for name in names:
        ended = stop_leftovers(runs / name)
        if ended:
            print(f"stack {name}: ended {', '.join(ended)}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Run or stop a local Tollgate stack.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start mock (unless TOLLGATE_UPSTREAM_URL), workers and nginx")
    run.add_argument("--port", type=int, default=8080, help="nginx port on 127.0.0.1 (default 8080)")
    run.add_argument("--mock-port", type=int, default=8090, help="mock upstream port (default 8090)")
    stop = commands.add_parser("stop", help="end what a stack left running (by its pid files)")
    stop.add_argument("--name", default="run", help="stack name (default run)")
    stop.add_argument("--all", action="store_true", help="every stack under .run/")
    args = parser.parse_args(argv)

    root = Path(__file__).resolve().parent.parent
    try:
        return _run(args, root) if args.command == "run" else _stop(args, root)
    except (StackError, ValueError) as error:
        print(f"stack: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
