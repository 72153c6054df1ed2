"""Tenant-scoped storage: one interface, four isolation designs.

Every method takes the tenant explicitly (`store.get(tenant, PROJECTS, id)`); routes never check
ownership themselves. The designs differ only in *where* isolation is enforced:

* `filtered` (FilteredStore): shared tables; every query carries `tenant_id = %(tenant)s`.
* `rls` (RlsStore): shared tables; queries carry no tenant filter at all, and PostgreSQL row-level
  security (schema.sql) hides other tenants' rows from the `saaslab_app` role every statement runs as
  (writes switch to it with SET LOCAL ROLE; reads call functions that run as it).
* `schema` (SchemaStore): one PostgreSQL schema per tenant with its own tables; names are quoted
  identifiers (`quote_ident`) made from the tenant's UUID, never from anything a client sent.
* `leaky` (LeakyStore): DELIBERATELY UNSAFE. Like `filtered`, but get and delete by id forget the
  tenant filter, so any tenant can read or delete another tenant's object if it knows the id
  (OWASP API1, BOLA). It exists only so the isolation checker can be shown to catch a leak.
  Never select it for anything but that demonstration.

Tenants themselves live in the shared `tenants` table (TenantDirectory), whatever the design.
Statements are written with `%(name)s` placeholders and numbered (`$1`, `$2`) once, at start-up;
asyncpg prepares each on first use per connection and reuses it after. Reads (get and page) go
through `PipelinedReads` (common/db.py): the reads concurrent requests make with the same statement
share one connection and one round trip, which is why their statements are tagged (`$1`, echoed as
the first column), and why the rls design reads through one-statement functions rather than in a
transaction of its own per read. Isolation is unchanged: every read is its own execution with its
own tenant, and its rows go back to it alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, TypeVar
from uuid import UUID, uuid4

import asyncpg

from reference_impl.common.db import READ_TAG, PipelinedReads, Pool, Transaction
from reference_impl.common.faults import Faults
from reference_impl.common.identity import Tenant
from reference_impl.common.service import PaymentSink, RecordedPayment, TenantShards
from reference_impl.tenancy.core import hash_api_key, new_api_key

COMMIT_POINT = "tenancy.commit"
QUERY_POINT = "tenancy.query"
FAULT_POINTS = {
    QUERY_POINT: "before a tenant's repository call, inside its scheduler slot (a delay here is service time)",
    COMMIT_POINT: "inside a write's transaction, just before COMMIT (timeout_after_effect: after it)",
}

Row = Sequence[Any]
"""A row's columns in its table's `columns` order (an asyncpg Record, or a tuple from a pipelined read)."""
T = TypeVar("T")
_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, quoted (as `quote_ident` in SQL does for names that need it)."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[str, ...]
    """Returned columns; `id` first, `created_at` last."""
    writable: tuple[str, ...]
    versioned: bool = False
    """The table has a `version` column, which a conditional update (`Store.update`) checks and bumps."""


PROJECTS = Table("projects", ("id", "name", "version", "created_at"), ("name",), versioned=True)
PAYMENTS = Table("payments", ("id", "amount", "currency", "status", "created_at"), ("amount", "currency", "status"))
TABLES = (PROJECTS, PAYMENTS)


@dataclass(frozen=True, slots=True)
class Position:
    """A keyset pagination position: the last row of the previous page."""

    created_at: datetime
    id: UUID


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    params: tuple[str, ...]
    """Parameter names in `$n` order."""

    @classmethod
    def parse(cls, template: str, *, first: int = 1) -> Statement:
        """`%(name)s` placeholders become `$1`, `$2`, ... in order of first use (from `$first`: the
        parameters before it are the template's own, like a pipelined read's tag)."""
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match[1] not in names:
                names.append(match[1])
            return f"${names.index(match[1]) + first}"

        return cls(_PLACEHOLDER.sub(number, template), tuple(names))

    def args(self, values: Mapping[str, Any]) -> list[Any]:
        return [values[name] for name in self.params]


@dataclass(frozen=True, slots=True)
class Queries:
    insert: Statement
    put: Statement
    get: Statement
    delete: Statement
    first_page: Statement
    next_page: Statement
    update: Statement | None = None
    """A versioned table's conditional update (`Store.update`)."""


