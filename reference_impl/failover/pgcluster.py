"""A PostgreSQL primary and its streaming replicas, from the embedded binaries.

Each member is a `Node`: a `saaslab.servers.PostgresServer` with `wal_level = replica`,
`wal_log_hints = on` and `full_page_writes = on` (which `pg_rewind` needs to bring an old primary back) and its `cluster_name` as its
name, which a write reads back to say which server accepted it. With a `Network` each node lives in
its own namespace (reference_impl/failover/network.py) and listens on its host's address; without
one, on 127.0.0.1. Either way its agent reaches it through its Unix socket, as Patroni reaches the
server beside it, so a partition cuts the node off from everyone but its own agent.

Replicas are `pg_basebackup -R` copies. The `sync` design lists every member in
`synchronous_standby_names = 'ANY 1 (...)'`: a commit waits until one standby has flushed it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from reference_impl.failover.network import Host, Network
from saaslab.servers import PostgresServer, ServiceError, free_port, give_to, pg_bin, wait_port

PG_PORT_IN_NAMESPACE = 5432
TABLE = "failover_writes"


class Node(PostgresServer):
    """One member. With a `host` its binaries run inside the host's namespace."""

    def __init__(self, name: str, datadir: Path, *, host: Host | None, options: dict[str, str]) -> None:
        super().__init__(datadir, port=PG_PORT_IN_NAMESPACE if host else free_port(),
                         options={**options, "cluster_name": name,
                                  "listen_addresses": host.address if host else "127.0.0.1"})
        self.name = name
        self.host = host

    @property
    def address(self) -> str:
        return self.host.address if self.host else "127.0.0.1"

    def run_bin(self, name: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        if self.host is None:
            return super().run_bin(name, *args, check=check, timeout=timeout)
        uid = gid = None
        if self.user:
            pw = pwd.getpwnam(self.user)
            uid, gid = pw.pw_uid, pw.pw_gid
        r = subprocess.run(self.host.command([str(pg_bin() / name), *args], uid=uid, gid=gid),
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise ServiceError(f"{name} failed: {(r.stderr or r.stdout).strip()[-800:]}")
        return r

    def start(self, *, timeout_s: float = 60) -> None:
        if self.host is None:
            return super().start(timeout_s=timeout_s)
        self.pg_ctl_start(timeout_s, f"PostgreSQL {self.name}")
        wait_port(self.port or PG_PORT_IN_NAMESPACE, 30, f"PostgreSQL {self.name}", self.log, host=self.address)

    @property
    def socket_dir(self) -> Path:
        """Outside the data folder, so base backups and pg_rewind never meet a socket."""
        return self.datadir.parent / f"{self.name}.sockets"

    def command_options(self) -> str:
        self.socket_dir.mkdir(exist_ok=True)
        give_to(self.user, self.socket_dir)
        return super().command_options().replace(f"-k {self.datadir} ", f"-k {self.socket_dir} ", 1)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.address}:{self.port}/{database}"

    def conninfo(self) -> str:
        """libpq keywords a replica follows this node with."""
        return f"host={self.address} port={self.port} user=postgres application_name={{name}}"

    def local_kwargs(self) -> dict[str, object]:
        """asyncpg keywords for the agent's connection over the Unix socket."""
        return {"host": str(self.socket_dir), "port": self.port, "user": "postgres", "database": "postgres"}

    def hard_stop(self, timeout_s: float = 5) -> bool:
        """Stop it however it is: a fast shutdown, else SIGKILL (a paused server never answers one).
        True when it was shut down cleanly (not when it had crashed or was killed)."""
        pid = self.pid
        if pid is None:
            return False
        clean = False
        if not _stopped(pid):
            with contextlib.suppress(subprocess.TimeoutExpired):
                clean = self.run_bin("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "-t", str(round(timeout_s)),
                                     "stop", check=False, timeout=timeout_s + 5).returncode == 0
        self.crash()
        return clean

    def crash(self) -> None:
        """SIGKILL the postmaster and every process it started: the host died."""
        if (pid := self.pid) is not None:
            for victim in (pid, *_children(pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
                    os.kill(victim, signal.SIGCONT)
        for _ in range(100):
            if not self.running:
                break
            time.sleep(0.05)

    def hold_replication(self, held: bool = True) -> bool:
        """Stop (SIGSTOP) or resume this replica's WAL receiver: the lag nemesis. While it is held the
        replica receives nothing, so its lag grows with the primary's write rate (an async primary
        commits on; a sync one waits for another standby, or for this one). The sender gives up on a
        silent receiver only after wal_sender_timeout (60 s), so a hold of seconds leaves the
        connection in place and the replica catches up when it resumes. False when it has no receiver."""
        found = False
        pid = self.pid
        for child in _children(pid) if pid is not None else []:
            try:
                title = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "walreceiver" in title:
                found = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGSTOP if held else signal.SIGCONT)
        return found

    def end_of_wal(self) -> tuple[int, int]:
        """(timeline, LSN) of the last checkpoint of a stopped server: after a clean shutdown, where
        its WAL ends (pg_controldata, as Patroni reads it before deciding on a rewind)."""
        out = self.run_bin("pg_controldata", "-D", str(self.datadir)).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        hi, lo = fields["Latest checkpoint location"].strip().split("/")
        return int(fields["Latest checkpoint's TimeLineID"].strip()), (int(hi, 16) << 32) + int(lo, 16)

    def write_standby_config(self, leader: Node) -> None:
        """Follow `leader`: standby.signal and a primary_conninfo that wins over earlier lines."""
        (self.datadir / "standby.signal").write_text("")
        auto = self.datadir / "postgresql.auto.conf"
        lines = [ln for ln in (auto.read_text().splitlines() if auto.exists() else [])
                 if not ln.startswith(("primary_conninfo", "default_transaction_read_only"))]
        lines.append(f"primary_conninfo = '{leader.conninfo().format(name=self.name)}'")
        auto.write_text("\n".join(lines) + "\n")
        self._own()

    def _own(self) -> None:
        give_to(self.user, self.datadir)


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass
class Cluster:
    """A primary and `replicas` replicas under `root`; `sync` makes commits wait for a standby."""

    root: Path
    replicas: int = 1
    sync: bool = False
    sync_commit: str = "on"
    network: Network | None = None
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [f"n{i}" for i in range(self.replicas + 1)]

    def options(self) -> dict[str, str]:
        opts = {"wal_level": "replica", "wal_log_hints": "on", "full_page_writes": "on", "max_wal_senders": "10", "hot_standby": "on",
                "wal_keep_size": "256MB", "max_connections": "100", "shared_buffers": "32MB",
                "max_prepared_transactions": "0", "wal_receiver_status_interval": "1s",
                # A standby waits this long between attempts to reach its primary, and a promotion
                # waits out the current wait: the default 5 s would add 5 s to every failover.
                "wal_retrieve_retry_interval": "200ms",
                "synchronous_commit": self.sync_commit if self.sync else "local"}
        if self.sync:
            opts["synchronous_standby_names"] = f"'ANY 1 ({', '.join(self.names)})'"
        return opts

    def start(self) -> Node:
        """initdb and start the primary, then a base backup per replica; returns the primary."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        for name in self.names:
            host = self.network.add(name) if self.network else None
            self.nodes[name] = Node(name, self.root / name, host=host, options=self.options())
        primary = self.nodes[self.names[0]]
        primary.init()
        with (primary.datadir / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 0.0.0.0/0 trust\nhost replication all 0.0.0.0/0 trust\n")
        # Also in the file (base backups copy it): pg_rewind's crash recovery runs without our -c options,
        # and must keep the WAL back to the last common checkpoint.
        with (primary.datadir / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in self.options().items())
        primary.start()
        primary.run_bin("psql", "-h", primary.address, "-p", str(primary.port), "-U", "postgres", "-d", "postgres",
                        "-c", SCHEMA_SQL)
        for name in self.names[1:]:
            self.base_backup(self.nodes[name], primary)
        primary.run_bin("psql", "-h", primary.address, "-p", str(primary.port), "-U", "postgres", "-d", "postgres",
                        "-c", "CHECKPOINT")
        return primary

    def base_backup(self, node: Node, leader: Node) -> None:
        shutil.rmtree(node.datadir, ignore_errors=True)
        node.datadir.mkdir(parents=True)
        give_to(node.user, node.datadir, mode=0o700)
        node.run_bin("pg_basebackup", "-h", leader.address, "-p", str(leader.port), "-U", "postgres", "-D",
                     str(node.datadir), "-X", "stream", "-c", "fast", "--no-sync")
        node.write_standby_config(leader)
        node.start()

    def rewind(self, node: Node, leader: Node) -> None:
        """Bring a stopped old primary back as a replica of `leader`: pg_rewind (which first runs crash
        recovery if it was killed), then follow."""
        node.run_bin("pg_rewind", "-D", str(node.datadir), "--source-server",
                     f"host={leader.address} port={leader.port} user=postgres dbname=postgres", timeout=120)
        node.write_standby_config(leader)
        node.start()

    def close(self) -> None:
        """Stop every node (paused ones are resumed first); never raises."""
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.resume()  # the whole process tree: a held WAL receiver too
                node.hard_stop()


# ---------------------------------------------------------------------------------------------
# Queries


STATUS_SQL = """
SELECT pg_is_in_recovery() AS recovery,
       current_setting('default_transaction_read_only') = 'on' AS read_only,
       CASE WHEN pg_is_in_recovery()
            THEN COALESCE(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) - '0/0'::pg_lsn
            ELSE pg_current_wal_lsn() - '0/0'::pg_lsn END::bigint AS lsn,
       CASE WHEN pg_is_in_recovery()
            THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver), (pg_control_checkpoint()).timeline_id)
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END AS timeline
"""


@dataclass(frozen=True)
class Status:
    role: str
    """`primary`, `replica` or `down`."""
    lsn: int = 0
    timeline: int = 1
    read_only: bool = False


async def status(connect: dict[str, object], timeout_s: float) -> Status:
    """One member's role, position and timeline, or `down` when it does not answer within `timeout_s`."""
    try:
        conn = await asyncpg.connect(**connect, timeout=timeout_s)  # type: ignore[arg-type]
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return Status("down")
    try:
        row = await conn.fetchrow(STATUS_SQL, timeout=timeout_s)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return Status("down")
    finally:
        conn.terminate()
    assert row is not None
    return Status("replica" if row["recovery"] else "primary", int(row["lsn"]), int(row["timeline"]), row["read_only"])


