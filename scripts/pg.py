"""Private, throw-away PostgreSQL clusters for local stacks and the test suites.

Used by scripts/stack.py (`Stack(database=True)`, `stack.py run`, `stack.py db-start`). A
cluster belongs to a stack name under a repository root: it is created fresh by `create()`
(leftovers of a crashed run are ended and removed first), listens on 127.0.0.1 only, trusts
every local connection, and is removed again by `destroy()`. Nothing is reused between runs.

PostgreSQL refuses to run as root, so when this script runs as root, initdb and pg_ctl run
as the `postgres` OS user (through runuser). The cluster directory must then be reachable by
that user: it is `<root>/.run/<name>/pg` when it is, and `/tmp/tollgate-pg-<name>-<hash of
root>` when it is not (a clone under a 0700 home directory). Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

OS_USER = "postgres"
"""The OS user the server runs as when this script runs as root."""

SUPERUSER = "postgres"
DATABASE = "tollgate"
PREFERRED_VERSION = "15"

SERVER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
"""PATH of the commands run as the server's user (nothing of this process's environment)."""

COMMAND_TIMEOUT_S = 60.0
PG_CTL_WAIT_S = 30
KILL_DEADLINE_S = 5.0
PORT_FREE_DEADLINE_S = 5.0

# sun_path holds 108 bytes; the server appends "/.s.PGSQL.<port>" to the socket directory.
MAX_SOCKET_DIR = 100 - len("/.s.PGSQL.65535")

NULL = "\\N"
"""How psql prints NULL here (pset null); `psql()` turns it into None."""


class PostgresError(RuntimeError):
    """A cluster could not be created, started, stopped or queried; one line for a person."""


def database_url(port: int, dbname: str = DATABASE) -> str:
    """The libpq conninfo of a cluster made here: TCP on loopback, no password (trust)."""
    return f"host=127.0.0.1 port={port} user={SUPERUSER} dbname={dbname}"


def bin_dir() -> Path:
    """The server's bin directory: PostgreSQL 15 if installed, else the newest version found."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0)
    preferred = [path for path in found if path.parent.parent.name == PREFERRED_VERSION]
    chosen = (preferred or found[-1:] or [None])[0]
    if chosen is None:
        raise PostgresError("PostgreSQL server binaries not found under /usr/lib/postgresql: run scripts/deps.sh")
    return chosen.parent


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def psql(url: str, sql: str) -> list[tuple[str | None, ...]]:
    """Runs `sql` (one or more statements, one implicit transaction) and returns the last result.

    Rows are tuples of text (psql -At, tab between fields, a zero byte after each row, so
    values may contain newlines); NULL comes back as None. Blocks until psql exits; raises
    PostgresError with psql's message when a statement fails.
    """
    command = [str(bin_dir() / "psql"), "-X", "-q", "-A", "-t", "-F", "\t", "-0", "-P", f"null={NULL}",
               "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql]
    env = {**os.environ, "PGCONNECT_TIMEOUT": "5"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise PostgresError(f"psql did not finish within {COMMAND_TIMEOUT_S:g} s") from None
    except OSError as error:
        raise PostgresError(f"psql could not run: {error}") from None
    if done.returncode != 0:
        raise PostgresError(f"psql failed (exit {done.returncode}): {_one_line(done.stderr)}")
    text = done.stdout
    if not text:
        return []
    records = (text[:-1] if text.endswith("\0") else text).split("\0")
    return [tuple(None if field == NULL else field for field in record.split("\t")) for record in records]


class Cluster:
    """One private cluster: data, socket directory and server log under `base`.

    Layout: base/data (PGDATA), base/socket (the unix socket, unused by Tollgate, which
    connects over TCP), base/postgres.log. `destroy()` copies the log to
    <root>/.run/<name>/postgres.log before it removes `base`, so the log outlives the cluster.
    """

    def __init__(self, root: Path, name: str, port: int) -> None:
        self.root = Path(root).resolve()
        self.name = name
        self.port = port
        self.run_dir = self.root / ".run" / name
        self.url = database_url(port)
        self.base: Path | None = None
        self.saved_log = self.run_dir / "postgres.log"

    @classmethod
    def attach(cls, root: Path, name: str) -> Cluster | None:
        """The cluster of this name another process created (for `stack.py db-stop`), or None."""
        for base in candidate_bases(root, name):
            if (base / "data" / "PG_VERSION").is_file() and not base.is_symlink():
                try:
                    port = int((base / "data" / "postmaster.pid").read_text().split("\n")[3])
                except (OSError, ValueError, IndexError):
                    port = 0
                cluster = cls(root, name, port)
                cluster.base = base
                return cluster
        return None

    # -- lifecycle ------------------------------------------------------------------------------

    def create(self) -> None:
        """Ends and removes any leftover of this name, then initdb, start and CREATE DATABASE.

        Blocks until the server accepts connections (pg_ctl -w) or raises PostgresError.
        """
        remove_leftovers(self.root, self.name)
        self.saved_log.unlink(missing_ok=True)
        _wait_port_free(self.port)
        base = _choose_base(self.root, self.name)
        _make_owned_dir(base)
        self.base = base
        try:
            _make_owned_dir(base / "socket")

            # --no-sync and, in start(), fsync=off: a test cluster that is thrown away after
            # the run need not survive a power cut, and syncing dominates its start-up time.
            _run_as_server([str(bin_dir() / "initdb"), "-D", str(self.data_dir), "-A", "trust", "--no-sync",
                            "-U", SUPERUSER, "-E", "UTF8", "--no-locale"], "initdb")
            self.start()
            psql(database_url(self.port, "postgres"), f"CREATE DATABASE {DATABASE}")
        except BaseException:
            self.destroy()
            raise

    def start(self) -> None:
        """Starts the server on the existing data directory (after create(), or after stop())."""
        if self.base is None or not (self.data_dir / "PG_VERSION").is_file():
            raise PostgresError(f"cluster {self.name} was never created (no data directory)")
        if self.running():
            return
        # Test cluster: fsync, synchronous_commit and full-page writes off trade crash safety
        # (irrelevant for a cluster removed after the run) for speed.
        # pg_ctl hands these options to a shell: quote the path.
        options = (f"-p {self.port} -k {shlex.quote(str(self.base / 'socket'))} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        _run_as_server([str(bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path),
                        "-w", "-t", str(PG_CTL_WAIT_S), "-o", options, "start"], "pg_ctl start",
                       detail=lambda: _tail(self.log_path))

    def stop(self) -> None:
        """Stops the server in fast mode (open sessions are ended), keeping the data.

        Falls back to ending the postmaster through its pid file when pg_ctl fails.
        Does nothing when the server is not running.
        """
        if self.base is None or not self.running():
            return
        try:
            _run_as_server([str(bin_dir() / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
                            "-t", str(PG_CTL_WAIT_S), "stop"], "pg_ctl stop")
        except PostgresError:
            _end_postmaster(self.data_dir)

    def destroy(self) -> None:
        """stop(), keep a copy of the server log in the run directory, remove the cluster. Idempotent."""
        if self.base is None:
            return
        self.stop()
        _end_postmaster(self.data_dir)
        if self.log_path.is_file():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.log_path, self.saved_log)
        _remove(self.base)
        self.base = None

    # -- state ------------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return (self.base or self.run_dir / "pg") / "data"

    @property
    def log_path(self) -> Path:
        return (self.base or self.run_dir / "pg") / "postgres.log"

    def running(self) -> bool:
        """True while the postmaster named in the data directory's pid file is alive."""
        return _postmaster_pid(self.data_dir) is not None

    def log_text(self) -> str:
        """The server log: the live one while the cluster exists, else the copy destroy() kept."""
        for path in (self.log_path, self.saved_log):
            if path.is_file():
                return path.read_text(errors="replace")
        return ""


# --- leftovers ---------------------------------------------------------------------------------


def candidate_bases(root: Path, name: str) -> list[Path]:
    """Where a cluster of this name may live: in the run directory, or the /tmp fallback."""
    root = Path(root).resolve()
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return [root / ".run" / name / "pg", Path(tempfile.gettempdir()) / f"tollgate-pg-{name}-{digest}"]


def remove_leftovers(root: Path, name: str) -> bool:
    """Ends a postmaster a crashed run left (found by its pid file) and removes its directory.

    A postmaster is ended only when its working directory is that data directory (the server
    chdirs there), so a reused pid is left alone. Returns True when anything was found.
    """
    found = False
    for base in candidate_bases(root, name):
        if not (base.exists() or base.is_symlink()):
            continue
        found = True
        _end_postmaster(base / "data")
        _remove(base)
    return found


def _postmaster_pid(data_dir: Path) -> int | None:
    """The pid in data_dir/postmaster.pid when that process is a live server of this data dir."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    if state[state.rfind(")") + 2 :].split()[0] in ("Z", "X"):
        return None
    return pid if cwd == data_dir.resolve() else None


def _end_postmaster(data_dir: Path) -> None:
    """SIGQUIT (immediate shutdown) to the postmaster, SIGKILL to its group after a deadline."""
    pid = _postmaster_pid(data_dir)
    if pid is None:
        return
    _signal(pid, signal.SIGQUIT)
    end = time.monotonic() + KILL_DEADLINE_S
    while _postmaster_pid(data_dir) == pid and time.monotonic() < end:
        time.sleep(0.02)
    if _postmaster_pid(data_dir) == pid:
        # The postmaster leads its own process group (pg_ctl starts it with setsid).
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


# --- running as the server's user ----------------------------------------------------------------


def _server_user() -> pwd.struct_passwd | None:
    """The OS user to run initdb and pg_ctl as: `postgres` when we are root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        raise PostgresError(f"OS user {OS_USER!r} missing (PostgreSQL refuses root): run scripts/deps.sh") from None


def _as_server(command: list[str]) -> list[str]:
    return [_runuser(), "-u", OS_USER, "--", *command] if _server_user() else command


def _runuser() -> str:
    """runuser's path: it lives in sbin, which a root shell's PATH may lack."""
    found = shutil.which("runuser", path=f"{os.environ.get('PATH', '')}:{SERVER_PATH}")
    if found is None:
        raise PostgresError("runuser not found (util-linux): needed to run PostgreSQL as the postgres user")
    return found


def _run_as_server(command: list[str], what: str, detail: Callable[[], str] = lambda: "") -> None:
    """Runs `command` as the server's user from `/` (it may not be able to enter our cwd).

    The environment is minimal: the server never inherits this process's TOLLGATE_* secrets.
    """
    env = {"PATH": SERVER_PATH, "LC_ALL": "C"}
    try:
        done = subprocess.run(_as_server(command), cwd="/", env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise PostgresError(f"{what} did not finish within {COMMAND_TIMEOUT_S:g} s") from None
    except OSError as error:
        raise PostgresError(f"{what} could not run: {error}") from None
    if done.returncode != 0:
        extra = detail()
        extra = f" | server log: {extra}" if extra else ""
        raise PostgresError(f"{what} failed (exit {done.returncode}): {_one_line(done.stderr or done.stdout)}{extra}")


def _reachable_by_server(path: Path) -> bool:
    """True when the server's user can traverse `path` (every parent must allow it)."""
    if _server_user() is None:
        return True
    check = subprocess.run([_runuser(), "-u", OS_USER, "--", "test", "-x", str(path)], cwd="/",
                           env={"PATH": SERVER_PATH}, capture_output=True, timeout=COMMAND_TIMEOUT_S)
    return check.returncode == 0


def _choose_base(root: Path, name: str) -> Path:
    """The run directory's pg/ when the server's user can reach it and the socket path fits, else /tmp."""
    inside, fallback = candidate_bases(root, name)
    inside.parent.mkdir(parents=True, exist_ok=True)
    fits = len(str(inside / "socket")) <= MAX_SOCKET_DIR
    return inside if fits and _reachable_by_server(inside.parent) else fallback


def _make_owned_dir(path: Path) -> None:
    """Creates `path` (mode 0700, must not exist yet) owned by the server's user."""
    try:
        path.mkdir(mode=0o700)
    except OSError as error:
        raise PostgresError(f"cannot create the cluster directory {path}: {error.strerror}") from None
    user = _server_user()
    if user:
        os.chown(path, user.pw_uid, user.pw_gid)


def _wait_port_free(port: int) -> None:
    end = time.monotonic() + PORT_FREE_DEADLINE_S
    while True:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            return
        except OSError:
            if time.monotonic() >= end:
                raise PostgresError(f"port {port} on 127.0.0.1 is taken: cannot start PostgreSQL there") from None
        finally:
            probe.close()
        time.sleep(0.05)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _one_line(text: str) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