def _queries(table: Table, relation: str, *, tenant_value: str | None, filter_lists: bool,
             filter_by_id: bool) -> Queries:
    """The statements of one table under one design.

    `tenant_value` is the SQL stored in `tenant_id` on insert (None: the table has no such column);
    the filter flags say which statements add `tenant_id = %(tenant)s`.
    """
    columns = ", ".join(map(quote_ident, table.columns))
    writable = [quote_ident(c) for c in table.writable]
    values = [f"%({c})s" for c in table.writable]
    if tenant_value is not None:
        writable.insert(0, quote_ident("tenant_id"))
        values.insert(0, tenant_value)

    def render(template: str, scoped: bool) -> Statement:
        # Reads are pipelined (PipelinedReads): their first parameter and first column are the read's tag.
        read = template.startswith("SELECT")
        return Statement.parse(template.format(relation=relation, columns=f"{READ_TAG}, {columns}" if read else columns,
                                               scope="tenant_id = %(tenant)s AND " if scoped else "",
                                               writable=", ".join(writable), values=", ".join(values)),
                               first=2 if read else 1)

    return Queries(
        insert=render("INSERT INTO {relation} ({writable}) VALUES ({values}) RETURNING {columns}", False),
        put=render("INSERT INTO {relation} (id, {writable}, created_at) VALUES (%(id)s, {values}, %(created_at)s)"
                   " ON CONFLICT (id) DO NOTHING", False),
        get=render("SELECT {columns} FROM {relation} WHERE {scope}id = %(id)s", filter_by_id),
        delete=render("DELETE FROM {relation} WHERE {scope}id = %(id)s", filter_by_id),
        first_page=render("SELECT {columns} FROM {relation} WHERE {scope}TRUE"
                          " ORDER BY created_at, id LIMIT %(limit)s", filter_lists),
        next_page=render("SELECT {columns} FROM {relation} WHERE {scope}(created_at, id) > (%(after_ts)s, %(after_id)s)"
                         " ORDER BY created_at, id LIMIT %(limit)s", filter_lists),
        update=_conditional_update(table, relation, columns, filter_by_id) if table.versioned else None,
    )


def _conditional_update(table: Table, relation: str, columns: str, scoped: bool) -> Statement:
    """One statement: update the row if its version is one of `versions` (NULL: any), bumping the version.

    It answers `(true, row after)` when it wrote, `(false, row as found)` when the row exists but its
    version did not match, and nothing when there is no such row (for this tenant). The version test
    sits in the UPDATE's own WHERE, so it is decided under the row's lock: of two writers that read
    the same version, the second waits for the first, re-reads the row and finds the version moved
    (READ COMMITTED re-evaluates the WHERE on the updated row), so no update is ever lost.
    """
    scope = "tenant_id = %(tenant)s AND " if scoped else ""
    assignments = ", ".join(f"{quote_ident(c)} = %({c})s" for c in table.writable)
    return Statement.parse(
        f"WITH updated AS (UPDATE {relation} SET {assignments}, version = version + 1"
        f" WHERE {scope}id = %(id)s AND (%(versions)s::bigint[] IS NULL OR version = ANY(%(versions)s::bigint[]))"
        f" RETURNING {columns})"
        f" SELECT true, {columns} FROM updated"
        f" UNION ALL SELECT false, {columns} FROM {relation}"
        f" WHERE {scope}id = %(id)s AND NOT EXISTS (SELECT 1 FROM updated)")


