"""Sharding on real PostgreSQL shard servers (saaslab/servers.py's PostgresServer): tenants routed to their
shard, moved online under concurrent writers, isolated, resharded, and the admin surface of docs/contract.md.

Two apps share the shards and the control database, as two workers would: each has its own placement cache,
so a writer in the app that does not run the move sees the cutover only through the fence and the lease.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from live_app import LiveService, TenantHandle, live_service
from psycopg import sql

from reference_impl.sharding.core import make_router
from reference_impl.sharding.invariants import ShardWorld, check
from reference_impl.sharding.servers import ShardServers
from saaslab.history import History
from saaslab.settings import Settings

pytestmark = pytest.mark.integration
SERVERS = 5  # 3 active + 2 spares (an isolation and an added shard)


@pytest.fixture(scope="module")
def shard_servers() -> Iterator[ShardServers]:
    # Outside pytest's private tmp tree, which the shard servers' unprivileged user could be shut out of
    # (see the `server_path` fixture in tests/conftest.py).
    root = Path(tempfile.mkdtemp(prefix="saaslab-shards-"))
    root.chmod(0o755)
    servers = ShardServers(root, SERVERS)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()
        shutil.rmtree(root, ignore_errors=True)


def _create_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return f"{base}/{name}"


@pytest.fixture
def sharded(own_settings: Settings, shard_servers: ShardServers) -> Settings:
    """Settings on a fresh control database and fresh databases on every shard server."""
    tag = f"t_{uuid.uuid4().hex[:10]}"
    urls = [_create_db(u, tag) for u in shard_servers.urls]
    return own_settings.model_copy(update={"shard_urls": ",".join(urls), "shards": 3, "shard_fence_backlog": 5})


class Run:
    """Writers and readers recording a history; the final state read straight from every shard."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.history = History()
        self.keys = itertools.count()
        self.acked: list[tuple[str, str]] = []  # (key, id)

    async def write(self, svc: LiveService, tenant: TenantHandle, writer: str) -> None:
        key = f"w{next(self.keys)}-{uuid.uuid4().hex[:6]}"
        inv = self.history.invoke("write", {"tenant": tenant.id, "key": key}, process=writer)
        try:
            r = await svc.client.post("/v1/projects", json={"name": key}, headers=tenant.headers)
        except Exception as e:  # the answer is lost: unknown outcome
            self.history.complete(inv, "info", {"error": type(e).__name__})
            return
        if r.status_code == 201:
            self.history.complete(inv, "ok", {"id": r.json()["id"]})
            self.acked.append((key, r.json()["id"]))
        else:
            self.history.complete(inv, "fail", {"status": r.status_code})

    async def read(self, svc: LiveService, tenant: TenantHandle) -> None:
        if not self.acked:
            return
        key, object_id = self.acked[-1]
        inv = self.history.invoke("read", {"tenant": tenant.id, "key": key}, process="reader")
        r = await svc.client.get(f"/v1/projects/{object_id}", headers=tenant.headers)
        if r.status_code in (200, 404):
            self.history.complete(inv, "ok", {"found": r.status_code == 200})
        else:
            self.history.complete(inv, "fail", {"status": r.status_code})

    def world(self, directory: dict[str, int], initial: dict[str, int]) -> ShardWorld:
        shards: dict[str, dict[str, list[str]]] = {}
        for i, url in enumerate(self.settings.shard_urls.split(",")):
            with psycopg.connect(url, autocommit=True) as c:
                rows = c.execute("SELECT tenant_id::text, name FROM projects").fetchall()
            per: dict[str, list[str]] = {}
            for tenant, name in rows:
                per.setdefault(tenant, []).append(name)
            shards[str(i)] = per
        return ShardWorld.from_dict({"shards": shards, "directory": directory, "initial": initial})


async def _job(svc: LiveService, job_id: str, timeout_s: float = 30) -> dict[str, Any]:
    for _ in range(int(timeout_s / 0.05)):
        r = await svc.client.get(f"/admin/jobs/{job_id}", headers=svc.admin)
        assert r.status_code == 200, r.text
        if r.json()["state"] != "running":
            return r.json()
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} still running")


async def _placement(svc: LiveService, tenant_id: str) -> dict[str, Any]:
    r = await svc.client.get(f"/admin/tenants/{tenant_id}/placement", headers=svc.admin)
    assert r.status_code == 200, r.text
    return r.json()


async def _two_workers(settings: Settings, stack: AsyncExitStack) -> tuple[LiveService, LiveService]:
    a = await stack.enter_async_context(live_service(settings, lab_mode=True))
    b = await stack.enter_async_context(live_service(settings))
    return a, b


