"""The service with Redis Sentinel (`SAASLAB_REDIS_SENTINELS`): `GET /admin/topology` shows Sentinel's view
of the master, replica and Sentinels, and the service's Redis clients (the hot path's `ScriptRunner`, the
general redis-py client) find the master through Sentinel and follow a `SENTINEL FAILOVER` without a
restart (each test about 5 s: a real master, replica and three Sentinels)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_app import live_service
from redis.exceptions import ConnectionError as RedisConnectionError

from reference_impl.common.redis_client import ScriptRunner, make_redis, sentinel_master
from reference_impl.failover.redis_cluster import SERVICE, RedisCluster, RedisNode
from saaslab.settings import Settings, sentinel_addresses

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def cluster(server_path: Path) -> Iterator[RedisCluster]:
    """Master r0, replica r1 and three Sentinels on 127.0.0.1, stopped afterwards."""
    cluster = RedisCluster(server_path / "redis", design="plain")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def sentinels_setting(cluster: RedisCluster) -> str:
    return ",".join(f"{host}:{port}" for host, port in cluster.sentinel_addresses())


def switch_master(cluster: RedisCluster) -> None:
    with contextlib.closing(cluster.sentinels["s2"].client()) as sentinel:
        sentinel.execute_command("SENTINEL", "FAILOVER", SERVICE)


def named_master(sentinel: RedisNode) -> str:
    with contextlib.closing(sentinel.client()) as c:
        host, port = c.sentinel_get_master_addr_by_name(SERVICE)
    return f"{host}:{port}"


async def until_every_sentinel_names(cluster: RedisCluster, endpoint: str) -> None:
    async def named() -> bool:
        return all(named_master(s) == endpoint for s in cluster.sentinels.values())

    await until(named)


async def until(check: Any, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout_s:g} s")


async def test_the_topology_names_sentinels_master_replica_and_sentinels_and_follows_a_failover(
        settings: Settings, cluster: RedisCluster) -> None:
    r0, r1 = cluster.data["r0"].endpoint, cluster.data["r1"].endpoint
    async with live_service(settings, redis_sentinels=sentinels_setting(cluster), redis_master_name=SERVICE) as svc:
        async def redis_part() -> dict[str, Any]:
            r = await svc.client.get("/admin/topology", headers=svc.admin)
            assert r.status_code == 200, r.text
            return r.json()["redis"]

        tenant = await svc.new_tenant()  # the hot path's round trip, on Sentinel's master
        assert (await svc.client.get("/v1/projects", headers=tenant.headers)).status_code == 200
        assert await redis_part() == {"master": r0, "replicas": [r1],
                                      "sentinels": sorted(s.endpoint for s in cluster.sentinels.values())}
        switch_master(cluster)

        async def switched() -> bool:
            part = await redis_part()
            return part["master"] == r1 and part["replicas"] == [r0] and len(part["sentinels"]) == 3

        await until(switched)


def test_sentinels_are_host_port_pairs() -> None:
    assert sentinel_addresses(" 10.0.0.1:26379, sentinel-b:26380 ,") == [("10.0.0.1", 26379), ("sentinel-b", 26380)]
    for bad in ("10.0.0.1", "h:port", ":26379", "h:0", "h:70000"):
        with pytest.raises(ValueError, match="SAASLAB_REDIS_SENTINELS"):
            Settings(redis_sentinels=bad)


INCR = "return redis.call('INCR', KEYS[1])"


async def test_the_script_runner_and_the_general_client_follow_the_master_across_a_failover(
        settings: Settings, cluster: RedisCluster) -> None:
    """After the switch the old master is a replica: the call the runner sends it gets READONLY, fails as a
    ConnectionError (the service's 503), and the calls after it go to the new master, with no restart."""
    r0, r1 = cluster.data["r0"], cluster.data["r1"]
    # The URL's host is never used with Sentinels: the address is Sentinel's.
    with_sentinels = settings.model_copy(update={"redis_url": "redis://nowhere.invalid:1/0",
                                                 "redis_sentinels": sentinels_setting(cluster),
                                                 "redis_master_name": SERVICE})
    runner = ScriptRunner(with_sentinels.redis_url or "", INCR, sentinel=sentinel_master(with_sentinels))
    general = make_redis(with_sentinels)
    try:
        assert [await runner(("hits",), ()) for _ in range(3)] == [1, 2, 3]
        assert int(await general.get("hits")) == 3
        with contextlib.closing(r0.client()) as c:
            assert c.get("hits") == "3"  # on r0, the first master

        switch_master(cluster)
        await until_every_sentinel_names(cluster, r1.endpoint)
        # Sentinel demotes a reachable old master itself some seconds later; the test does it now.
        with contextlib.closing(r0.client()) as old:
            old.replicaof(r1.address, r1.port)

        failed = 0
        answers = []
        for _ in range(50):
            try:
                answers.append(await runner(("hits",), ()))
            except RedisConnectionError:
                failed += 1
                await asyncio.sleep(0.1)
            if len(answers) == 3:
                break
        assert failed <= 3 and answers == [4, 5, 6], (failed, answers)  # r1 had the first three, replicated
        with contextlib.closing(r1.client()) as c:
            assert c.get("hits") == "6"
        # redis-py's Sentinel connection turns the old master's READONLY into a ConnectionError and drops itself.
        with contextlib.suppress(RedisConnectionError):
            await general.set("general", "on-r1")
        assert await general.set("general", "on-r1")
        with contextlib.closing(r1.client()) as c:
            assert c.get("general") == "on-r1"
    finally:
        await runner.close()
        await general.aclose()


def test_a_script_writing_on_a_replica_fails_as_a_lost_master_not_as_a_script_error(server_path: Path) -> None:
    """redis-py reports a script's write on a replica as a plain ResponseError (`... -READONLY ...`); `Script` turns
    it into a ConnectionError, which the service answers 503, never 500."""
    from redis.asyncio import Redis

    from reference_impl.common.redis_client import Script
    from saaslab.servers import RedisServer

    master = RedisServer(server_path / "master")
    master.start()
    replica = RedisServer(server_path / "replica", args=("--replicaof", "127.0.0.1", str(master.port)))
    try:
        replica.start()
        script = Script("return redis.call('INCR', KEYS[1])")

        async def run() -> None:
            client = Redis.from_url(replica.url())
            try:
                with pytest.raises(RedisConnectionError, match="became a replica"):
                    await script(client, ["counter"], [])
            finally:
                await client.aclose()

        asyncio.run(run())
    finally:
        replica.stop()
        master.stop()
