"""A Redis master, one replica and three Sentinels, from the wheel's `redis-server`.

Each process is a `saaslab.servers.RedisServer` with its own folder, log and pid file; a Sentinel also
has its own config file, which it rewrites as it learns the topology. With a `Network`
(reference_impl/failover/network.py) the servers live in network namespaces, laid out as Jepsen's
Redis test laid them out, a Sentinel beside each server:

* host `r0`: the first master (port 6379) and Sentinel `s0` (port 26379);
* host `r1`: the replica and Sentinel `s1`;
* host `s2`: Sentinel `s2` alone.

Cutting `r0` off the bridge leaves its master and `s0` on one side (`s0` alone cannot reach the quorum
of 2, nor the majority a failover needs) and `s1`, `s2` and the replica on the other, which promote
the replica. Without a network every process listens on 127.0.0.1 on a port of its own (kill and
pause drills only).

`design` sets what every data node runs with (each node is configured alike, since any of them may
become the master): `min_replicas` adds `min-replicas-to-write 1` and `min-replicas-max-lag`; `plain`
and `wait` run Redis' defaults (WAIT is the client's: reference_impl/failover/redis_client.py).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from reference_impl.failover.network import Host, Network
from saaslab.servers import RedisServer, ServiceError, free_port, redis_server_bin, wait_port

SERVICE = "lab"
"""The name the Sentinels monitor the master under (`sentinel monitor lab ...`)."""
DATA_PORT_IN_NAMESPACE = 6379
SENTINEL_PORT_IN_NAMESPACE = 26379
DESIGNS = ("plain", "wait", "min_replicas")


@dataclass(frozen=True)
class SentinelTimers:
    down_after_ms: int = 1000
    """Sentinel's down-after-milliseconds (30,000 by default): silence before a Sentinel finds a master down."""
    failover_timeout_ms: int = 3000
    """failover-timeout (180,000 by default); a Sentinel tries the same master again after twice this."""
    quorum: int = 2
    min_replicas_max_lag_s: int = 1


