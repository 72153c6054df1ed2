"""Failover's service face without a cluster: writes on the service's own database, tenant-scoped; a 503
with Retry-After (never a 500) when no member answers; `GET /admin/topology` in the contract's shape.
The same routes during a real failover are tests/e2e/test_load_failover.py's."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from live_app import live_service
from pydantic import ValidationError

from saaslab.patterns.failover import member_urls
from saaslab.settings import Settings

pytestmark = pytest.mark.integration
WRITES = "/v1/failover/writes"


async def test_writes_are_acknowledged_once_and_read_back_by_their_tenant_only(settings: Settings) -> None:
    async with live_service(settings) as svc:
        alice, bob = await svc.new_tenant(), await svc.new_tenant()
        first = await svc.client.post(WRITES, json={"id": "w-1"}, headers=alice.headers)
        assert first.status_code == 201, first.text
        assert first.json()["created"] is True and first.json()["id"] == "w-1"
        again = await svc.client.post(WRITES, json={"id": "w-1"}, headers=alice.headers)
        assert again.status_code == 200 and again.json()["created"] is False
        assert (await svc.client.post(WRITES, json={"id": "w-1"}, headers=bob.headers)).status_code == 201
        assert (await svc.client.get(f"{WRITES}/w-1", headers=alice.headers)).status_code == 200
        assert (await svc.client.get(f"{WRITES}/w-2", headers=alice.headers)).status_code == 404
        await svc.client.post(WRITES, json={"id": "only-alice"}, headers=alice.headers)
        missing = await svc.client.get(f"{WRITES}/only-alice", headers=bob.headers)
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("body", [{}, {"id": ""}, {"id": "has space"}, {"id": "x" * 201}, {"id": 5},
                                  {"id": "w", "tenant_id": "other"}])
async def test_bad_writes_are_refused_with_a_problem(settings: Settings, body: dict) -> None:
    async with live_service(settings) as svc:
        tenant = await svc.new_tenant()
        r = await svc.client.post(WRITES, json=body, headers=tenant.headers)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith("application/problem+json")


async def test_no_member_answering_is_a_503_with_retry_after_and_the_topology_says_so(settings: Settings) -> None:
    dead = "n0=postgresql://postgres@127.0.0.1:1/postgres,n1=postgresql://postgres@127.0.0.1:2/postgres"
    async with live_service(settings, failover_members=dead) as svc:
        tenant = await svc.new_tenant()
        for _ in range(3):  # the first searches, the next are refused at once (RECHECK_S)
            r = await svc.client.post(WRITES, json={"id": "w-1"}, headers=tenant.headers)
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"] == "1"
            assert r.json()["type"].endswith("/write-refused")
        probe = await svc.client.get(f"{WRITES}/w-1", headers=tenant.headers)
        assert probe.status_code == 503 and probe.headers["Retry-After"] == "1"
        topology = await svc.client.get("/admin/topology", headers=svc.admin)
        assert topology.status_code == 200, topology.text
        assert topology.json()["postgres"] == {"primary": None, "replicas": [], "timeline": None, "replication": "sync"}


async def test_the_topology_of_the_services_own_database(settings: Settings) -> None:
    async with live_service(settings, failover="async") as svc:
        assert (await svc.client.get("/admin/topology")).status_code == 401
        r = await svc.client.get("/admin/topology", headers=svc.admin)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "postgres": {"primary": "main", "replicas": [], "timeline": r.json()["postgres"]["timeline"],
                         "replication": "async"},
            # No Sentinel configured: the one Redis the service uses.
            "redis": {"master": redis_endpoint(settings), "replicas": [], "sentinels": []},
            "design": {"postgres": "async", "redis": "min_replicas"},
        }


def redis_endpoint(settings: Settings) -> str:
    url = urlsplit(settings.redis_url or "")
    return f"{url.hostname}:{url.port or 6379}"


def test_members_are_named_urls() -> None:
    assert member_urls(" n0=postgresql://postgres@10.0.0.2:5432/postgres?sslmode=disable ,"
                       "postgres://u@h:5433/db") == {
        "n0": "postgresql://postgres@10.0.0.2:5432/postgres?sslmode=disable", "h:5433": "postgres://u@h:5433/db"}
    for bad in ("n0=http://h/db", "n0=postgresql://h/db,n0=postgresql://g/db", "n0=postgresql:///db"):
        with pytest.raises(ValidationError, match="SAASLAB_FAILOVER_MEMBERS"):
            Settings(failover_members=bad)
