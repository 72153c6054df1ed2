"""Redis Sentinel failover on real servers: the three designs under a partition of the master, in
Jepsen's count, and the client that asks Sentinel again after a switch (each drill about 11 s)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

import pytest

from reference_impl.failover import network
from reference_impl.failover.drill import DrillResult
from reference_impl.failover.redis_client import SentinelClient, WriteRefused
from reference_impl.failover.redis_cluster import SERVICE, RedisCluster, RedisNode, SentinelTimers
from reference_impl.failover.redis_drill import redis_drill
from saaslab.history import Op

pytestmark = pytest.mark.timeout(90)
SEED = 7
TIMERS = SentinelTimers()  # down-after 1,000 ms, failover-timeout 3,000 ms, quorum 2, max-lag 1 s
HOLD_S = 4.0

_NO_NAMESPACES = network.available()
needs_namespaces = pytest.mark.skipif(_NO_NAMESPACES is not None, reason=str(_NO_NAMESPACES))


def _partition(server_path: Path, design: str) -> DrillResult:
    return asyncio.run(redis_drill(server_path / design, design=design, fault="partition", seed=SEED, timers=TIMERS,
                                   hold_s=HOLD_S))


def _old_master_acks(r: DrillResult) -> list[int]:
    """When the first master (the server of the first acknowledgement) acknowledged writes, in µs."""
    acks = [op for op in r.history if op.f == "write" and op.type == "ok"]
    old = acks[0].value["server"]
    return [op.time_us for op in acks if op.value["server"] == old]


def _nothing_left(server_path: Path) -> None:
    running = subprocess.run(["pgrep", "-f", f"{server_path}"], capture_output=True, text=True).stdout
    assert running.strip() == "", "a drill left a Redis server or Sentinel running"
    if network.available() is None:
        spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not [n for n in spaces.split() if n.startswith(f"slr{SEED}")], spaces


@needs_namespaces
def test_plain_loses_acknowledged_writes_when_the_master_is_cut_off(server_path: Path) -> None:
    r = _partition(server_path, "plain")
    c = r.verdict.count
    # The cut-off master's own client went on being acknowledged, and those writes are not on the new master.
    assert c.lost > 100, c.line()
    assert "no_lost_writes" in r.verdict.failed() and "no_split_brain" in r.verdict.failed()
    assert r.verdict.split_brain > 0
    # About 2.5 s (down-after 1 s, the vote, the promotion); a split vote between s1 and s2 retries
    # after twice failover-timeout (6 s).
    assert r.failover_s is not None and r.failover_s < 12.0
    assert r.new_primary == "r1"
    _nothing_left(server_path)


@needs_namespaces
def test_wait_acknowledges_only_replicated_writes_and_loses_none(server_path: Path) -> None:
    r = _partition(server_path, "wait")
    c = r.verdict.count
    assert c.acknowledged > 100, c.line()
    assert c.lost == 0 and r.verdict.split_brain == 0, c.line()
    assert r.verdict.valid, r.verdict.failed()
    # The cut-off master's own client reached it, but WAIT never counted a replica: none acknowledged.
    assert r.fault_us is not None
    cut_off = _writes(r, "m", after_us=r.fault_us + 500_000)
    assert cut_off and not [op for op in cut_off if op.type == "ok"]
    assert [op for op in cut_off if "not replicated" in op.value.get("error", "")]
    _nothing_left(server_path)


@needs_namespaces
def test_min_replicas_makes_the_cut_off_master_refuse_writes_after_the_lag(server_path: Path) -> None:
    r = _partition(server_path, "min_replicas")
    assert r.fault_us is not None
    acks = _old_master_acks(r)
    # Redis measures the replica's lag in whole seconds and refreshes it once a second: the cut-off
    # master refuses within max-lag + 2 s, and acknowledges nothing after.
    limit_us = r.fault_us + (TIMERS.min_replicas_max_lag_s + 2) * 1_000_000
    assert max(acks) <= limit_us, (max(acks) - r.fault_us) / 1e6
    refused = [op for op in _writes(r, "m", after_us=r.fault_us) if op.type == "fail"]
    assert [op for op in refused if "NOREPLICAS" in op.value["error"]], "the cut-off master never said NOREPLICAS"
    c = r.verdict.count
    # What it may lose is what the old master acknowledged before refusing: async replication's exposure.
    exposed = [t for t in acks if t >= r.fault_us]
    assert 0 < c.lost <= len(exposed) + 5, c.line()
    _nothing_left(server_path)


def _writes(r: DrillResult, tag: str, *, after_us: int) -> list[Op]:
    """Completions of the writes client `tag` invoked after `after_us`."""
    invoked = {op.index for op in r.history if op.f == "write" and op.type == "invoke"
               and op.process.startswith(tag) and op.time_us > after_us}
    return [op for op in r.history if op.type != "invoke" and op.index in invoked]


def test_the_client_asks_sentinel_again_after_the_master_is_demoted(server_path: Path) -> None:
    """After a switch (SENTINEL FAILOVER) the old master becomes a replica: the client's next write gets
    READONLY, is refused (certainly not written), and the one after goes to the new master."""
    cluster = RedisCluster(server_path / "cluster", design="plain", timers=TIMERS)

    async def go() -> None:
        client = SentinelClient(cluster.sentinel_addresses(), SERVICE, timeout_s=1.0)
        try:
            _, first = await client.write("SET", "k", "1")
            assert first == cluster.data["r0"].endpoint
            with contextlib.closing(cluster.sentinels["s2"].client()) as s:
                s.execute_command("SENTINEL", "FAILOVER", SERVICE)
            new = cluster.data["r1"]
            for _ in range(100):  # every Sentinel names the new master (the others learn it within 2 s)
                if all(_named(s) == new.endpoint for s in cluster.sentinels.values()):
                    break
                await asyncio.sleep(0.1)
            # Sentinel would demote the old master itself some 10 s later; the test does it now.
            with contextlib.closing(cluster.data["r0"].client()) as old:
                old.replicaof(new.address, new.port)
            with pytest.raises(WriteRefused, match="refused"):
                await client.write("SET", "k", "2")
            assert client.master is None
            _, second = await client.write("SET", "k", "3")
            assert second == cluster.data["r1"].endpoint
        finally:
            await client.close()

    try:
        cluster.start()
        asyncio.run(go())
    finally:
        cluster.close()
    _nothing_left(server_path)


def _named(sentinel: RedisNode) -> str:
    with contextlib.closing(sentinel.client()) as c:
        host, port = c.sentinel_get_master_addr_by_name(SERVICE)
    return f"{host}:{port}"


def test_the_drill_command_names_the_redis_designs_on_bad_input() -> None:
    from typer.testing import CliRunner

    from saaslab.cli import app as cli_app

    runner = CliRunner()
    for args, words in ((["--component", "redis", "--design", "sync"], "unknown redis design 'sync'; choose one of: "
                                                                       "plain, wait, min_replicas"),
                        (["--component", "mysql"], "unknown component 'mysql'"),
                        (["--component", "redis", "--fault", "flood"], "unknown fault 'flood'")):
        result = runner.invoke(cli_app, ["failover", "drill", *args])
        assert result.exit_code == 2 and words in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output