class RedisNode(RedisServer):
    """A `RedisServer` that runs inside `host`'s namespace (when given) and listens on its address."""

    def __init__(self, name: str, workdir: Path, *, host: Host | None, sentinel: bool = False,
                 args: tuple[str, ...] = ()) -> None:
        in_namespace = SENTINEL_PORT_IN_NAMESPACE if sentinel else DATA_PORT_IN_NAMESPACE
        super().__init__(workdir, port=in_namespace if host else free_port(), args=args, sentinel=sentinel)
        self.name = name
        self.host = host

    @property
    def address(self) -> str:
        return self.host.address if self.host else "127.0.0.1"

    @property
    def endpoint(self) -> str:
        """`address:port`: how a write names the master that accepted it."""
        return f"{self.address}:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pidfile.unlink(missing_ok=True)
        cmd = [str(redis_server_bin())]
        if self.sentinel:
            cmd += [str(self.workdir / "sentinel.conf"), "--sentinel"]
        # protected-mode would refuse clients from other hosts: the lab's servers have no password.
        cmd += ["--port", str(self.port), "--bind", self.address, "--protected-mode", "no", "--daemonize", "yes",
                "--dir", str(self.workdir), "--pidfile", str(self.pidfile), "--logfile", str(self.log), *self.args]
        r = subprocess.run(self.host.command(cmd) if self.host else cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise ServiceError(f"redis-server {self.name} failed to start: {r.stderr.strip() or r.stdout.strip()}")
        assert self.port is not None
        wait_port(self.port, 15, f"Redis {self.name}", self.log, host=self.address)
        for _ in range(50):
            if self.pid is not None:
                break
            time.sleep(0.05)

    def client(self, timeout_s: float = 1.0) -> Redis:
        """A synchronous client that fails at once instead of retrying (redis-py retries 3 times by default)."""
        return Redis(self.address, self.port or 0, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                     retry=Retry(NoBackoff(), 0), decode_responses=True)


def data_args(design: str, timers: SentinelTimers) -> tuple[str, ...]:
    # No persistence (a restarted node starts empty), and full syncs streamed, not staged on disk.
    args = ("--save", "", "--appendonly", "no", "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")
    if design == "min_replicas":
        args += ("--min-replicas-to-write", "1", "--min-replicas-max-lag", str(timers.min_replicas_max_lag_s))
    return args


@dataclass
class RedisCluster:
    root: Path
    design: str = "plain"
    timers: SentinelTimers = field(default_factory=SentinelTimers)
    network: Network | None = None
    data: dict[str, RedisNode] = field(default_factory=dict)
    sentinels: dict[str, RedisNode] = field(default_factory=dict)

    def start(self) -> None:
        """Start r0 as the master, r1 as its replica and the three Sentinels; return once every Sentinel
        knows the replica and the two other Sentinels (before that a failover cannot happen)."""
        if self.design not in DESIGNS:
            raise ValueError(f"unknown Redis design {self.design!r}; choose one of: {', '.join(DESIGNS)}")
        hosts: dict[str, Host | None] = {}
        for name in ("r0", "r1", "s2"):
            hosts[name] = self.network.add(name) if self.network else None
        args = data_args(self.design, self.timers)
        self.data["r0"] = RedisNode("r0", self.root / "r0", host=hosts["r0"], args=args)
        self.data["r0"].start()
        master = self.data["r0"]
        self.data["r1"] = RedisNode("r1", self.root / "r1", host=hosts["r1"],
                                    args=(*args, "--replicaof", master.address, str(master.port)))
        self.data["r1"].start()
        for i, host in enumerate((hosts["r0"], hosts["r1"], hosts["s2"])):
            node = RedisNode(f"s{i}", self.root / f"s{i}", host=host, sentinel=True)
            node.workdir.mkdir(parents=True, exist_ok=True)
            t = self.timers
            (node.workdir / "sentinel.conf").write_text(
                f"sentinel monitor {SERVICE} {master.address} {master.port} {t.quorum}\n"
                f"sentinel down-after-milliseconds {SERVICE} {t.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} {t.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n")
            self.sentinels[node.name] = node
            node.start()
        self._until_ready(30)

    def _until_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                states = []
                for s in self.sentinels.values():
                    with contextlib.closing(s.client()) as c:
                        states.append(c.sentinel_master(SERVICE))
                with contextlib.closing(self.data["r1"].client()) as c:
                    linked = c.info("replication").get("master_link_status") == "up"
                if linked and all(int(st["num-slaves"]) >= 1 and int(st["num-other-sentinels"]) >= 2 for st in states):
                    return
                last = "; ".join(f"{st['num-slaves']} replicas, {st['num-other-sentinels']} sentinels" for st in states)
            except RedisError as err:
                last = repr(err)
            time.sleep(0.1)
        raise ServiceError(f"the Sentinels did not learn the topology within {timeout_s:g} s: {last}")

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(s.address, s.port or 0) for s in self.sentinels.values()]

    def by_endpoint(self, endpoint: str) -> RedisNode:
        return next(n for n in self.data.values() if n.endpoint == endpoint)

    def master_by_majority(self) -> str | None:
        """The master `s1` and `s2` name (the side that can fail over), as `address:port`."""
        for name in ("s2", "s1"):
            with contextlib.suppress(RedisError), contextlib.closing(self.sentinels[name].client(0.5)) as c:
                addr = c.sentinel_get_master_addr_by_name(SERVICE)
                if addr:
                    return f"{addr[0]}:{addr[1]}"
        return None

    def role(self, name: str) -> tuple[str, str | None]:
        """(`master` | `slave` | `down`, the master it follows when a replica with its link up)."""
        try:
            with contextlib.closing(self.data[name].client(0.5)) as c:
                info = c.info("replication")
        except RedisError:
            return "down", None
        if info.get("role") == "slave":
            up = info.get("master_link_status") == "up"
            return "slave", f"{info.get('master_host')}:{info.get('master_port')}" if up else None
        return "master", None

    def restart_as_replica(self, name: str, master: str) -> None:
        """Start a dead node as a replica of `master`, as a Redis host's boot script that asks Sentinel
        does: started empty (no persistence) as a master, it would wait for Sentinel to notice it."""
        node = self.data[name]
        host, port = master.rsplit(":", 1)
        node.args = (*data_args(self.design, self.timers), "--replicaof", host, port)
        node.start()

    def close(self) -> None:
        """Stop every process (paused ones are resumed first); never raises."""
        for node in (*self.sentinels.values(), *self.data.values()):
            with contextlib.suppress(Exception):
                node.resume()
                node.stop()