async def execute(connect: dict[str, object], sql: tuple[str, ...], timeout_s: float) -> bool:
    """Run the statements on one member, each on its own (ALTER SYSTEM refuses a transaction block);
    False when it does not answer or refuses one."""
    try:
        conn = await asyncpg.connect(**connect, timeout=timeout_s)  # type: ignore[arg-type]
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        for statement in sql:
            await conn.execute(statement, timeout=timeout_s)
        return True
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    finally:
        conn.terminate()


FENCE_SQL = ("ALTER SYSTEM SET default_transaction_read_only = on", "SELECT pg_reload_conf()",
             "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
             "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
UNFENCE_SQL = ("ALTER SYSTEM RESET default_transaction_read_only", "SELECT pg_reload_conf()")
PROMOTE_SQL = (*UNFENCE_SQL, "SELECT pg_promote(true, 30)")
CREATE_TABLE_SQL = (f"CREATE TABLE IF NOT EXISTS {TABLE} (tenant_id text NOT NULL DEFAULT '', id text NOT NULL, "
                    f"at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant_id, id))")
"""The drills' writes (tenant ''), and the service's (reference_impl/failover/writes.py), scoped by tenant."""
SCHEMA_SQL = f"SET synchronous_commit = local; {CREATE_TABLE_SQL}"
