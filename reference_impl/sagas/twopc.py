"""The `twopc` design: one global transaction across the three participant databases, by two-phase commit.

Each order is an *attempt* at one distributed transaction: a branch (a transaction) per participant,
begun on first use and driven by core.py's step machine, so the steps, retries, timeouts and fault
points are the saga's: `reserve` and `commit` run in the inventory branch, `charge` in the payments
branch, `schedule` in the shipping one. An action runs in a savepoint of its branch (a failed attempt
rolls back to it and the machine retries); a compensation is the rollback of its step's branch.

When the machine ends `completed`, the coordinator prepares every branch (`PREPARE TRANSACTION`,
gid `saaslab2pc:<saga id>:<attempt>:<participant>`), logs the decision `commit` in its log
(`sagas.twopc_log`, twopc.sql, main database), then `COMMIT PREPARED`s each branch. When it ends
`compensated` or `failed`, every branch was rolled back already; the log says `abort`.

The log row of an attempt exists before any branch does work, and its decision is written once,
by whoever comes first (`decision IS NULL`): the coordinator's `commit`, or recovery's presumed
`abort` of an attempt whose driver is gone (its lease in `sagas.orders` ran out). So a slow
coordinator and recovery can never decide differently. Recovery, at `open` and every
`saga_recovery_interval_s`:

* carries out every logged decision not yet carried out (commit-prepared or rollback-prepared each
  gid; a gid already gone was resolved before a crash);
* finds orphans in `pg_prepared_xacts` by gid prefix, in the participants' databases, and resolves
  them by their attempt's decision (presumed abort when there is none and nobody holds the order);
* resumes every unfinished order: an attempt presumed aborted is followed by a new one (attempt + 1),
  since the order was accepted (202) and nothing of the old attempt became visible.

The lab's payment provider lives in the payments database, so its charge joins the payments branch
(`_Enlisted`): the provider is treated as a resource manager that can prepare, which a real
external provider is not (2PC cannot span another company's HTTP API; that is the saga designs' case).

Cost, measured per attempt in the log: `began_us` → `resolved_us` is how long the branches may hold
row locks (a hot SKU's row is locked from `reserve` until `COMMIT PREPARED`), `prepared_us` →
`resolved_us` the time in doubt (`timings`).

Needs `max_prepared_transactions` > 0 (PostgreSQL's default is 0): `open`/`start` refuse otherwise
with one line naming the setting (`PreparedTransactionsOff`). Attempts in flight per process are
capped at a third of it, so this process alone never exhausts the server's prepared slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import cast

import asyncpg

from reference_impl.common.db import Pool, migrate
from reference_impl.idempotency import provider
from reference_impl.idempotency.provider import ProviderError, ProviderFault
from reference_impl.sagas import participants as parts
from reference_impl.sagas.core import (
    FAULT_POINTS,
    PARTICIPANTS,
    Do,
    Finished,
    Order,
    Outcome,
    Participant,
    SagaState,
    Step,
    Wait,
    apply,
    fault_point,
    next_command,
    start,
    step_key,
    step_views,
)
from reference_impl.sagas.designs import SagaDeps
from reference_impl.sagas.orchestration import provider_fault
from reference_impl.sagas.orders import OrderRecord
from reference_impl.sagas.tasks import TaskSet, recover_forever, wall_clock_us

log = logging.getLogger("saaslab.sagas.twopc")
SCHEMA = Path(__file__).with_name("twopc.sql")
GID_PREFIX = "saaslab2pc:"
PREPARED_POINT = "sagas.coordinator.prepared"
DECIDED_POINT = "sagas.coordinator.decided"
assert PREPARED_POINT in FAULT_POINTS and DECIDED_POINT in FAULT_POINTS
US = 1_000_000
RETRY_ATTEMPT_US = 200_000
"""The wait before a new attempt when one could not prepare (no prepared slot free, a broken connection)."""


class PreparedTransactionsOff(RuntimeError):
    """The server cannot prepare transactions; the message is one line naming the setting."""


def gid(saga_id: str, attempt: int, participant: Participant) -> str:
    return f"{GID_PREFIX}{saga_id}:{attempt}:{participant}"


def parse_gid(g: str) -> tuple[str, int, Participant] | None:
    """(saga id, attempt, participant) of one of this design's gids, None for anyone else's."""
    if not g.startswith(GID_PREFIX):
        return None
    saga_id, attempt, participant = g[len(GID_PREFIX):].rsplit(":", 2)
    if participant not in PARTICIPANTS or not attempt.isdigit():
        return None
    return saga_id, int(attempt), cast(Participant, participant)


def _quoted(g: str) -> str:
    return "'" + g.replace("'", "''") + "'"


async def prepared_capacity(pool: Pool) -> int:
    """The server's `max_prepared_transactions`."""
    async with pool.connection() as c:
        return int(await c.fetchval("SELECT setting FROM pg_settings WHERE name = 'max_prepared_transactions'"))