async def _move_under_writers(settings: Settings) -> tuple[Run, ShardWorld, dict[str, Any], int, int]:
    run = Run(settings)
    async with AsyncExitStack() as stack:
        mover_app, other = await _two_workers(settings, stack)
        tenant = await mover_app.new_tenant()
        for _ in range(30):
            await run.write(mover_app, tenant, "seed")
        source = (await _placement(mover_app, tenant.id))["shard"]
        target = (source + 1) % 3
        # A slow cutover (150 ms before the flip): the fence holds writes that long; without it they land on the source.
        r = await mover_app.client.post("/admin/faults", json={"point": "sharding.cutover", "mode": "delay",
                                                               "delay_ms": 150, "count": 1}, headers=mover_app.admin)
        assert r.status_code in (200, 201), r.text
        stop = asyncio.Event()

        async def writer(i: int) -> None:
            svc = (mover_app, other)[i % 2]
            while not stop.is_set():
                await run.write(svc, tenant, f"writer-{i}")

        async def reader() -> None:
            while not stop.is_set():
                await run.read(other, tenant)
                await asyncio.sleep(0.005)

        tasks = [asyncio.create_task(writer(i)) for i in range(8)] + [asyncio.create_task(reader())]
        await asyncio.sleep(0.3)
        r = await mover_app.client.post(f"/admin/tenants/{tenant.id}/move", json={"to": target},
                                        headers=mover_app.admin)
        assert r.status_code == 202, r.text
        job = await _job(mover_app, r.json()["job_id"])
        await asyncio.sleep(0.4)  # writers keep going past the lease: stale placements would show now
        stop.set()
        await asyncio.gather(*tasks)
        placement = await _placement(mover_app, tenant.id)
        world = run.world({tenant.id: placement["shard"]}, {})
    return run, world, job, source, target


async def test_a_move_under_8_writers_keeps_exactly_the_acknowledged_writes_on_the_target(sharded: Settings) -> None:
    run, world, job, source, target = await _move_under_writers(sharded)
    assert job["state"] == "done", job
    assert job["write_blocked_ms"] > 0 and job["copied_rows"] >= 30
    results = check(run.history.ops, world)
    assert all(r.valid for r in results), [r.to_dict() for r in results if not r.valid]
    acked = {op.value["key"] for op in run.history.ops if op.f == "write" and op.type == "ok"}
    tenant = next(iter(world.directory))
    assert sorted(world.shards[str(target)][tenant]) == sorted(acked)  # exactly those, each once
    assert not world.shards[str(source)].get(tenant)
    assert len(acked) > 60  # the writers really wrote during the move


async def test_the_unsafe_mover_fails_the_same_test(sharded: Settings) -> None:
    run, world, job, _source, _target = await _move_under_writers(sharded.model_copy(update={"shard_mover": "unsafe"}))
    assert job["write_blocked_ms"] == 0
    verdict = {r.name: r for r in check(run.history.ops, world)}
    assert not verdict["acknowledged_writes_once"].valid, verdict["acknowledged_writes_once"]


async def test_isolate_the_hot_tenant_then_add_a_shard_and_rebalance(sharded: Settings) -> None:
    async with live_service(sharded) as svc:
        tenants = [await svc.new_tenant() for _ in range(8)]
        for i, t in enumerate(tenants):
            for _ in range(1 + 3 * (i == 0)):
                await svc.create_project(t)
        before = {t.id: (await _placement(svc, t.id))["shard"] for t in tenants}
        r = await svc.client.post(f"/admin/tenants/{tenants[0].id}/isolate", headers=svc.admin)
        assert r.status_code == 202, r.text
        job = await _job(svc, r.json()["job_id"])
        assert job["state"] == "done" and job["kind"] == "isolate", job
        hot = await _placement(svc, tenants[0].id)
        assert hot["shard"] == 3 and hot["epoch"] == 1
        listed = {s["shard"]: s for s in (await svc.client.get("/admin/shards", headers=svc.admin)).json()}
        assert listed[3] == {"shard": 3, "tenants": 1, "rows": 4, "state": "active", "answered": True}
        assert listed[4]["state"] == "new" and sum(s["rows"] for s in listed.values()) == 11
        r = await svc.client.post("/admin/shards", json={}, headers=svc.admin)
        assert r.status_code == 202, r.text
        job = await _job(svc, r.json()["job_id"])
        assert job["state"] == "done", job
        after = {t.id: (await _placement(svc, t.id))["shard"] for t in tenants}
        assert 4 in after.values() and after[tenants[0].id] == 3
        assert {t: s for t, s in after.items() if s != before[t] and t != tenants[0].id}  # someone moved to 4
        for t in tenants:  # every tenant still reads its projects through /v1
            assert len(await svc.all_items(t, "projects")) == (4 if t is tenants[0] else 1)
        r = await svc.client.post("/admin/shards", json={}, headers=svc.admin)
        assert r.status_code == 409 and "spare" in r.json()["detail"]


