"""Tenant-scoped storage: one interface, four isolation designs.

Every method takes the tenant explicitly (`store.get(tenant, PROJECTS, id)`); routes never check
ownership themselves. The designs differ only in *where* isolation is enforced:

* `filtered` (FilteredStore): shared tables; every query carries `tenant_id = %(tenant)s`.
* `rls` (RlsStore): shared tables; queries carry no tenant filter at all, and PostgreSQL row-level
  security (schema.sql) hides other tenants' rows from the `saaslab_app` role each transaction runs as.
* `schema` (SchemaStore): one PostgreSQL schema per tenant with its own tables; names are built
  with psycopg.sql.Identifier, never by formatting strings.
* `leaky` (LeakyStore): DELIBERATELY UNSAFE. Like `filtered`, but get and delete by id forget the
  tenant filter, so any tenant can read or delete another tenant's object if it knows the id
  (OWASP API1, BOLA). It exists only so the isolation checker can be shown to catch a leak.
  Never select it for anything but that demonstration.

Tenants themselves live in the shared `tenants` table (TenantDirectory), whatever the design.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar
from uuid import UUID, uuid4

from psycopg import AsyncConnection, errors, sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from reference_impl.common.auth import Tenant
from reference_impl.common.faults import Faults
from reference_impl.tenancy.core import hash_api_key, new_api_key

COMMIT_POINT = "tenancy.commit"
QUERY_POINT = "tenancy.query"
FAULT_POINTS = {
    QUERY_POINT: "before a tenant's repository call, inside its scheduler slot (a delay here is service time)",
    COMMIT_POINT: "inside a write's transaction, just before COMMIT (timeout_after_effect: after it)",
}

Row = tuple[Any, ...]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[str, ...]
    """Returned columns; `id` first, `created_at` last."""
    writable: tuple[str, ...]


PROJECTS = Table("projects", ("id", "name", "created_at"), ("name",))
PAYMENTS = Table("payments", ("id", "amount", "currency", "status", "created_at"), ("amount", "currency", "status"))
TABLES = (PROJECTS, PAYMENTS)


@dataclass(frozen=True, slots=True)
class Position:
    """A keyset pagination position: the last row of the previous page."""

    created_at: datetime
    id: UUID


@dataclass(frozen=True, slots=True)
class Queries:
    insert: str
    get: str
    delete: str
    first_page: str
    next_page: str


def _queries(table: Table, relation: sql.Composable, *, tenant_column: sql.Composable | None,
             filter_lists: bool, filter_by_id: bool) -> Queries:
    """The five statements of one table under one design, rendered once to strings.

    `tenant_column` is the value stored in `tenant_id` on insert (None: the table has no such column);
    the filter flags say which statements add `tenant_id = %(tenant)s`.
    """
    columns = sql.SQL(", ").join(map(sql.Identifier, table.columns))
    writable = [sql.Identifier(c) for c in table.writable]
    values = [sql.Placeholder(c) for c in table.writable]
    if tenant_column is not None:
        writable.insert(0, sql.Identifier("tenant_id"))
        values.insert(0, tenant_column)
    scope = sql.SQL("tenant_id = %(tenant)s AND ")
    no_scope = sql.SQL("")

    def render(template: str, scoped: bool) -> str:
        return sql.SQL(template).format(relation=relation, columns=columns, scope=scope if scoped else no_scope,
                                        writable=sql.SQL(", ").join(writable),
                                        values=sql.SQL(", ").join(values)).as_string(None)

    return Queries(
        insert=render("INSERT INTO {relation} ({writable}) VALUES ({values}) RETURNING {columns}", False),
        get=render("SELECT {columns} FROM {relation} WHERE {scope}id = %(id)s", filter_by_id),
        delete=render("DELETE FROM {relation} WHERE {scope}id = %(id)s", filter_by_id),
        first_page=render("SELECT {columns} FROM {relation} WHERE {scope}TRUE"
                          " ORDER BY created_at, id LIMIT %(limit)s", filter_lists),
        next_page=render("SELECT {columns} FROM {relation} WHERE {scope}(created_at, id) > (%(after_ts)s, %(after_id)s)"
                         " ORDER BY created_at, id LIMIT %(limit)s", filter_lists),
    )


class Store:
    """Tenant-scoped storage. Subclasses choose the design; the interface is the same for all.

    Writes run in a transaction with the `tenancy.commit` fault point just before COMMIT; reads
    are single statements on an autocommit connection (one round trip).
    """

    design: ClassVar[str]

    def __init__(self, pool: AsyncConnectionPool, faults: Faults) -> None:
        self._pool = pool
        self._faults = faults

    async def provision(self, tenant: Tenant) -> None:
        """Prepare storage for a new tenant (nothing to do for shared tables)."""

    def _sql(self, tenant: Tenant, table: Table) -> Queries:
        raise NotImplementedError

    @asynccontextmanager
    async def _reading(self, tenant: Tenant) -> AsyncIterator[AsyncConnection]:
        async with self._pool.connection() as conn:
            yield conn

    @asynccontextmanager
    async def _writing(self, tenant: Tenant) -> AsyncIterator[AsyncConnection]:
        async with self._pool.connection() as conn, conn.transaction():
            yield conn
            await self._faults.before(COMMIT_POINT)

    async def _run(self, tenant: Tenant, work: Callable[[], Awaitable[T]]) -> T:
        return await work()

    async def insert(self, tenant: Tenant, table: Table, values: dict[str, Any]) -> Row:
        params = {**values, "tenant": tenant.id}

        async def work() -> Row:
            async with self._writing(tenant) as conn:
                cur = await conn.execute(self._sql(tenant, table).insert, params)
                row = await cur.fetchone()
            assert row is not None
            return row

        row = await self._run(tenant, work)
        self._faults.after(COMMIT_POINT)
        return row

    async def get(self, tenant: Tenant, table: Table, object_id: UUID) -> Row | None:
        params = {"tenant": tenant.id, "id": object_id}

        async def work() -> Row | None:
            async with self._reading(tenant) as conn:
                cur = await conn.execute(self._sql(tenant, table).get, params)
                return await cur.fetchone()

        return await self._run(tenant, work)

    async def delete(self, tenant: Tenant, table: Table, object_id: UUID) -> bool:
        params = {"tenant": tenant.id, "id": object_id}

        async def work() -> bool:
            async with self._writing(tenant) as conn:
                cur = await conn.execute(self._sql(tenant, table).delete, params)
            return cur.rowcount == 1

        deleted = await self._run(tenant, work)
        self._faults.after(COMMIT_POINT)
        return deleted

    async def page(self, tenant: Tenant, table: Table, limit: int, after: Position | None) -> list[Row]:
        """Up to `limit` rows in (created_at, id) order, starting after `after`."""
        queries = self._sql(tenant, table)
        if after is None:
            query, params = queries.first_page, {"tenant": tenant.id, "limit": limit}
        else:
            query = queries.next_page
            params = {"tenant": tenant.id, "limit": limit, "after_ts": after.created_at, "after_id": after.id}

        async def work() -> list[Row]:
            async with self._reading(tenant) as conn:
                cur = await conn.execute(query, params)
                return await cur.fetchall()

        return await self._run(tenant, work)


class FilteredStore(Store):
    design = "filtered"

    def __init__(self, pool: AsyncConnectionPool, faults: Faults) -> None:
        super().__init__(pool, faults)
        self._queries = {t.name: self._build(t) for t in TABLES}

    def _build(self, table: Table) -> Queries:
        return _queries(table, sql.Identifier(table.name), tenant_column=sql.Placeholder("tenant"),
                        filter_lists=True, filter_by_id=True)

    def _sql(self, tenant: Tenant, table: Table) -> Queries:
        return self._queries[table.name]


class LeakyStore(FilteredStore):
    """UNSAFE ON PURPOSE: get/delete by id ignore the tenant. See the module docstring."""

    design = "leaky"

    def _build(self, table: Table) -> Queries:
        return _queries(table, sql.Identifier(table.name), tenant_column=sql.Placeholder("tenant"),
                        filter_lists=True, filter_by_id=False)


class RlsStore(Store):
    """Isolation by row-level security alone.

    The queries deliberately carry NO tenant filter (and take the inserted tenant_id from the
    setting, not from a parameter): if the policies were missing, this design would leak, which
    is exactly what makes it a test of RLS. Each transaction switches to the `saaslab_app` role
    (subject to the policies) and sets `saaslab.tenant_id`, both transaction-local, so nothing
    survives on the pooled connection. `set_config('role', ..., true)` is the function form of
    `SET LOCAL ROLE`, which lets one statement do both. (psycopg's pipeline mode would save round
    trips but costs more CPU per request than it saves here, and the service is CPU-bound.)
    """

    design = "rls"
    ROLE = "saaslab_app"
    ENTER_TENANT = f"SELECT set_config('role', '{ROLE}', true), set_config('saaslab.tenant_id', %s, true)"

    def __init__(self, pool: AsyncConnectionPool, faults: Faults) -> None:
        super().__init__(pool, faults)
        tenant_from_setting = sql.SQL("current_setting('saaslab.tenant_id')::uuid")
        self._queries = {t.name: _queries(t, sql.Identifier(t.name), tenant_column=tenant_from_setting,
                                          filter_lists=False, filter_by_id=False) for t in TABLES}

    def _sql(self, tenant: Tenant, table: Table) -> Queries:
        return self._queries[table.name]

    @asynccontextmanager
    async def _as_tenant(self, tenant: Tenant) -> AsyncIterator[AsyncConnection]:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(self.ENTER_TENANT, (tenant.id,))
            yield conn

    @asynccontextmanager
    async def _reading(self, tenant: Tenant) -> AsyncIterator[AsyncConnection]:
        async with self._as_tenant(tenant) as conn:
            yield conn

    @asynccontextmanager
    async def _writing(self, tenant: Tenant) -> AsyncIterator[AsyncConnection]:
        async with self._as_tenant(tenant) as conn:
            yield conn
            await self._faults.before(COMMIT_POINT)


class SchemaStore(Store):
    """A schema per tenant. A tenant created under another design gets its schema on first use."""

    design = "schema"
    MAX_CACHED_TENANTS = 4096

    def __init__(self, pool: AsyncConnectionPool, faults: Faults) -> None:
        super().__init__(pool, faults)
        self._queries: dict[str, dict[str, Queries]] = {}

    @staticmethod
    def schema_name(tenant: Tenant) -> str:
        return "tenant_" + UUID(tenant.id).hex

    def _sql(self, tenant: Tenant, table: Table) -> Queries:
        per_table = self._queries.get(tenant.id)
        if per_table is None:
            if len(self._queries) >= self.MAX_CACHED_TENANTS:
                del self._queries[next(iter(self._queries))]
            schema = self.schema_name(tenant)
            per_table = self._queries[tenant.id] = {
                t.name: _queries(t, sql.Identifier(schema, t.name), tenant_column=None,
                                 filter_lists=False, filter_by_id=False) for t in TABLES}
        return per_table[table.name]

    async def provision(self, tenant: Tenant) -> None:
        schema = sql.Identifier(self.schema_name(tenant))
        statements = [
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema),
            sql.SQL("CREATE TABLE IF NOT EXISTS {}.projects (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
                    " name text NOT NULL, created_at timestamptz NOT NULL DEFAULT clock_timestamp())").format(schema),
            sql.SQL("CREATE INDEX IF NOT EXISTS projects_page ON {}.projects (created_at, id)").format(schema),
            sql.SQL("CREATE TABLE IF NOT EXISTS {}.payments (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
                    " amount bigint NOT NULL CHECK (amount > 0),"
                    " currency text NOT NULL CHECK (currency ~ '^[A-Z]{{3}}$'), status text NOT NULL,"
                    " created_at timestamptz NOT NULL DEFAULT clock_timestamp())").format(schema),
            sql.SQL("CREATE INDEX IF NOT EXISTS payments_page ON {}.payments (created_at, id)").format(schema),
        ]
        async with self._pool.connection() as conn, conn.transaction():
            # IF NOT EXISTS is not safe against a concurrent creator of the same schema.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (tenant.id,))
            for statement in statements:
                await conn.execute(statement)

    async def _run(self, tenant: Tenant, work: Callable[[], Awaitable[T]]) -> T:
        try:
            return await work()
        except (errors.UndefinedTable, errors.InvalidSchemaName):
            await self.provision(tenant)
            return await work()


STORES: dict[str, type[Store]] = {cls.design: cls for cls in (FilteredStore, RlsStore, SchemaStore, LeakyStore)}


def make_store(design: str, pool: AsyncConnectionPool, faults: Faults) -> Store:
    try:
        return STORES[design](pool, faults)
    except KeyError:
        raise ValueError(f"unknown isolation design {design!r}; choose one of {', '.join(STORES)}") from None


class TenantDirectory:
    """The tenants table, with an in-process cache of key hash -> tenant.

    Keys and tenants never change once created, so a cached entry can never be stale; the cache
    is bounded (oldest entry evicted) and unknown keys are not cached.
    """

    def __init__(self, pool: AsyncConnectionPool, cache_size: int = 10_000) -> None:
        self._pool = pool
        self._cache: dict[str, Tenant] = {}
        self._cache_size = cache_size

    async def create(self, name: str, plan: str, limits: dict[str, Any] | None) -> tuple[Tenant, str]:
        """A new tenant and its API key; the key is returned once and only its hash is stored."""
        tenant = Tenant(id=str(uuid4()), name=name, plan=plan, limits=limits)
        api_key = new_api_key()
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO tenants (id, name, plan, limits, api_key_hash) VALUES (%s, %s, %s, %s, %s)",
                (tenant.id, name, plan, Jsonb(limits) if limits is not None else None, hash_api_key(api_key)))
        return tenant, api_key

    async def by_api_key(self, api_key: str) -> Tenant | None:
        key_hash = hash_api_key(api_key)
        tenant = self._cache.get(key_hash)
        if tenant is not None:
            return tenant
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT id::text, name, plan, limits FROM tenants WHERE api_key_hash = %s",
                                     (key_hash,))
            row = await cur.fetchone()
        if row is None:
            return None
        if len(self._cache) >= self._cache_size:
            del self._cache[next(iter(self._cache))]
        tenant = self._cache[key_hash] = Tenant(*row)
        return tenant