async def finish_prepared(pool: Pool, g: str, *, commit: bool) -> bool:
    """COMMIT or ROLLBACK PREPARED `g` on its database; False if it was gone (resolved before)."""
    async with pool.connection() as c:
        try:
            await c.execute(f"{'COMMIT' if commit else 'ROLLBACK'} PREPARED {_quoted(g)}")
        except asyncpg.UndefinedObjectError:
            return False
    return True


async def timings(pool: Pool, saga_ids: list[str] | None = None) -> list[tuple[int, int]]:
    """(lock hold µs, time in doubt µs) of every committed attempt (of `saga_ids`, if given)."""
    async with pool.connection() as c:
        rows = await c.fetch("SELECT resolved_us - began_us, resolved_us - prepared_us FROM sagas.twopc_log"
                             " WHERE decision = 'commit' AND resolved_us IS NOT NULL AND prepared_us IS NOT NULL"
                             " AND ($1::text[] IS NULL OR saga_id = ANY($1))", saga_ids)
    return [(r[0], r[1]) for r in rows]


class _Broken(Exception):
    """A branch's connection is in an unknown state: the attempt cannot go on."""


class _Enlisted:
    """The provider's pool interface over the payments branch's own connection (see the module docstring)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        yield self._conn


async def _charge(conn: asyncpg.Connection, order: Order, key: str, fault: ProviderFault | None) -> parts.Result:
    """participants.Participants.charge, inside the payments branch."""
    state = await conn.fetchval(
        "INSERT INTO saga_payments.payments (key, saga_id, tenant_id, amount, currency, state)"
        " VALUES ($1, $2, $3, $4, $5, 'charging') ON CONFLICT (key) DO UPDATE SET updated_at = clock_timestamp()"
        " RETURNING state", key, order.id, order.tenant_id, order.amount, order.currency)
    if state == "charged":
        return "ok"
    if state != "charging":
        return "refused"
    try:
        made = await provider.charge(cast(Pool, _Enlisted(conn)), order.tenant_id, order.amount, order.currency,
                                     key, fault, reference=order.id)
    except ProviderError:
        await conn.execute("UPDATE saga_payments.payments SET state = 'declined' WHERE key = $1", key)
        return "refused"
    await conn.execute("UPDATE saga_payments.payments SET state = 'charged', charge_id = $2 WHERE key = $1",
                       key, made.id)
    return "ok"


async def _action(step: Step, conn: asyncpg.Connection, order: Order, fault: ProviderFault | None) -> parts.Result:
    key = step_key(order.id, step)
    if step.name == "reserve":
        return await parts.reserve(conn, order, key)
    if step.name == "charge":
        return await _charge(conn, order, key, fault)
    if step.name == "schedule":
        return await parts.schedule(conn, order, key)
    if step.name == "commit":
        return await parts.commit(conn, order, step_key(order.id, "reserve"))
    raise KeyError(f"no action for step {step.name!r}")


class _Branches:
    """An attempt's open transactions, one per participant, begun on first use. Leaving the block returns
    the connections; one still inside a transaction (a crash) is terminated, so the server rolls it back."""

    def __init__(self, pools: dict[Participant, Pool]) -> None:
        self._pools = pools
        self._stack = contextlib.AsyncExitStack()
        self.conns: dict[Participant, asyncpg.Connection] = {}
        self.ended: set[Participant] = set()
        """Rolled back or prepared."""
        self._in_savepoint: set[Participant] = set()

    async def __aenter__(self) -> _Branches:
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stack.__aexit__(et, e, tb)

    async def run(self, participant: Participant, work: Callable[[asyncpg.Connection], Awaitable[parts.Result]]
                  ) -> parts.Result:
        """`work` in a savepoint of the participant's branch."""
        if participant in self.ended:
            raise _Broken(f"the {participant} branch has ended")
        conn = self.conns.get(participant)
        if conn is None:
            conn = await self._stack.enter_async_context(self._pools[participant].connection())
            self.conns[participant] = conn
            await conn.execute("BEGIN")
        self._in_savepoint.add(participant)
        await conn.execute("SAVEPOINT step")
        result = await work(conn)
        await conn.execute("RELEASE SAVEPOINT step")
        self._in_savepoint.discard(participant)
        return result

    async def undo_attempt(self, participant: Participant) -> None:
        """After a failed `run`: back to the savepoint, or `_Broken` if the connection cannot say."""
        if participant not in self._in_savepoint:
            return
        try:
            async with asyncio.timeout(5):
                await self.conns[participant].execute("ROLLBACK TO SAVEPOINT step; RELEASE SAVEPOINT step")
        except Exception as exc:
            raise _Broken(f"the {participant} branch is lost: {exc!r}") from exc
        self._in_savepoint.discard(participant)

    async def rollback(self, participant: Participant) -> None:
        conn = self.conns.get(participant)
        if conn is None or participant in self.ended:
            return
        self.ended.add(participant)
        with contextlib.suppress(asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError):
            await conn.execute("ROLLBACK")  # a lost connection takes its transaction with it

    async def rollback_all(self) -> None:
        for p in list(self.conns):
            await self.rollback(p)

    async def prepare_all(self, gids: dict[Participant, str]) -> None:
        """PREPARE every open branch; on any failure none stays prepared and `_Broken` is raised."""
        prepared: list[Participant] = []
        try:
            for p, conn in self.conns.items():
                if p not in self.ended:
                    await conn.execute(f"PREPARE TRANSACTION {_quoted(gids[p])}")
                    self.ended.add(p)
                    prepared.append(p)
        except Exception as exc:
            await self.rollback_all()
            for p in prepared:
                with contextlib.suppress(Exception):  # else recovery finds it by its gid and rolls it back
                    await self.conns[p].execute(f"ROLLBACK PREPARED {_quoted(gids[p])}")
            raise _Broken(f"prepare failed: {exc!r}") from exc


    async def finish_prepared(self, gids: dict[Participant, str], *, commit: bool) -> None:
        for p, conn in self.conns.items():
            with contextlib.suppress(asyncpg.UndefinedObjectError):  # recovery resolved it already
                await conn.execute(f"{'COMMIT' if commit else 'ROLLBACK'} PREPARED {_quoted(gids[p])}")


