"""Tenant isolation, route by route, under every isolation design.

The safe designs (filtered, rls, schema) must make another tenant's objects indistinguishable
from objects that do not exist; the deliberately unsafe `leaky` design must be caught leaking.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
import pytest_asyncio
from live_app import LiveService, live_service

from saaslab.settings import Settings

pytestmark = pytest.mark.integration

SAFE_DESIGNS = ("filtered", "rls", "schema")


@pytest_asyncio.fixture(scope="module", params=SAFE_DESIGNS)
async def svc(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[LiveService]:
    async with live_service(settings, isolation=request.param) as live:
        yield live


async def test_foreign_ids_answer_exactly_like_missing_ones(svc: LiveService) -> None:
    owner, intruder = await svc.new_tenant(), await svc.new_tenant()
    project = await svc.create_project(owner)
    payment = await svc.create_payment(owner)
    get, delete = svc.client.get, svc.client.delete

    for method, route, foreign_id in [(get, "projects", project["id"]), (delete, "projects", project["id"]),
                                      (get, "payments", payment["id"])]:
        foreign = await method(f"/v1/{route}/{foreign_id}", headers=intruder.headers)
        missing = await method(f"/v1/{route}/{uuid.uuid4()}", headers=intruder.headers)
        malformed = await method(f"/v1/{route}/not-a-uuid", headers=intruder.headers)
        for r in (foreign, missing, malformed):
            assert r.status_code == 404
            assert r.headers["content-type"] == "application/problem+json"
        assert foreign.content == missing.content == malformed.content

    # The intruder's DELETE changed nothing: the owner still reads both objects as created.
    r = await get(f"/v1/projects/{project['id']}", headers=owner.headers)
    assert r.status_code == 200 and r.json() == project
    r = await get(f"/v1/payments/{payment['id']}", headers=owner.headers)
    assert r.status_code == 200 and r.json() == payment


async def test_lists_hold_only_the_callers_objects(svc: LiveService) -> None:
    a, b = await svc.new_tenant(), await svc.new_tenant()
    a_projects, b_projects, a_payments, b_payments = [], [], [], []
    for i in range(3):  # interleaved, so the tenants' rows are mixed in the shared tables
        a_projects.append((await svc.create_project(a))["id"])
        if i < 2:
            b_projects.append((await svc.create_project(b))["id"])
            a_payments.append((await svc.create_payment(a))["id"])
        b_payments.append((await svc.create_payment(b, amount=7 + i, currency="USD"))["id"])

    assert [p["id"] for p in await svc.all_items(a, "projects")] == a_projects
    assert [p["id"] for p in await svc.all_items(b, "projects")] == b_projects
    assert [p["id"] for p in await svc.all_items(a, "payments")] == a_payments
    assert [p["id"] for p in await svc.all_items(b, "payments")] == b_payments


async def test_pagination_walks_every_page_once(svc: LiveService) -> None:
    a, b = await svc.new_tenant(), await svc.new_tenant()
    created = []
    for i in range(7):
        created.append((await svc.create_project(a, name=f"a{i}"))["id"])
        if i % 2 == 0:
            await svc.create_project(b)

    sizes, seen, cursor = [], [], None
    for _ in range(10):
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await svc.client.get("/v1/projects", params=params, headers=a.headers)).json()
        sizes.append(len(page["items"]))
        seen += [p["id"] for p in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sizes == [3, 3, 1]
    assert seen == created

    # A cursor taken from A's listing gives B only B's own rows after that position.
    first = (await svc.client.get("/v1/projects", params={"limit": 1}, headers=a.headers)).json()
    r = await svc.client.get("/v1/projects", params={"cursor": first["next_cursor"]}, headers=b.headers)
    assert r.status_code == 200
    b_ids = {p["id"] for p in await svc.all_items(b, "projects")}
    assert {p["id"] for p in r.json()["items"]} <= b_ids


async def test_owner_deletes_and_the_object_is_gone(svc: LiveService) -> None:
    a = await svc.new_tenant()
    keep, drop = await svc.create_project(a), await svc.create_project(a)
    assert (await svc.client.delete(f"/v1/projects/{drop['id']}", headers=a.headers)).status_code == 204
    gone = await svc.client.get(f"/v1/projects/{drop['id']}", headers=a.headers)
    never = await svc.client.get(f"/v1/projects/{uuid.uuid4()}", headers=a.headers)
    assert gone.status_code == 404 and gone.content == never.content
    assert [p["id"] for p in await svc.all_items(a, "projects")] == [keep["id"]]


async def test_the_leaky_design_leaks(settings: Settings) -> None:
    """The unsafe design is shown to be unsafe: B reads and deletes A's project by id."""
    async with live_service(settings, isolation="leaky") as svc:
        a, b = await svc.new_tenant(), await svc.new_tenant()
        project = await svc.create_project(a)
        stolen = await svc.client.get(f"/v1/projects/{project['id']}", headers=b.headers)
        assert stolen.status_code == 200 and stolen.json() == project
        # Lists stay filtered, which is why a list-only check would miss the leak.
        assert await svc.all_items(b, "projects") == []
        assert (await svc.client.delete(f"/v1/projects/{project['id']}", headers=b.headers)).status_code == 204
        assert (await svc.client.get(f"/v1/projects/{project['id']}", headers=a.headers)).status_code == 404