class Store:
    """Tenant-scoped storage. Subclasses choose the design; the interface is the same for all.

    Writes run in a transaction with the `tenancy.commit` fault point just before COMMIT; reads
    are pipelined with the concurrent reads of the same statement (one round trip per batch).
    """

    design: ClassVar[str]
    WRITE_BEGIN: ClassVar[str] = "BEGIN"

    def __init__(self, pool: Pool, faults: Faults) -> None:
        self._pool = pool
        self._faults = faults
        self.reads = PipelinedReads(pool)
        self.shards: TenantShards | None = None
        """Where tenants' rows are when they are spread over shards (`use_shards`); None: all in `pool`."""

    def use_shards(self, shards: TenantShards | None) -> None:
        """Route every tenant's queries to its shard (the sharding pattern provides `shards`). Reads go where
        the placement says; a write the old shard refuses at a move's fence is retried on the new placement."""
        self.shards = shards

    async def provision(self, tenant: Tenant) -> None:
        """Prepare storage for a new tenant (nothing to do for shared tables)."""

    def _sql(self, tenant: Tenant, table: Table) -> Queries:
        raise NotImplementedError

    def _write_begin(self, tenant: Tenant) -> str:
        return self.WRITE_BEGIN

    def _read(self, tenant: Tenant, statement: Statement, values: Mapping[str, Any], *, one: bool) -> Awaitable[Any]:
        # A future of the pipeline, not a coroutine: no frame of ours sits on the hot path's stack.
        if self.shards is None:
            return self.reads.fetch(statement.sql, statement.args(values), one=one)
        route = self.shards.cached(tenant.id)
        if route is not None:
            return route.reads.fetch(statement.sql, statement.args(values), one=one)
        return self._routed_read(tenant, statement, values, one=one)

    async def _routed_read(self, tenant: Tenant, statement: Statement, values: Mapping[str, Any], *, one: bool) -> Any:
        assert self.shards is not None
        route = await self.shards.route(tenant.id)
        return await route.reads.fetch(statement.sql, statement.args(values), one=one)

    async def _write(self, tenant: Tenant, statement: Statement, values: Mapping[str, Any],
                     execute: Callable[[asyncpg.Connection, str, list[Any]], Awaitable[T]]) -> T:
        args = statement.args(values)
        if self.shards is None:
            return await self._write_on(self._pool, tenant, statement, args, execute)
        while True:
            route = self.shards.cached(tenant.id) or await self.shards.route(tenant.id)
            try:
                return await self._write_on(route.pool, tenant, statement, args, execute)
            except asyncpg.PostgresError as e:
                if not await self.shards.refused(tenant.id, e):
                    raise

    async def _write_on(self, pool: Pool, tenant: Tenant, statement: Statement, args: list[Any],
                        execute: Callable[[asyncpg.Connection, str, list[Any]], Awaitable[T]]) -> T:
        async with pool.connection() as conn, Transaction(conn, self._write_begin(tenant)):
            result = await execute(conn, statement.sql, args)
            await self._faults.before(COMMIT_POINT)
        return result

    async def insert(self, tenant: Tenant, table: Table, values: dict[str, Any]) -> Row:
        async def returning(conn: asyncpg.Connection, query: str, args: list[Any]) -> Row:
            row = await conn.fetchrow(query, *args)
            assert row is not None
            return row

        row = await self._write(tenant, self._sql(tenant, table).insert, {**values, "tenant": tenant.id}, returning)
        self._faults.after(COMMIT_POINT)
        return row

    async def put(self, tenant: Tenant, table: Table, object_id: UUID, created_at: datetime,
                  values: dict[str, Any]) -> None:
        """Insert a row whose id and creation time were decided elsewhere, unless a row with that id
        exists: writing the same row again is a no-op. The idempotency ledger publishes payments
        this way (a recovered request publishes again)."""
        async def put_row(conn: asyncpg.Connection, query: str, args: list[Any]) -> None:
            await conn.execute(query, *args)

        await self._write(tenant, self._sql(tenant, table).put,
                          {**values, "tenant": tenant.id, "id": object_id, "created_at": created_at}, put_row)
        self._faults.after(COMMIT_POINT)

    async def update(self, tenant: Tenant, table: Table, object_id: UUID, values: dict[str, Any],
                     versions: frozenset[int] | None) -> tuple[bool, Row] | None:
        """Write `values` if the row's version is one of `versions` (None: whatever it is), bumping it.

        (True, the row written) on success, (False, the row as it is) when the version did not match,
        None when the tenant has no such row. One conditional statement (`_conditional_update`).
        """
        statement = self._sql(tenant, table).update
        if statement is None:
            raise ValueError(f"{table.name} has no version to update against")

        async def conditional(conn: asyncpg.Connection, query: str, args: list[Any]) -> Any:
            return await conn.fetchrow(query, *args)

        found = await self._write(tenant, statement, {**values, "tenant": tenant.id, "id": object_id,
                                                      "versions": None if versions is None else sorted(versions)},
                                  conditional)
        self._faults.after(COMMIT_POINT)
        if found is None:
            return None
        return bool(found[0]), tuple(found[1:])

    def get(self, tenant: Tenant, table: Table, object_id: UUID) -> Awaitable[Row | None]:
        return self._read(tenant, self._sql(tenant, table).get, {"tenant": tenant.id, "id": object_id}, one=True)

    async def delete(self, tenant: Tenant, table: Table, object_id: UUID) -> bool:
        async def deleted_one(conn: asyncpg.Connection, query: str, args: list[Any]) -> bool:
            return await conn.execute(query, *args) == "DELETE 1"

        deleted = await self._write(tenant, self._sql(tenant, table).delete,
                                    {"tenant": tenant.id, "id": object_id}, deleted_one)
        self._faults.after(COMMIT_POINT)
        return deleted

    def page(self, tenant: Tenant, table: Table, limit: int, after: Position | None) -> Awaitable[list[Row]]:
        """Up to `limit` rows in (created_at, id) order, starting after `after`."""
        queries = self._sql(tenant, table)
        if after is None:
            return self._read(tenant, queries.first_page, {"tenant": tenant.id, "limit": limit}, one=False)
        values = {"tenant": tenant.id, "limit": limit, "after_ts": after.created_at, "after_id": after.id}
        return self._read(tenant, queries.next_page, values, one=False)