async def test_resharding_a_hash_router_moves_exactly_the_tenants_whose_hash_changes(sharded: Settings) -> None:
    async with live_service(sharded.model_copy(update={"shard_router": "jump"})) as svc:
        tenants = [await svc.new_tenant() for _ in range(12)]
        for t in tenants:
            await svc.create_project(t)
        jump3, jump4 = make_router("jump", [0, 1, 2]), make_router("jump", [0, 1, 2, 3])
        assert [(await _placement(svc, t.id))["shard"] for t in tenants] == [jump3.shard_for(t.id) for t in tenants]
        r = await svc.client.post("/admin/shards", json={}, headers=svc.admin)
        job = await _job(svc, r.json()["job_id"])
        assert job["state"] == "done", job
        movers = {m["tenant"] for m in job["moves"]}
        assert movers == {t.id for t in tenants if jump3.shard_for(t.id) != jump4.shard_for(t.id)}
        assert [(await _placement(svc, t.id))["shard"] for t in tenants] == [jump4.shard_for(t.id) for t in tenants]
        assert [len(await svc.all_items(t, "projects")) for t in tenants] == [1] * len(tenants)


async def test_a_scatter_gather_answers_without_a_stopped_shard_and_says_so(
        sharded: Settings, shard_servers: ShardServers) -> None:
    async with live_service(sharded.model_copy(update={"shard_query_timeout_s": 0.5})) as svc:
        shard_servers.servers[1].pause()
        try:
            r = await svc.client.get("/admin/shards", headers=svc.admin)
        finally:
            shard_servers.servers[1].resume()
        assert r.status_code == 200
        listed = {s["shard"]: s for s in r.json()}
        assert listed[1]["answered"] is False and "0.5 s" in listed[1]["error"] and listed[1]["rows"] is None
        assert all(s["answered"] for k, s in listed.items() if k != 1)


