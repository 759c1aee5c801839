#!/usr/bin/env python3
"""Runs a local Tollgate stack: [PostgreSQL] -> mock upstream -> `tollgate serve` -> nginx.

Imported by the end-to-end tests (`Stack`) and run by `make run`:

    python3 scripts/stack.py run [--port 8080] [--mock-port 8090] [--pg-port 5433]
    python3 scripts/stack.py stop [--name NAME | --all]
    python3 scripts/stack.py db-start --name NAME --pg-port PORT [--migrate]   # prints the URL
    python3 scripts/stack.py db-stop --name NAME

Every process is started in a session of its own, so a Ctrl-C in the terminal reaches only
this script, which then stops the stack in order: the workers first (they finish in-flight
requests within their grace), then nginx, then the mock, then PostgreSQL. Readiness is
always a condition polled against a deadline, never a fixed sleep. Standard library only;
the PostgreSQL cluster handling lives in pg.py beside this file.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import http.client
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

import pg

MOCK_PLATFORM_KEY = "sk-platform-mock-0000"
"""Dummy platform key given to the workers when they talk to the mock upstream."""

DEMO_USER = "demo"
DEMO_QUOTA = 100000
DEMO_PERIOD = "day"
"""The user `make run` creates, with its quota in tokens per period."""

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
"""Pid-file names, also the stop order. PostgreSQL, stopped last, is found through its own
pid file in the cluster's data directory (pg.remove_leftovers)."""

AUTH_MODES = ("bearer", "header")

# Header mode (auth_mode="header"): the include that tollgate.conf carries commented out, and
# the lines of tollgate-header-auth.conf that ask the operator's auth service who the user
# is. Stacks have no auth service: they replace those lines with a test-only include
# (nginx/testing/tollgate-test-user.conf) that takes the user from X-Test-Trusted-User.
HEADER_AUTH_INCLUDE_COMMENTED = "    # include tollgate-header-auth.conf;\n"
HEADER_AUTH_INCLUDE = "    include tollgate-header-auth.conf;\n"
HEADER_AUTH_IDENTITY = ("auth_request /__tollgate/auth;\n"
                        "auth_request_set $tollgate_user $upstream_http_x_user;\n")
TEST_USER_INCLUDE = "include tollgate-test-user.conf;\n"

SECRET_SETTINGS = ("TOLLGATE_UPSTREAM_KEY", "TOLLGATE_SECRET")
"""Settings whose values are never written to .run/env."""

_SECRETS_BY_DATABASE: dict[str, str] = {}
"""TOLLGATE_SECRET of each database a Stack of this process created, by URL: a stack that
shares that database (database_url=...) uses the same secret, as two machines of one
deployment must (BYOK keys are encrypted with it)."""


class StackError(RuntimeError):
    """A stack could not start or stop; the message is one line meant for a person."""


@contextmanager
def _database_errors() -> Iterator[None]:
    """Turns pg.PostgresError into StackError, the one error type callers of this module catch."""
    try:
        yield
    except pg.PostgresError as error:
        raise StackError(str(error)) from None


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
            detail = f"; log {log}: {tail(log)}" if log else ""
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


def port_free(port: int) -> bool:
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


def tail(path: Path, lines: int = 8) -> str:
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
        return f"{self.name} exited with status {code} during start; log {self.log}: {tail(self.log)}"