class FilteredStore(Store):
    design = "filtered"

    def __init__(self, pool: Pool, faults: Faults) -> None:
        super().__init__(pool, faults)
        self._queries = {t.name: self._build(t) for t in TABLES}

    def _build(self, table: Table) -> Queries:
        return _queries(table, quote_ident(table.name), tenant_value="%(tenant)s", filter_lists=True,
                        filter_by_id=True)

    def _sql(self, tenant: Tenant, table: Table) -> Queries:
        return self._queries[table.name]


class LeakyStore(FilteredStore):
    """UNSAFE ON PURPOSE: get/delete by id ignore the tenant. See the module docstring."""

    design = "leaky"

    def _build(self, table: Table) -> Queries:
        return _queries(table, quote_ident(table.name), tenant_value="%(tenant)s", filter_lists=True,
                        filter_by_id=False)


def _rls_reads(table: Table) -> dict[str, Statement]:
    """The rls design's reads: calls of the functions schema.sql defines, one statement each."""
    columns = ", ".join(map(quote_ident, table.columns))

    def call(kind: str, args: str, order: str = "") -> Statement:
        function = f"{RLS_READS_SCHEMA}.{quote_ident(f'{table.name}_{kind}')}"
        return Statement.parse(f"SELECT {READ_TAG}, {columns} FROM {function}(%(tenant)s, {args}){order}", first=2)

    # The functions return rows in page order; ORDER BY again because SQL promises no order otherwise.
    return {"get": call("get", "%(id)s"),
            "first_page": call("first_page", "%(limit)s", " ORDER BY created_at, id"),
            "next_page": call("next_page", "%(after_ts)s, %(after_id)s, %(limit)s", " ORDER BY created_at, id")}


RLS_READS_SCHEMA = "saaslab_rls"


class RlsStore(Store):
    """Isolation by row-level security alone.

    The queries deliberately carry NO tenant filter (and take the inserted tenant_id from the
    setting, not from a parameter): if the policies were missing, this design would leak, which
    is exactly what makes it a test of RLS. Every statement runs as the `saaslab_app` role (subject
    to the policies, never bypassing them) with `saaslab.tenant_id` set transaction-locally, so
    nothing survives on the pooled connection:

    * Writes run in a transaction that first switches role and sets the tenant, both with SET
      LOCAL; BEGIN and both SETs travel as one simple-protocol message: one round trip, not three.
    * Reads call SECURITY DEFINER functions owned by `saaslab_app` (schema.sql, `saaslab_rls.*`),
      which set the tenant and run the unfiltered query as that role, in one statement. So reads
      pipeline like the other designs' (one round trip for a batch, whatever its tenants) rather
      than costing BEGIN, the query and COMMIT each.
    """

    design = "rls"
    ROLE = "saaslab_app"
    MAX_CACHED_TENANTS = 4096

    def __init__(self, pool: Pool, faults: Faults) -> None:
        super().__init__(pool, faults)
        tenant_from_setting = "current_setting('saaslab.tenant_id')::uuid"
        self._queries = {t.name: dataclasses.replace(
            _queries(t, quote_ident(t.name), tenant_value=tenant_from_setting, filter_lists=False,
                     filter_by_id=False), **_rls_reads(t)) for t in TABLES}
        self._begin: dict[str, str] = {}

    def _sql(self, tenant: Tenant, table: Table) -> Queries:
        return self._queries[table.name]

    def _write_begin(self, tenant: Tenant) -> str:
        begin = self._begin.get(tenant.id)
        if begin is None:
            if len(self._begin) >= self.MAX_CACHED_TENANTS:
                del self._begin[next(iter(self._begin))]
            # SET takes no parameters, so the id is a literal: re-rendered from a parsed UUID, it can
            # only hold hex digits and dashes.
            begin = self._begin[tenant.id] = (f"BEGIN; SET LOCAL ROLE {self.ROLE}; "
                                              f"SET LOCAL saaslab.tenant_id = '{UUID(tenant.id)}'")
        return begin