class TwoPhaseCommit:
    name = "twopc"

    def __init__(self, deps: SagaDeps, *, clock: Callable[[], int] = wall_clock_us) -> None:
        self.deps = deps
        self.clock = clock
        self.lease_us = round(deps.settings.saga_lease_s * US)
        self.drivers = TaskSet()
        self.resumed = 0
        """Orders recovery resumed, and in-doubt transactions it resolved (a metric)."""
        self._capacity: asyncio.Semaphore | None = None
        self._recovering: asyncio.Task[None] | None = None

    @property
    def _pools(self) -> dict[Participant, Pool]:
        return self.deps.participants.pools

    async def _ready(self) -> asyncio.Semaphore:
        """Refuse without prepared transactions; migrate the log (once per instance)."""
        if self._capacity is None:
            capacity = await prepared_capacity(self._pools["inventory"])
            if capacity <= 0:
                raise PreparedTransactionsOff(
                    "the twopc saga design needs PostgreSQL's max_prepared_transactions > 0 (the server has 0): "
                    "restart it with -c max_prepared_transactions=100, or choose another SAASLAB_SAGA")
            await migrate(self.deps.pool, [SCHEMA])
            self._capacity = asyncio.Semaphore(max(1, capacity // len(PARTICIPANTS)))
        return self._capacity

    # -- the design interface (designs.py) ------------------------------------------------------------

    async def open(self) -> None:
        await self._ready()
        await self.recover()
        self._recovering = asyncio.create_task(
            recover_forever(self.recover, self.deps.settings.saga_recovery_interval_s, self.name))

    async def close(self) -> None:
        await self.drivers.close(self._recovering)

    async def settle(self, timeout_s: float) -> bool:
        return await self.drivers.settle(timeout_s)

    async def start(self, order: Order, key: str, now_us: int) -> OrderRecord:
        await self._ready()
        state = start(order.id, now_us)
        record, created = await self.deps.orders.create(order, key, self.name, step_views(state), None, now_us,
                                                        due_at_us=now_us + self.lease_us)
        if created:
            self.drivers.spawn(record.id, self._drive(record, fresh=True))
        return record

    async def recover(self) -> int:
        await self._ready()
        now = self.clock()
        resolved = await self._resolve_orphans(now)
        due = [r for r in await self.deps.orders.due(now) if r.design == self.name and r.id not in self.drivers]
        for record in due:
            self.drivers.spawn(record.id, self._drive(record, fresh=False))
        self.resumed += resolved + len(due)
        return resolved + len(due)

    # -- one order ------------------------------------------------------------------------------------

    async def _drive(self, record: OrderRecord, *, fresh: bool) -> None:
        version: int | None = record.version
        if not fresh:  # take the order over: the save pushes its lease out, and fails if another driver has it
            version = await self._hold(record, version, self.clock())
        while version is not None:
            outcome = await self._resolve_attempts(record.id)
            if outcome is None:
                async with await self._ready():
                    outcome = await self._attempt(record.order)
            if isinstance(outcome, SagaState):
                await self.deps.orders.save(record.id, version, outcome.status, step_views(outcome), None, 0,
                                            outcome.finished_us)
                return
            if outcome is None:
                return  # another driver owns the order now
            version = await self._hold(record, version, self.clock() + outcome)
            await asyncio.sleep(outcome / US)

    async def _hold(self, record: OrderRecord, version: int | None, from_us: int) -> int | None:
        assert version is not None
        return await self.deps.orders.save(record.id, version, "pending", record.steps, None, from_us + self.lease_us)

    async def _attempt(self, order: Order) -> SagaState | int | None:
        """One global transaction: the final state once decided and carried out, a wait (µs) before
        another attempt, or None when another driver took the order over."""
        began = self.clock()
        gids = {p: "" for p in PARTICIPANTS}
        async with self.deps.pool.connection() as c:
            try:
                attempt = await c.fetchval(
                    "INSERT INTO sagas.twopc_log (saga_id, attempt, gids, began_us)"
                    " SELECT $1, n, ARRAY(SELECT $3 || $1 || ':' || n || ':' || p FROM unnest($2::text[]) AS p), $4"
                    " FROM (SELECT coalesce(max(attempt), 0) + 1 AS n FROM sagas.twopc_log WHERE saga_id = $1) AS a"
                    " RETURNING attempt", order.id, list(PARTICIPANTS), GID_PREFIX, began)
            except asyncpg.UniqueViolationError:
                return None
        gids = {p: gid(order.id, attempt, p) for p in PARTICIPANTS}
        state = start(order.id, began)
        try:
            async with _Branches(self._pools) as branches:
                while not isinstance(command := next_command(state, self.clock()), Finished):
                    if isinstance(command, Wait):
                        await asyncio.sleep(max(0, command.until_us - self.clock()) / US)
                        continue
                    if isinstance(command, Do):
                        outcome = await self._do(branches, command.step, order)
                    else:
                        outcome = await self._undo(branches, command.step)
                    state = apply(state, outcome, self.clock(), self.deps.policy)
                if state.status != "completed":
                    await branches.rollback_all()
                    await self._decide(order.id, attempt, "abort", state)
                    await self._resolved(order.id, attempt)
                    return state
                await branches.prepare_all(gids)
                prepared = self.clock()
                await self.deps.faults.before(PREPARED_POINT)
                decision = await self._decide(order.id, attempt, "commit", state, prepared_us=prepared)
                await self.deps.faults.before(DECIDED_POINT)
                # On the branches' own connections: a prepared branch holds its row locks, and other
                # attempts may hold every other connection of the pool while they wait for them.
                await branches.finish_prepared(gids, commit=decision == "commit")
        except _Broken as exc:
            log.info("saga %s attempt %d aborted: %s", order.id, attempt, exc)
            await self._decide(order.id, attempt, "abort", None)
            await self._resolved(order.id, attempt)
            return RETRY_ATTEMPT_US
        await self._resolved(order.id, attempt)
        return state if decision == "commit" else None

    async def _do(self, branches: _Branches, step: Step, order: Order) -> Outcome:
        try:
            async with asyncio.timeout(self.deps.policy.timeout_us(step) / US):
                await self.deps.faults.before(fault_point(step, "before"))
                fault = provider_fault(self.deps, step)
                result: Outcome = await branches.run(step.participant, lambda conn: _action(step, conn, order, fault))
            await self.deps.faults.before(fault_point(step, "after"))  # a crash, error or delay after the effect
            self.deps.faults.after(fault_point(step, "after"))
        except TimeoutError:
            await branches.undo_attempt(step.participant)
            return "timeout"
        except _Broken:
            raise
        except Exception as exc:
            await branches.undo_attempt(step.participant)
            log.info("saga %s: %s failed: %r", order.id, step.name, exc)
            return "timeout" if getattr(exc, "status", None) == 504 else "error"
        return result

    async def _undo(self, branches: _Branches, step: Step) -> Outcome:
        """A compensation in two-phase commit: roll the step's branch back (nothing of it was ever visible)."""
        try:
            async with asyncio.timeout(self.deps.policy.timeout_us(step) / US):
                await self.deps.faults.before(fault_point(step, "before", undo=True))
                await branches.rollback(step.participant)
            await self.deps.faults.before(fault_point(step, "after", undo=True))
            self.deps.faults.after(fault_point(step, "after", undo=True))
        except TimeoutError:
            return "timeout"
        except Exception as exc:
            return "timeout" if getattr(exc, "status", None) == 504 else "error"
        return "ok"

    # -- the coordinator log --------------------------------------------------------------------------

    async def _decide(self, saga_id: str, attempt: int, decision: str, state: SagaState | None, *,
                      prepared_us: int | None = None) -> str:
        """Write the attempt's decision unless one is there already; returns the decision that stands."""
        async with self.deps.pool.connection() as c:
            return await c.fetchval(
                "WITH won AS (UPDATE sagas.twopc_log SET decision = $3, state = $4::jsonb, prepared_us = $5,"
                " decided_us = $6 WHERE saga_id = $1 AND attempt = $2 AND decision IS NULL RETURNING decision)"
                " SELECT decision FROM won UNION ALL SELECT decision FROM sagas.twopc_log"
                " WHERE saga_id = $1 AND attempt = $2 AND NOT EXISTS (SELECT 1 FROM won)",
                saga_id, attempt, decision, None if state is None else json.dumps(state.to_dict()), prepared_us,
                self.clock())

    async def _resolved(self, saga_id: str, attempt: int) -> None:
        async with self.deps.pool.connection() as c:
            await c.execute("UPDATE sagas.twopc_log SET resolved_us = $3 WHERE saga_id = $1 AND attempt = $2"
                            " AND resolved_us IS NULL", saga_id, attempt, self.clock())

    async def _resolve_attempts(self, saga_id: str) -> SagaState | None:
        """Carry out every decision of the order's earlier attempts (presuming abort where none was
        made); the order's final state if one of them ended it."""
        async with self.deps.pool.connection() as c:
            rows = await c.fetch("SELECT attempt, gids, decision, state, resolved_us FROM sagas.twopc_log"
                                 " WHERE saga_id = $1 ORDER BY attempt", saga_id)
        final: SagaState | None = None
        for row in rows:
            decision, state = row["decision"], row["state"]
            if row["resolved_us"] is None:
                if decision is None:
                    decision = await self._decide(saga_id, row["attempt"], "abort", None)
                    if decision == "commit":  # the coordinator got there first after all: read its state
                        async with self.deps.pool.connection() as c:
                            state = await c.fetchval("SELECT state FROM sagas.twopc_log WHERE saga_id = $1"
                                                     " AND attempt = $2", saga_id, row["attempt"])
                for g in row["gids"]:
                    parsed = parse_gid(g)
                    assert parsed is not None
                    await finish_prepared(self._pools[parsed[2]], g, commit=decision == "commit")
                await self._resolved(saga_id, row["attempt"])
            if state is not None:
                final = SagaState.from_dict(json.loads(state))
        return final

    async def _resolve_orphans(self, now_us: int) -> int:
        """Resolve prepared transactions of this design that nobody is carrying out (see the module docstring)."""
        databases = {parts.database_name(url): p for p, url in self.deps.participants.urls.items()}
        async with self._pools["inventory"].connection() as c:
            rows = await c.fetch("SELECT gid, database, prepared FROM pg_prepared_xacts"
                                 " WHERE starts_with(gid, $1) AND database = ANY($2::text[])",
                                 GID_PREFIX, list(databases))
        resolved = 0
        for row in rows:
            parsed = parse_gid(row["gid"])
            if parsed is None or parsed[0] in self.drivers:
                continue
            saga_id, attempt, _ = parsed
            async with self.deps.pool.connection() as c:
                decision = await c.fetchval("SELECT coalesce(decision, 'none') FROM sagas.twopc_log"
                                            " WHERE saga_id = $1 AND attempt = $2", saga_id, attempt)
                held = await c.fetchval("SELECT status = 'pending' AND due_at_us > $2 FROM sagas.orders"
                                        " WHERE id = $1", saga_id, now_us)
            if held and decision in (None, "none"):
                continue  # a live driver elsewhere is between its prepare and its decision
            if decision is None:  # no log row at all: only an old one is surely abandoned
                if (now_us - row["prepared"].timestamp() * US) < self.lease_us:
                    continue
                decision = "abort"
            elif decision == "none":
                decision = await self._decide(saga_id, attempt, "abort", None)
            if await finish_prepared(self._pools[databases[row["database"]]], row["gid"], commit=decision == "commit"):
                resolved += 1
        return resolved