class Stack:
    """A PostgreSQL cluster (optional), a mock upstream (optional), `tollgate serve` and nginx.

    Files live in root/.run/<name>: tollgate.log, mock.log, migrate.log, nginx/ (rendered
    config, logs/, temp/) and one pid file per process, used to clean up after a run that
    died. The cluster lives in pg/ there (or under /tmp, see pg.py); its log is kept as
    postgres.log when the stack stops.

    Database: `database=True` starts a fresh private cluster on `pg_port` (a free port when
    None), creates the database, runs `tollgate migrate` and gives the workers
    TOLLGATE_DATABASE_URL and TOLLGATE_SECRET (env's, else a random one per stack).
    `database_url=OTHER.database_url` starts no cluster and, unless `migrate=True`, runs no
    migration: the workers use that database (and that stack's secret, unless env has one).
    `auth_mode="header"` renders nginx with tollgate-header-auth.conf (the user comes from
    the test-only X-Test-Trusted-User header) and starts the workers with
    TOLLGATE_AUTH_MODE=header.
    """

    def __init__(self, root: Path, name: str = "test", http_port: int = 18080,
                 mock_port: int | None = 18090, workers: int | None = 2, threads: int | None = None,
                 upstream_url: str | None = None, base_path: str = "/v1",
                 env: dict[str, str] | None = None, database: bool = False, pg_port: int | None = None,
                 database_url: str | None = None, migrate: bool | None = None,
                 auth_mode: str = "bearer") -> None:
        self.root = Path(root).resolve()
        self.name = name
        self.http_port = http_port
        self.workers = workers
        self.threads = threads
        self.base_path = _checked_base_path(base_path)
        self.env = dict(env or {})
        if auth_mode not in AUTH_MODES:
            raise StackError(f"auth_mode must be one of {', '.join(AUTH_MODES)}, not {auth_mode!r}")
        if self.env.get("TOLLGATE_AUTH_MODE", auth_mode) != auth_mode:
            raise StackError("env TOLLGATE_AUTH_MODE disagrees with auth_mode (nginx must be rendered to match)")
        self.auth_mode = auth_mode
        self.run_dir = self.root / ".run" / name
        self.nginx_dir = self.run_dir / "nginx"
        self.binary = tollgate_binary(self.root)
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
        self._init_database(database, pg_port, database_url, migrate)

    def _init_database(self, database: bool, pg_port: int | None, database_url: str | None,
                       migrate: bool | None) -> None:
        """Settles database_url, pg_port, the secret and whether this stack owns a cluster."""
        self.pg_port: int | None = None
        self.database_url: str | None = database_url
        self.secret: str | None = None
        self._cluster: pg.Cluster | None = None
        self._database_up = False
        if database_url is None and database:
            self.pg_port = pg_port or pg.free_port()
            self._cluster = pg.Cluster(self.root, self.name, self.pg_port)
            self.database_url = self._cluster.url
        self.migrate = self._cluster is not None if migrate is None else migrate
        if self.database_url is None:
            return
        self.secret = (self.env.get("TOLLGATE_SECRET") or _SECRETS_BY_DATABASE.get(self.database_url)
                       or secrets.token_urlsafe(32))
        if self._cluster is not None:
            _SECRETS_BY_DATABASE[self.database_url] = self.secret

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
            if self._cluster is not None:
                with _database_errors():
                    self._cluster.create()
                self._database_up = True
            if self.database_url is not None and self.migrate:
                self._migrate()
            if self.mock_port:
                self._start_mock()
            self._start_serve()
            self._start_nginx(nginx)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stops serve (SIGTERM, waits its grace), nginx (SIGQUIT), the mock, then PostgreSQL.

        PostgreSQL stops in fast mode and its cluster is removed (the log is kept). Idempotent.
        """
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
        if self._cluster is not None:
            self._database_up = False
            with _database_errors():
                self._cluster.destroy()

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
        """All log text this stack wrote (workers, mock, migration, nginx, PostgreSQL), for secret scanning."""
        files = [self.run_dir / "tollgate.log", self.run_dir / "mock.log", self.run_dir / "migrate.log"]
        files += sorted((self.nginx_dir / "logs").glob("*.log"))
        files += sorted((self.nginx_dir / "logs").glob("*.out"))
        parts = []
        for path in files:
            if path.is_file():
                parts.append(f"==> {path.relative_to(self.run_dir)} <==\n")
                parts.append(path.read_text(errors="replace"))
        if self._cluster is not None:
            parts.append("==> postgres.log <==\n")
            parts.append(self.pg_log())
        return "".join(parts)

    # -- database -------------------------------------------------------------------------------

    def psql(self, sql: str) -> list[tuple[str | None, ...]]:
        """Runs `sql` on the stack's database as the superuser; rows of the last statement.

        Fields are text, NULL is None (see pg.psql). Raises StackError when a statement fails.
        """
        with _database_errors():
            return pg.psql(self._require_database(), sql)

    def tollgate(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Runs `tollgate ARGS` (e.g. "user", "add", "alice") with the workers' environment.

        That environment holds TOLLGATE_DATABASE_URL and TOLLGATE_SECRET. `input` goes to its
        standard input (for `byok set`); stdout and stderr are captured as text, never logged.
        Blocks until the command exits (at most two minutes).
        """
        return subprocess.run([str(self.binary), *args], input=input, capture_output=True, text=True,
                              env=self._serve_env(), cwd=self.root, timeout=120)

    def stop_database(self) -> None:
        """Stops this stack's PostgreSQL (fast mode), keeping its data: for outage tests."""
        cluster = self._owned_cluster()
        self._database_up = False
        with _database_errors():
            cluster.stop()

    def start_database(self) -> None:
        """Starts the cluster stop_database() stopped: same port, same data. Returns when it accepts connections."""
        cluster = self._owned_cluster()
        with _database_errors():
            cluster.start()
        self._database_up = True

    def pg_log(self) -> str:
        """The PostgreSQL server log of this stack's cluster ("" without one)."""
        return self._cluster.log_text() if self._cluster is not None else ""

    def pg_log_path(self) -> Path | None:
        """Where the server log is written while the cluster runs (None without a cluster)."""
        return self._cluster.log_path if self._cluster is not None else None

    def owns_database(self) -> bool:
        """True when this stack started (and will remove) its own PostgreSQL cluster."""
        return self._cluster is not None

    def _require_database(self) -> str:
        if self.database_url is None:
            raise StackError(f"stack {self.name} has no database (Stack(database=True) or database_url=...)")
        return self.database_url

    def _owned_cluster(self) -> pg.Cluster:
        if self._cluster is None:
            raise StackError(f"stack {self.name} runs no PostgreSQL of its own (database=True starts one)")
        return self._cluster

    def _migrate(self) -> None:
        """`tollgate migrate` against the stack's database; its output goes to migrate.log."""
        try:
            done = self.tollgate("migrate")
        except (OSError, subprocess.TimeoutExpired) as error:
            raise StackError(f"tollgate migrate could not run: {error}") from None
        log = self.run_dir / "migrate.log"
        log.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise StackError(f"tollgate migrate failed with status {done.returncode}; log {log}: {tail(log)}")

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- starting -----------------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        for port in filter(None, (self.http_port, self.mock_port)):
            try:
                _wait_until(f"port {port}", lambda: port_free(port), lambda: None, PORT_FREE_DEADLINE_S)
            except StackError:
                raise StackError(f"port {port} on 127.0.0.1 is taken by a program outside this stack") from None
        shutil.rmtree(self.nginx_dir, ignore_errors=True)
        if self._cluster is not None:
            # An old journal belongs to an old database.
            shutil.rmtree(self.run_dir / "journal", ignore_errors=True)
        (self.run_dir / "migrate.log").unlink(missing_ok=True)
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
        if self.database_url is not None and self.secret is not None:
            env["TOLLGATE_DATABASE_URL"] = self.database_url
            env["TOLLGATE_SECRET"] = self.secret
        if self.auth_mode == "header":
            env["TOLLGATE_AUTH_MODE"] = "header"
        env.setdefault("TOLLGATE_JOURNAL_DIR", str(self.run_dir / "journal"))
        if os.environ.get("TOLLGATE_BINARY"):
            # A binary built elsewhere would not find sql/ beside itself.
            env.setdefault("TOLLGATE_SQL_DIR", str(self.root / "sql"))
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
        location = {BASE_LOCATION_TEMPLATE: f"location {self.base_path}/ {{"}
        if self.auth_mode == "header":
            location[HEADER_AUTH_INCLUDE_COMMENTED] = HEADER_AUTH_INCLUDE
            _render(source / "tollgate-header-auth.conf", self.nginx_dir / "tollgate-header-auth.conf",
                    {HEADER_AUTH_IDENTITY: TEST_USER_INCLUDE})
            shutil.copyfile(source / "testing" / "tollgate-test-user.conf", self.nginx_dir / "tollgate-test-user.conf")
        _render(source / "tollgate.conf", self.nginx_dir / "tollgate.conf", location)

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
            return f"{exited} | error.log: {tail(self.nginx_dir / 'logs' / 'error.log')}" if exited else None

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
        if self._cluster is not None and self._database_up and not self._cluster.running():
            return f"postgres exited; log {self._cluster.log_path}"
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
    stack's directory with the expected command. A PostgreSQL cluster of this stack name is
    ended and removed too (pg.remove_leftovers). Returns the names that were ended.
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
    if pg.remove_leftovers(root, run_dir.name):
        ended.append("postgres")
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
    settings.update({k: v for k, v in env.items() if k not in SECRET_SETTINGS})
    if stack.database_url is not None:
        settings["TOLLGATE_DATABASE_URL"] = stack.database_url
    settings = {key: redact_password(value) if key.endswith("DATABASE_URL") else value
                for key, value in settings.items()}

    lines = ["# Settings of the stack `make run` started (scripts/stack.py). Key values, secrets and",
             "# database passwords are never written.",
             f"# Base URL: {stack.base_url}"]
    lines += [f"{key}={shlex.quote(value)}" for key, value in sorted(settings.items())]
    if stack.secret is not None:
        origin = "from the environment" if "TOLLGATE_SECRET" in env else "generated for this run"
        lines.append(f"# TOLLGATE_SECRET=<set> ({origin}; value not written here)")
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


