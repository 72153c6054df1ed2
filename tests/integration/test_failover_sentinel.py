"""The service with Redis Sentinel (`SAASLAB_REDIS_SENTINELS`): `GET /admin/topology` shows Sentinel's view
of the master, replica and Sentinels, and follows a `SENTINEL FAILOVER`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_app import live_service

from reference_impl.failover.redis_cluster import SERVICE, RedisCluster
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