class SchemaStore(Store):
    """A schema per tenant. A tenant created under another design gets its schema on first use."""

    design = "schema"
    MAX_CACHED_TENANTS = 4096

    def __init__(self, pool: Pool, faults: Faults) -> None:
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
            schema = quote_ident(self.schema_name(tenant))
            per_table = self._queries[tenant.id] = {
                t.name: _queries(t, f"{schema}.{quote_ident(t.name)}", tenant_value=None,
                                 filter_lists=False, filter_by_id=False) for t in TABLES}
        return per_table[table.name]

    async def provision(self, tenant: Tenant) -> None:
        schema = quote_ident(self.schema_name(tenant))
        statements = [
            f"CREATE SCHEMA IF NOT EXISTS {schema}",
            f"CREATE TABLE IF NOT EXISTS {schema}.projects (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
            " name text NOT NULL, version bigint NOT NULL DEFAULT 1,"
            " created_at timestamptz NOT NULL DEFAULT clock_timestamp())",
            # A tenant schema made before projects had versions gains the column here (see _MISSING).
            f"ALTER TABLE {schema}.projects ADD COLUMN IF NOT EXISTS version bigint NOT NULL DEFAULT 1",
            f"CREATE INDEX IF NOT EXISTS projects_page ON {schema}.projects (created_at, id)",
            f"CREATE TABLE IF NOT EXISTS {schema}.payments (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
            " amount bigint NOT NULL CHECK (amount > 0),"
            " currency text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'), status text NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT clock_timestamp())",
            f"CREATE INDEX IF NOT EXISTS payments_page ON {schema}.payments (created_at, id)",
        ]
        # On the tenant's shard when tenants are spread over shards (its rows are written there).
        pool = (await self.shards.route(tenant.id)).pool if self.shards is not None else self._pool
        async with pool.connection() as conn, conn.transaction():
            # IF NOT EXISTS is not safe against a concurrent creator of the same schema.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", tenant.id)
            await conn.execute("; ".join(statements))

    # What a statement meets in a tenant schema that is missing, or older than the tables' columns: both
    # are put right by `provision`, which is idempotent.
    _MISSING = (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError, asyncpg.UndefinedColumnError)

    async def _read(self, tenant: Tenant, statement: Statement, values: Mapping[str, Any], *, one: bool) -> Any:
        try:
            return await super()._read(tenant, statement, values, one=one)
        except self._MISSING:
            await self.provision(tenant)
            return await super()._read(tenant, statement, values, one=one)

    async def _write(self, tenant: Tenant, statement: Statement, values: Mapping[str, Any],
                     execute: Callable[[asyncpg.Connection, str, list[Any]], Awaitable[T]]) -> T:
        try:
            return await super()._write(tenant, statement, values, execute)
        except self._MISSING:
            await self.provision(tenant)
            return await super()._write(tenant, statement, values, execute)


STORES: dict[str, type[Store]] = {cls.design: cls for cls in (FilteredStore, RlsStore, SchemaStore, LeakyStore)}


def make_store(design: str, pool: Pool, faults: Faults) -> Store:
    try:
        return STORES[design](pool, faults)
    except KeyError:
        raise ValueError(f"unknown isolation design {design!r}; choose one of {', '.join(STORES)}") from None