async def test_bad_admin_requests_get_problems(sharded: Settings) -> None:
    async with live_service(sharded) as svc:
        t = await svc.new_tenant()
        here = (await _placement(svc, t.id))["shard"]
        cases = [
            ("post", f"/admin/tenants/{t.id}/move", {"to": 99}, 422),
            ("post", f"/admin/tenants/{t.id}/move", {"to": here}, 409),
            ("post", f"/admin/tenants/{t.id}/move", {"to": "x"}, 422),
            ("post", f"/admin/tenants/{uuid.uuid4()}/move", {"to": 0}, 404),
            ("post", "/admin/tenants/not-a-uuid/isolate", None, 404),
            ("get", "/admin/jobs/nope", None, 404),
            ("get", f"/admin/jobs/{uuid.uuid4()}", None, 404),
            ("get", f"/admin/tenants/{uuid.uuid4()}/placement", None, 404),
        ]
        for method, path, body, status in cases:
            r = await svc.client.request(method.upper(), path, json=body, headers=svc.admin)
            assert r.status_code == status, (path, body, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")


async def test_without_shard_urls_the_main_database_is_the_one_shard(own_settings: Settings) -> None:
    async with live_service(own_settings) as svc:
        t = await svc.new_tenant()
        await svc.create_project(t)
        assert await _placement(svc, t.id) == {"tenant_id": t.id, "shard": 0, "epoch": 0}
        listed = (await svc.client.get("/admin/shards", headers=svc.admin)).json()
        assert listed == [{"shard": 0, "tenants": 1, "rows": 1, "state": "active", "answered": True}]
        r = await svc.client.post(f"/admin/tenants/{t.id}/move", json={"to": 1}, headers=svc.admin)
        assert r.status_code == 409 and "SAASLAB_SHARD_URLS" in r.json()["detail"]



async def test_new_tenants_under_the_directory_go_to_the_shard_with_the_fewest_tenants(sharded: Settings) -> None:
    async with live_service(sharded) as svc:
        tenants = [await svc.new_tenant() for _ in range(9)]
        shards = [(await _placement(svc, t.id))["shard"] for t in tenants]
        assert sorted(shards.count(s) for s in (0, 1, 2)) == [3, 3, 3], shards


async def test_a_worker_that_dies_mid_move_leaves_a_job_that_another_worker_resumes(sharded: Settings) -> None:
    async with live_service(sharded) as b:
        a_stack = AsyncExitStack()
        a = await a_stack.enter_async_context(live_service(sharded, lab_mode=True))
        tenant = await a.new_tenant()
        for i in range(20):
            await a.create_project(tenant, f"p{i}")
        source = (await _placement(a, tenant.id))["shard"]
        target = (source + 1) % 3
        # A's move stops at its cutover with the fence up (a minute-long delay), then A's heartbeat stops: as if it died.
        r = await a.client.post("/admin/faults", json={"point": "sharding.cutover", "mode": "delay", "delay_ms": 60_000,
                                                       "count": 1}, headers=a.admin)
        assert r.status_code in (200, 201), r.text
        r = await a.client.post(f"/admin/tenants/{tenant.id}/move", json={"to": target}, headers=a.admin)
        job_id = r.json()["job_id"]
        for _ in range(200):
            job = (await b.client.get(f"/admin/jobs/{job_id}", headers=b.admin)).json()
            if job.get("step") == "flip":
                break
            await asyncio.sleep(0.05)
        assert job["state"] == "running" and job["step"] == "flip", job
        assert (await _placement(b, tenant.id))["fenced"] is True
        a.app.state.shard_jobs._heartbeats[job_id].cancel()
        with psycopg.connect(sharded.database_url or "", autocommit=True) as c:
            c.execute("UPDATE shard_jobs SET heartbeat_at = now() - interval '1 hour' WHERE id = %s", (job_id,))
        await b.app.state.shard_jobs.recover()  # B's own pass, every 5 s, may have taken it over first
        job = await _job(b, job_id)
        with psycopg.connect(sharded.database_url or "", autocommit=True) as c:
            owner = c.execute("SELECT owner FROM shard_jobs WHERE id = %s", (job_id,)).fetchone()
        assert owner == (b.app.state.shard_jobs.worker,)
        assert job["state"] == "done" and job["moves"][0]["target_rows"] == 20, job
        await a_stack.aclose()  # A wakes up cancelled: the job is no longer its own, so it undoes nothing
        assert (await b.client.get(f"/admin/jobs/{job_id}", headers=b.admin)).json()["state"] == "done"
        assert await _placement(b, tenant.id) == {"tenant_id": tenant.id, "shard": target, "epoch": 1, "fenced": False}
        assert sorted(p["name"] for p in await b.all_items(tenant, "projects")) == sorted(f"p{i}" for i in range(20))
        with psycopg.connect(sharded.shard_urls.split(",")[source], autocommit=True) as c:
            assert c.execute("SELECT count(*) FROM projects WHERE tenant_id = %s", (tenant.id,)).fetchone() == (0,)


async def test_moves_under_schema_isolation_are_refused(sharded: Settings) -> None:
    async with live_service(sharded.model_copy(update={"isolation": "schema"})) as svc:
        t = await svc.new_tenant()
        await svc.create_project(t)  # its schema is made on its shard, where its rows go
        assert len(await svc.all_items(t, "projects")) == 1
        for method, path, body in (("post", f"/admin/tenants/{t.id}/move", {"to": 2}),
                                   ("post", f"/admin/tenants/{t.id}/isolate", None), ("post", "/admin/shards", {})):
            r = await svc.client.request(method.upper(), path, json=body, headers=svc.admin)
            assert r.status_code == 409 and "SAASLAB_ISOLATION" in r.json()["detail"], r.text
            assert r.headers["content-type"].startswith("application/problem+json")


async def test_the_completer_publishes_a_recovered_payment_on_the_tenants_shard(sharded: Settings) -> None:
    from reference_impl.background import completer_for

    async with live_service(sharded) as svc:
        t = await svc.new_tenant()
        shard = (await _placement(svc, t.id))["shard"]
        paid = _Paid(uuid.uuid4(), t.id, 700, "EUR", "succeeded")
        async with completer_for(sharded, migrate=False) as completer:
            await completer.publish(paid)
        assert [p["id"] for p in await svc.all_items(t, "payments")] == [str(paid.id)]
        with psycopg.connect(sharded.shard_urls.split(",")[shard], autocommit=True) as c:
            assert c.execute("SELECT count(*) FROM payments WHERE id = %s", (paid.id,)).fetchone() == (1,)
        with psycopg.connect(sharded.database_url or "", autocommit=True) as c:
            assert c.execute("SELECT count(*) FROM payments WHERE id = %s", (paid.id,)).fetchone() == (0,)


@dataclass(frozen=True)
class _Paid:
    id: uuid.UUID
    tenant_id: str
    amount: int
    currency: str
    status: str
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
