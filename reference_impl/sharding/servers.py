"""Shard servers started from the embedded PostgreSQL binaries (saaslab/servers.py's `PostgresServer`).

For the lab's own runs (the live face, `make demo`, tests, the benchmark): `count` servers under
`<state_dir>/shards/shard<i>/`, each with a `saaslab` database, started in parallel and stopped on exit.
Their URLs go in `SAASLAB_SHARD_URLS`; servers on other hosts are listed there the same way instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from saaslab.servers import PostgresServer, ServiceError

DATABASE = "saaslab"


class ShardServers:
    def __init__(self, state_dir: Path, count: int) -> None:
        if count < 1:
            raise ValueError("count must be >= 1")
        root = state_dir.resolve() / "shards"
        self.servers = [PostgresServer(root / f"shard{i}") for i in range(count)]

    def start(self) -> list[str]:
        with ThreadPoolExecutor(len(self.servers)) as pool:
            list(pool.map(self._start_one, self.servers))
        return self.urls

    @staticmethod
    def _start_one(server: PostgresServer) -> None:
        server.stop("immediate")  # a server an earlier run left behind: start it afresh on a free port
        try:
            server.start()
        except ServiceError:
            # The free port it picked may have been taken before it bound it (other servers start beside it,
            # here and in other processes): once more, on another port.
            server.stop("immediate")
            server.port = None
            server.start()
        server.create_database(DATABASE)

    def recreate_databases(self) -> None:
        """Drop and create each server's database: a run that starts on empty shards."""
        with ThreadPoolExecutor(len(self.servers)) as pool:
            list(pool.map(_recreate, self.servers))

    @property
    def urls(self) -> list[str]:
        return [s.url(DATABASE) for s in self.servers]

    def stop(self) -> None:
        with ThreadPoolExecutor(len(self.servers)) as pool:
            list(pool.map(lambda s: s.stop("immediate"), self.servers))


def _recreate(server: PostgresServer) -> None:
    server.run_bin("dropdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "--if-exists", "--force",
                   DATABASE)
    server.create_database(DATABASE)


@contextlib.contextmanager
def shard_servers(state_dir: Path, count: int) -> Iterator[ShardServers]:
    servers = ShardServers(state_dir, count)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()