def redact_password(url: str) -> str:
    """A libpq conninfo or URI with any password replaced by <set>."""
    url = re.sub(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", r"\1<set>", url)
    return re.sub(r"^(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", r"\1<set>@", url)


def _demo_key(stack: Stack) -> str:
    """Creates the demo user (if missing) with its quota and issues a key; returns the key.

    The key is printed once by the caller and never written to a file or a log.
    """
    added = stack.tollgate("user", "add", DEMO_USER, "--quota", str(DEMO_QUOTA), "--period", DEMO_PERIOD)
    if added.returncode != 0:
        problem = _first_line(added.stderr) or f"exit status {added.returncode}"
        if stack.owns_database():
            raise StackError(f"tollgate user add {DEMO_USER} failed: {problem}")
        # A database given through TOLLGATE_DATABASE_URL may hold the user from an earlier run.
        print(f"note: tollgate user add {DEMO_USER}: {problem} (keeping the existing user)", file=sys.stderr)

    issued = stack.tollgate("key", "issue", DEMO_USER)
    if issued.returncode != 0:
        problem = _first_line(issued.stderr) or f"exit status {issued.returncode}"
        raise StackError(f"tollgate key issue {DEMO_USER} failed: {problem}")
    for line in issued.stdout.splitlines():
        if line.startswith("tg-"):
            return line.split()[0]
    raise StackError(f"tollgate key issue {DEMO_USER} printed no line starting with tg-")


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


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
    # A database of the caller's (still migrated), else a private cluster on --pg-port.
    database_url = env.pop("TOLLGATE_DATABASE_URL", "") or None

    stack = Stack(root, name="run", http_port=args.port, mock_port=args.mock_port, workers=workers,
                  threads=int(threads_text) if threads_text else None, upstream_url=upstream_url,
                  base_path=base_path, env=env, database=True, pg_port=args.pg_port, database_url=database_url,
                  migrate=True)
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
    try:
        key = _demo_key(stack)
    except BaseException:
        stack.stop()
        raise
    env_file = root / ".run" / "env"
    env_file.write_text(_env_file_text(stack, env))
    upstream_note = " (mock)" if stack.mock_port else ""
    database_note = (f"private PostgreSQL on :{stack.pg_port}, removed on exit" if stack.owns_database()
                     else "from TOLLGATE_DATABASE_URL")
    print(f"Tollgate is running: nginx :{args.port} -> tollgate serve -> {stack.upstream_url}{upstream_note}")
    print(f"  base URL   {stack.base_url}")
    print(f"  database   {redact_password(stack.database_url or '')} ({database_note})")
    print(f"  logs       {stack.run_dir.relative_to(root)}/ (tollgate.log, mock.log, migrate.log, nginx/logs/)")
    if stack.owns_database():
        print(f"             PostgreSQL: {stack.pg_log_path()}")
    print(f"  settings   {env_file.relative_to(root)}")
    if "TOLLGATE_SECRET" not in env and not stack.owns_database():
        print("note: TOLLGATE_SECRET is not set: a random one is used for this run, so BYOK keys stored "
              "under another secret cannot be read.", file=sys.stderr)
    print(f"Demo user {DEMO_USER!r}, quota {DEMO_QUOTA} tokens a {DEMO_PERIOD}. Its key, shown only this once:")
    print(f"  KEY={key}")
    print("Try a streamed chat completion:")
    body = '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hi"}]}'
    print(f"  curl -N {stack.base_url}/chat/completions -H \"Authorization: Bearer $KEY\" "
          f"-H 'Content-Type: application/json' -d '{body}'")
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


def tollgate_binary(root: Path) -> Path:
    """The worker binary: TOLLGATE_BINARY when set (sanitizer builds), else the release build."""
    override = os.environ.get("TOLLGATE_BINARY")
    return Path(override) if override else root / ".build" / "release" / "tollgate"


def _db_start(args: argparse.Namespace, root: Path) -> int:
    """Creates a fresh cluster for `--name` and prints its URL (the only line on stdout).

    The cluster keeps running after this script exits; `db-stop` (or `stop --all`) ends it.
    """
    cluster = pg.Cluster(root, args.name, args.pg_port)
    cluster.create()
    if args.migrate:
        binary = tollgate_binary(root)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")},
               "TOLLGATE_DATABASE_URL": cluster.url}
        done = subprocess.run([str(binary), "migrate"], env=env, cwd=root, capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            cluster.destroy()
            raise StackError(f"tollgate migrate failed with status {done.returncode}: {_first_line(done.stderr)}")
    print(f"database {args.name}: PostgreSQL on 127.0.0.1:{args.pg_port}, data in {cluster.data_dir}", file=sys.stderr)
    print(cluster.url, flush=True)
    return 0


def _db_stop(args: argparse.Namespace, root: Path) -> int:
    """Stops the cluster of `--name` (fast mode) and removes it; its log stays in .run/NAME/."""
    cluster = pg.Cluster.attach(root, args.name)
    if cluster is not None:
        cluster.destroy()
        print(f"database {args.name}: stopped and removed", file=sys.stderr)
    pg.remove_leftovers(root, args.name)
    return 0


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
    run.add_argument("--pg-port", type=int, default=5433,
                     help="port of the private PostgreSQL (default 5433; unused with TOLLGATE_DATABASE_URL)")
    stop = commands.add_parser("stop", help="end what a stack left running (by its pid files)")
    stop.add_argument("--name", default="run", help="stack name (default run)")
    stop.add_argument("--all", action="store_true", help="every stack under .run/")
    db_start = commands.add_parser("db-start", help="start a private PostgreSQL for NAME and print its URL")
    db_start.add_argument("--name", required=True, help="owner name (its files go to .run/NAME/)")
    db_start.add_argument("--pg-port", type=int, required=True, help="port on 127.0.0.1")
    db_start.add_argument("--migrate", action="store_true", help="also run `tollgate migrate` on it")
    db_stop = commands.add_parser("db-stop", help="stop and remove the PostgreSQL db-start made for NAME")
    db_stop.add_argument("--name", required=True, help="owner name given to db-start")
    args = parser.parse_args(argv)

    root = Path(__file__).resolve().parent.parent
    handlers = {"run": _run, "stop": _stop, "db-start": _db_start, "db-stop": _db_stop}
    try:
        return handlers[args.command](args, root)
    except (StackError, pg.PostgresError, ValueError) as error:
        print(f"stack: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