def publisher(store: Store) -> PaymentSink:
    """Publish the payments the idempotency ledger records to the tenants' payments resource.

    The ledger's `idempotency_payments` stays the record of effects; the resource is this store's
    `payments` table, wherever the isolation design keeps it, so GET /v1/payments reads payments
    through the same code, role and policies as every other tenant read (reference_impl/idempotency/
    http.py, "Where payments live"). `put` keeps the ledger's id and creation time and is a no-op
    for a row already there, so publishing again after a recovery changes nothing.
    """

    async def publish(paid: RecordedPayment) -> None:
        # The store reads only the tenant's id: the completer, which has nothing else, can publish too.
        owner = Tenant(paid.tenant_id, name="", plan="", limits=None)
        await store.put(owner, PAYMENTS, paid.id, paid.created_at,
                        {"amount": paid.amount, "currency": paid.currency, "status": paid.status})

    return publish


class TenantDirectory:
    """The tenants table, with an in-process cache of key hash -> tenant.

    A tenant's `limits` can change at runtime (`set_limits`, from any worker), so a cached entry
    lives `cache_ttl_s` (one PostgreSQL query per tenant per second per worker at most); the cache
    is bounded (oldest entry evicted) and unknown keys are not cached.

    Lookups are single-flight: when an entry expires under load, the requests that find it missing
    share one query (a task they all await, shielded, so a request that goes away does not cancel
    the others' lookup) instead of each sending its own, a stampede on the tenants table every
    `cache_ttl_s` for a busy tenant. `lookups` counts the queries sent.
    """

    def __init__(self, pool: Pool, cache_size: int = 10_000, cache_ttl_s: float = 1.0) -> None:
        self._pool = pool
        self._cache: dict[str, tuple[Tenant, float]] = {}
        self._cache_size = cache_size
        self._cache_ttl_s = cache_ttl_s
        self._loading: dict[str, asyncio.Task[Tenant | None]] = {}
        self.lookups = 0
        """Queries sent to the tenants table by `by_api_key`."""

    async def create(self, name: str, plan: str, limits: dict[str, Any] | None) -> tuple[Tenant, str]:
        """A new tenant and its API key; the key is returned once and only its hash is stored."""
        tenant = Tenant(id=str(uuid4()), name=name, plan=plan, limits=limits)
        api_key = new_api_key()
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO tenants (id, name, plan, limits, api_key_hash) VALUES ($1, $2, $3, $4::jsonb, $5)",
                tenant.id, name, plan, json.dumps(limits) if limits is not None else None, hash_api_key(api_key))
        return tenant, api_key

    async def set_limits(self, tenant_id: UUID, limits: dict[str, Any] | None) -> bool:
        """Replace a tenant's rate-limit override (None: back to its plan's); False if no such tenant."""
        async with self._pool.connection() as conn:
            status = await conn.execute("UPDATE tenants SET limits = $2::jsonb WHERE id = $1", tenant_id,
                                        json.dumps(limits) if limits is not None else None)
        return status == "UPDATE 1"

    async def by_api_key(self, api_key: str) -> Tenant | None:
        key_hash = hash_api_key(api_key)
        cached = self._cache.get(key_hash)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        self._cache.pop(key_hash, None)
        loading = self._loading.get(key_hash)
        if loading is None:
            loading = self._loading[key_hash] = asyncio.ensure_future(self._load(key_hash))
            loading.add_done_callback(lambda done: self._loading.pop(key_hash, None)
                                      if self._loading.get(key_hash) is done else None)
        return await asyncio.shield(loading)

    async def _load(self, key_hash: str) -> Tenant | None:
        self.lookups += 1
        async with self._pool.connection() as conn:
            row = await conn.fetchrow("SELECT id::text, name, plan, limits::text FROM tenants WHERE api_key_hash = $1",
                                      key_hash)
        if row is None:
            return None
        if len(self._cache) >= self._cache_size:
            del self._cache[next(iter(self._cache))]
        tenant_id, name, plan, limits = row
        tenant = Tenant(tenant_id, name, plan, json.loads(limits) if limits else None)
        self._cache[key_hash] = (tenant, time.monotonic() + self._cache_ttl_s)
        return tenant
