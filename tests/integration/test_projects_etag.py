"""Optimistic concurrency on projects (docs/contract.md, "Tenant-scoped resources"), under every isolation design:
GET carries the version as ETag, PATCH with If-Match writes only over that version (200 / 412 / 428), and
50 clients doing read-modify-write at once on one project lose no update and apply none twice."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
import pytest_asyncio
from live_app import LiveService, TenantHandle, live_service

from saaslab.settings import Settings

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
DESIGNS = ("filtered", "rls", "schema")


@pytest_asyncio.fixture(scope="module", params=DESIGNS)
async def svc(settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[LiveService]:
    async with live_service(settings, isolation=request.param) as live:
        yield live


async def _project(svc: LiveService) -> tuple[TenantHandle, str]:
    r = await svc.client.post("/admin/tenants", headers=svc.admin, json={
        "name": f"etag-{uuid.uuid4().hex[:8]}", "plan": "enterprise", "limits": {"requests": 1_000_000, "window_s": 1}})
    assert r.status_code == 201, r.text
    tenant = TenantHandle(r.json()["tenant_id"], r.json()["api_key"], "enterprise")
    return tenant, (await svc.create_project(tenant, "start"))["id"]


async def _patch(svc: LiveService, tenant: TenantHandle, pid: str, name: str, if_match: str | None):
    headers = dict(tenant.headers)
    if if_match is not None:
        headers["If-Match"] = if_match
    return await svc.client.patch(f"/v1/projects/{pid}", json={"name": name}, headers=headers)


async def test_a_patch_over_the_version_read_succeeds_and_bumps_the_etag(svc: LiveService) -> None:
    tenant, pid = await _project(svc)
    read = await svc.client.get(f"/v1/projects/{pid}", headers=tenant.headers)
    assert read.status_code == 200 and read.headers["ETag"] == '"1"'
    r = await _patch(svc, tenant, pid, "renamed", read.headers["ETag"])
    assert r.status_code == 200, r.text
    assert r.headers["ETag"] == '"2"' and r.json()["name"] == "renamed" and r.json()["id"] == pid
    again = await svc.client.get(f"/v1/projects/{pid}", headers=tenant.headers)
    assert again.headers["ETag"] == '"2"' and again.json()["name"] == "renamed"
    listed = await svc.all_items(tenant, "projects")
    assert [p["name"] for p in listed if p["id"] == pid] == ["renamed"]


async def test_a_stale_tag_is_412_and_changes_nothing(svc: LiveService) -> None:
    tenant, pid = await _project(svc)
    assert (await _patch(svc, tenant, pid, "first", '"1"')).status_code == 200
    for stale in ('"1"', 'W/"2"', '"not-a-version"', "garbage", '"1", "3"'):
        r = await _patch(svc, tenant, pid, "lost", stale)
        assert r.status_code == 412, (stale, r.text)
        assert r.headers["content-type"].startswith(PROBLEM) and r.json()["type"].endswith("/precondition-failed")
    assert (await _patch(svc, tenant, pid, "second", '"1", "2"')).headers["ETag"] == '"3"'
    got = await svc.client.get(f"/v1/projects/{pid}", headers=tenant.headers)
    assert got.json()["name"] == "second" and got.headers["ETag"] == '"3"'


async def test_no_if_match_is_428_and_a_star_writes_over_any_version(svc: LiveService) -> None:
    tenant, pid = await _project(svc)
    r = await _patch(svc, tenant, pid, "blind", None)
    assert r.status_code == 428 and r.json()["type"].endswith("/precondition-required")
    assert r.headers["content-type"].startswith(PROBLEM)
    assert (await svc.client.get(f"/v1/projects/{pid}", headers=tenant.headers)).json()["name"] == "start"
    r = await _patch(svc, tenant, pid, "blind", "*")
    assert r.status_code == 200 and r.headers["ETag"] == '"2"'


async def test_another_tenants_project_is_404_whatever_the_tag(svc: LiveService) -> None:
    owner, pid = await _project(svc)
    other = await svc.new_tenant()
    for tag in ('"1"', "*"):
        r = await _patch(svc, other, pid, "stolen", tag)
        assert r.status_code == 404, r.text
    assert (await _patch(svc, owner, str(uuid.uuid4()), "x", '"1"')).status_code == 404
    assert (await _patch(svc, owner, "not-a-uuid", "x", '"1"')).status_code == 404
    got = await svc.client.get(f"/v1/projects/{pid}", headers=owner.headers)
    assert got.json()["name"] == "start" and got.headers["ETag"] == '"1"'


async def test_bad_bodies_are_422_before_any_write(svc: LiveService) -> None:
    tenant, pid = await _project(svc)
    for body in ({}, {"name": ""}, {"name": 5}, {"name": "x", "tenant_id": "t"}):
        r = await svc.client.patch(f"/v1/projects/{pid}", json=body, headers={**tenant.headers, "If-Match": '"1"'})
        assert r.status_code == 422, (body, r.text)
    assert (await svc.client.get(f"/v1/projects/{pid}", headers=tenant.headers)).headers["ETag"] == '"1"'


CLIENTS = 50


async def test_concurrent_read_modify_write_loses_no_update(svc: LiveService) -> None:
    """Each client reads, writes its tag over the version it read, and on 412 reads again, until it succeeds."""
    tenant, pid = await _project(svc)
    applied: list[tuple[str, int, int]] = []  # (tag, version read, version written)
    refused = 0

    async def client(tag: str) -> None:
        nonlocal refused
        while True:
            read = await svc.client.get(f"/v1/projects/{pid}", headers=tenant.headers)
            assert read.status_code == 200, read.text
            r = await _patch(svc, tenant, pid, tag, read.headers["ETag"])
            if r.status_code == 200:
                applied.append((tag, int(read.headers["ETag"].strip('"')), int(r.headers["ETag"].strip('"'))))
                return
            assert r.status_code == 412, r.text
            refused += 1
            await asyncio.sleep(0)

    await asyncio.wait_for(asyncio.gather(*(client(f"c{i}") for i in range(CLIENTS))), timeout=120)
    assert sorted(tag for tag, _, _ in applied) == sorted(f"c{i}" for i in range(CLIENTS))
    # Every write replaced exactly the version its client read, and the versions form one unbroken chain.
    assert all(written == read + 1 for _, read, written in applied)
    assert sorted(written for _, _, written in applied) == list(range(2, CLIENTS + 2))
    final = await svc.client.get(f"/v1/projects/{pid}", headers=tenant.headers)
    last_tag = max(applied, key=lambda a: a[2])[0]
    assert final.headers["ETag"] == f'"{CLIENTS + 1}"' and final.json()["name"] == last_tag
    assert refused > 0, "the clients never collided, so the test proved nothing about concurrency"


async def test_a_database_from_before_versions_gains_the_column(own_settings: Settings) -> None:
    """The migration adds `version` to an existing projects table, and a tenant schema of the schema
    design gets it on first use."""
    async with live_service(own_settings, isolation="schema") as svc:
        tenant, pid = await _project(svc)
    schema = "tenant_" + uuid.UUID(tenant.id).hex
    with psycopg.connect(own_settings.database_url or "", autocommit=True) as conn:
        conn.execute(f'ALTER TABLE "{schema}".projects DROP COLUMN version')
        conn.execute("ALTER TABLE projects DROP COLUMN version")
    async with live_service(own_settings, isolation="filtered") as svc:
        owner, shared_pid = await _project(svc)
        got = await svc.client.get(f"/v1/projects/{shared_pid}", headers=owner.headers)
        assert got.status_code == 200 and got.headers["ETag"] == '"1"'
    async with live_service(own_settings, isolation="schema") as svc:
        got = await svc.client.get(f"/v1/projects/{pid}", headers=tenant.headers)
        assert got.status_code == 200 and got.headers["ETag"] == '"1"'
        assert (await _patch(svc, tenant, pid, "after", '"1"')).headers["ETag"] == '"2"'