async def test_rls_alone_hides_other_tenants_rows(settings: Settings) -> None:
    async with live_service(settings, isolation="rls") as svc:
        a, b = await svc.new_tenant(), await svc.new_tenant()
        a_ids = {(await svc.create_project(a))["id"] for _ in range(2)}
        await svc.create_project(b)
        a_payment = (await svc.create_payment(a))["id"]

    with psycopg.connect(settings.database_url or "") as conn:
        role = conn.execute("SELECT rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = 'saaslab_app'").fetchone()
        assert role == (False, False)
        forced = conn.execute("SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
                              "WHERE relname IN ('projects', 'payments') AND relnamespace = 'public'::regnamespace "
                              "ORDER BY relname").fetchall()
        assert forced == [("payments", True, True), ("projects", True, True)]

        # No WHERE clause: the policy alone decides what saaslab_app sees.
        conn.execute("SET LOCAL ROLE saaslab_app")
        conn.execute("SELECT set_config('saaslab.tenant_id', %s, true)", (a.id,))
        rows = conn.execute("SELECT tenant_id::text, id::text FROM projects").fetchall()
        assert {r[0] for r in rows} == {a.id}
        assert {r[1] for r in rows} == a_ids
        assert conn.execute("SELECT id::text FROM payments").fetchall() == [(a_payment,)]
        conn.rollback()

        # Without a tenant set it sees nothing, and it cannot write a row for another tenant.
        conn.execute("SET LOCAL ROLE saaslab_app")
        assert conn.execute("SELECT count(*) FROM projects").fetchone() == (0,)
        conn.rollback()
        conn.execute("SET LOCAL ROLE saaslab_app")
        conn.execute("SELECT set_config('saaslab.tenant_id', %s, true)", (a.id,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO projects (tenant_id, name) VALUES (%s, 'planted')", (b.id,))
        conn.rollback()


async def test_schema_design_gives_each_tenant_its_own_tables(settings: Settings) -> None:
    # A tenant created under another design gets its schema on first use.
    async with live_service(settings, isolation="filtered") as filtered:
        late = await filtered.new_tenant()
    async with live_service(settings, isolation="schema") as svc:
        a = await svc.new_tenant()
        project = await svc.create_project(a)
        late_project = await svc.create_project(late)
    with psycopg.connect(settings.database_url or "", autocommit=True) as conn:
        for tenant, expected in ((a, project), (late, late_project)):
            schema = "tenant_" + uuid.UUID(tenant.id).hex
            rows = conn.execute(psycopg.sql.SQL("SELECT id::text FROM {}.projects").format(
                psycopg.sql.Identifier(schema))).fetchall()
            assert rows == [(expected["id"],)]
