"""The four designs as SimPy drivers of reference_impl/sagas/core.py's step machine (the package docstring
describes what each costs and how each recovers). None keeps a decision of its own: what to do next,
when to retry, when to give up and what to compensate all come from `core.next_command` and `core.apply`.

A driver offers `start(saga)` (a POST: record the order, then drive it), `background()` (the work its
process runs while up: recovery loops, relays), `restarted()` (what runs when the process is back after a
crash) and `recovers` (whether anything ever resumes an abandoned saga).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from reference_impl.sagas.core import (
    CHECKOUT,
    Do,
    Finished,
    Outcome,
    SagaState,
    Undo,
    Wait,
    apply,
    next_command,
    start,
    step_key,
)
from scenarios.kernel import US_PER_MS, US_PER_S
from scenarios.sagas.records import Charge, Prepared

if TYPE_CHECKING:
    from scenarios.sagas.lab import Lab, Saga, Work


class Driver:
    name = ""
    recovers = True

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def start(self, saga: Saga) -> Work:
        raise NotImplementedError

    def background(self) -> Iterable[Work]:
        return ()

    def restarted(self) -> Iterable[Work]:
        return self.background()

    def _apply(self, state: SagaState, outcome: Outcome) -> SagaState:
        return apply(state, outcome, self.lab.now_us(), self.lab.policy)


class Orchestration(Driver):
    """A durable orchestrator: the order row holds the saga log, saved after every outcome; a lease per saga;
    recovery (at start-up and every `recovery_interval_s`) resumes each pending saga whose lease ran out."""

    name = "orchestration"

    def start(self, saga: Saga) -> Work:
        lab = self.lab
        yield from lab.round_trip()  # INSERT the order with its saga log
        saga.state = start(saga.order.id, lab.now_us())
        saga.due_us = lab.now_us() + self._lease()
        saga.epoch = lab.epoch
        lab.accept(saga)
        lab.spawn(self._drive(saga))

    def _lease(self) -> int:
        return round(self.lab.setup.lease_s * US_PER_S)

    def _drive(self, saga: Saga) -> Work:
        lab = self.lab
        state = saga.state
        assert state is not None
        while True:
            command = next_command(state, lab.now_us())
            if isinstance(command, Finished):
                return
            if isinstance(command, Wait):
                yield lab.sleep_until(command.until_us)
                continue
            outcome = yield from lab.local_step(command.step, saga, undo=isinstance(command, Undo))
            state = self._apply(state, outcome)
            yield from lab.round_trip()  # save the log, guarded by the row's version
            saga.state = state
            saga.due_us = max(state.retry_at_us, lab.now_us()) + self._lease()
            if state.terminal:
                lab.finish(saga, state)

    def background(self) -> Iterable[Work]:
        return (self._recover_forever(),)

    def _recover_forever(self) -> Work:
        lab = self.lab
        interval = round(lab.setup.recovery_interval_s * US_PER_S)
        while True:
            yield from lab.round_trip()  # SELECT the pending sagas whose lease ran out
            for saga in list(lab.sagas.values()):
                if saga.status == "pending" and saga.epoch != lab.epoch and saga.due_us <= lab.now_us():
                    saga.epoch = lab.epoch
                    lab.spawn(self._take_over(saga))
            yield lab.env.timeout(interval)

    def _take_over(self, saga: Saga) -> Work:
        yield from self.lab.round_trip()  # the save that moves the lease to this driver
        yield from self._drive(saga)


class DualWrites(Driver):
    """UNSAFE ON PURPOSE: each step's action once, in order; no log, no retry, no compensation. An order refused
    or failed halfway keeps what earlier steps did; a crash leaves it pending with its effects forever."""

    name = "unsafe"
    recovers = False

    def start(self, saga: Saga) -> Work:
        lab = self.lab
        yield from lab.round_trip()  # INSERT the order
        lab.accept(saga)
        lab.spawn(self._write(saga))

    def _write(self, saga: Saga) -> Work:
        lab = self.lab
        state = start(saga.order.id, lab.now_us())
        for step in CHECKOUT:
            outcome = yield from lab.local_step(step, saga, undo=False)
            if outcome != "ok":
                yield from lab.round_trip()  # UPDATE the order: failed, whatever earlier steps did stays done
                lab.finish(saga, None, "failed")
                return
            state = self._apply(state, "ok")
        yield from lab.round_trip()
        lab.finish(saga, state)


class TwoPhaseCommit(Driver):
    """Two-phase commit with the step machine as coordinator: an action is its participant's transaction up to
    PREPARE TRANSACTION (locks kept), a compensation is ROLLBACK PREPARED, and the retriable last step is the
    decision: logged, then COMMIT PREPARED at all three. The coordinator logs the saga's start, the decision
    and its end; after a crash it rolls back what was prepared without a decision (presumed abort: the prepared
    prefix is compensated by the step machine) and finishes what was decided."""

    name = "twopc"

    def start(self, saga: Saga) -> Work:
        lab = self.lab
        yield from lab.round_trip()  # the coordinator log's begin record, with the order
        saga.state = start(saga.order.id, lab.now_us())
        saga.epoch = lab.epoch
        lab.accept(saga)
        lab.spawn(self._drive(saga, saga.state))

    def _drive(self, saga: Saga, state: SagaState) -> Work:
        lab = self.lab
        while True:
            command = next_command(state, lab.now_us())
            if isinstance(command, Finished):
                yield from lab.round_trip()  # the log's end record
                lab.finish(saga, state)
                return
            if isinstance(command, Wait):
                yield lab.sleep_until(command.until_us)
                continue
            step = command.step
            if isinstance(command, Undo):
                outcome = yield from lab.attempt(step, lambda fault, s=step: self._rollback(saga, s.name, fault))
            elif step.retriable:
                outcome = yield from lab.attempt(step, lambda fault: self._decide(saga, fault))
            else:
                outcome = yield from lab.attempt(step, lambda fault, s=step: self._prepare(saga, s, fault))
            state = self._apply(state, outcome)

    def _gid(self, saga: Saga, step: str) -> str:
        return step_key(saga.order.id, step)

    def _prepare(self, saga: Saga, step, fault: str | None) -> Work:  # type: ignore[no-untyped-def]
        lab, records, order = self.lab, self.lab.records, saga.order
        gid = self._gid(saga, step.name)
        if gid in records.prepared:  # a retry after a lost answer: PREPARE happened (pg_prepared_xacts says so)
            yield from lab.round_trip()
            return "ok"

        def vote(made: Charge | None) -> str:
            if step.name == "reserve":
                if not records.available(order):
                    return "refused"
                commit = lambda: (records.reserve(order, gid), records.commit(order, gid))  # noqa: E731
                return self._enlist(saga, gid, step.participant, commit)
            if step.name == "charge":
                if made is None or made.status != "succeeded":
                    return "refused"
                key = gid
                return self._enlist(saga, gid, step.participant, lambda: records.record_charge(order, key, made),
                                    rollback=lambda: records.refund(order, key))
            return self._enlist(saga, gid, step.participant, lambda: records.schedule(order, gid))

        provider = (order, gid, saga.declined) if step.name == "charge" else None
        result, locks = yield from lab.transaction(step.participant, step.action, skus=tuple(order.units()),
                                                   effect=vote, fault=fault, provider=provider, prepare=True)
        if gid in records.prepared:
            records.prepared[gid].locks = locks
        else:
            lab.unlock_all(locks)
        return result

    def _enlist(self, saga: Saga, gid: str, participant: str, commit, rollback=lambda: None) -> str:  # type: ignore[no-untyped-def]
        self.lab.records.prepared[gid] = Prepared(gid, saga.order.id, participant, commit, rollback,
                                                  prepared_us=int(self.lab.env.now))
        return "ok"

    def _resolve(self, gid: str, *, commit: bool) -> None:
        lab = self.lab
        prepared = lab.records.prepared.pop(gid, None)
        if prepared is None:
            return
        (prepared.commit if commit else prepared.rollback)()
        lab.unlock_all(prepared.locks)
        held = int(lab.env.now) - prepared.prepared_us
        lab.stats.in_doubt.record_us(held)
        lab.stats.in_doubt_max_us = max(lab.stats.in_doubt_max_us, held)

    def _decide(self, saga: Saga, fault: str | None) -> Work:
        lab = self.lab
        yield from lab.round_trip()  # the decision, in the coordinator log
        if fault == "error":
            return "error"
        saga.decided = True
        for step in CHECKOUT[:-1]:
            yield from lab.round_trip()  # COMMIT PREPARED (a gid already gone: committed before)
            self._resolve(self._gid(saga, step.name), commit=True)
        return "ok"

    def _rollback(self, saga: Saga, step: str, fault: str | None) -> Work:
        yield from self.lab.round_trip()  # ROLLBACK PREPARED (a gid already gone: a no-op)
        if fault == "error":
            return "error"
        gid = self._gid(saga, step)
        if gid not in self.lab.records.prepared and step == "charge":
            self.lab.records.refund(saga.order, gid)  # charged but never prepared: the provider still has it
        self._resolve(gid, commit=False)
        return "ok"

    def restarted(self) -> Iterable[Work]:
        return (self._recover(),)

    def _recover(self) -> Work:
        """In-doubt recovery at start-up: the coordinator log's unfinished sagas, and pg_prepared_xacts."""
        lab = self.lab
        yield from lab.round_trip()  # the coordinator log's unfinished sagas
        yield from lab.round_trip(len(CHECKOUT) - 1)  # SELECT gid FROM pg_prepared_xacts, at each participant
        for saga in [s for s in lab.sagas.values() if s.status == "pending" and s.epoch != lab.epoch]:
            saga.epoch = lab.epoch
            state = start(saga.order.id, saga.started_us)
            for step in CHECKOUT[:-1]:
                if not (saga.decided or self._gid(saga, step.name) in lab.records.prepared):
                    break
                state = self._apply(state, "ok")
            in_flight = CHECKOUT[state.cursor]
            if not saga.decided and not state.terminal and not in_flight.retriable:
                if in_flight.name == "charge":  # its transaction died unprepared, but the provider may have charged
                    yield from lab.round_trip()
                    lab.records.refund(saga.order, self._gid(saga, "charge"))
                state = self._apply(state, "refused")  # no decision: abort, compensating what was prepared
            lab.spawn(self._drive(saga, state))


@dataclass
class _Entry:
    """A stream entry: an event on its way to a participant's consumer group."""

    event: _Event
    delivered_us: int = 0
    deliveries: int = 0
    acked: bool = False


@dataclass
class _Event:
    key: str
    """(saga, kind, step): the inbox's deduplication key."""
    saga_id: str
    target: str
    state: SagaState
    sent: bool = False


@dataclass
class _Outbox:
    rows: dict[str, _Event] = field(default_factory=dict)
    unsent: list[_Event] = field(default_factory=list)


class Choreography(Driver):
    """Participants react to events. Each transition of the step machine is committed with its participant's
    change as an outbox row (transactional outbox: the event carries the new saga state); a relay per database
    polls its outbox, XADDs each row to the target's stream and marks it sent; a consumer reads, checks its
    inbox, runs its step (retrying in place as the machine says, the entry still pending) and writes the
    next event in the same transaction, then XACKs. The order service consumes the final event. After a
    crash, rows published but not marked sent go out again (inboxes drop the duplicates) and entries left
    pending are reclaimed once idle past the visibility timeout."""

    name = "choreography"

    def __init__(self, lab: Lab) -> None:
        super().__init__(lab)
        self.outboxes = {db: _Outbox() for db in ("orders", "inventory", "payments", "shipping")}
        self.inboxes: dict[str, set[str]] = {db: set() for db in self.outboxes}
        self.pending: list[_Entry] = []

    def _event(self, saga_id: str, state: SagaState) -> _Event:
        command = next_command(state, self.lab.now_us())
        if isinstance(command, Finished):
            return _Event(f"{saga_id}:finished", saga_id, "orders", state)
        assert isinstance(command, Do | Undo), "a committed transition never waits"
        kind = "undo" if isinstance(command, Undo) else "do"
        return _Event(f"{saga_id}:{kind}:{command.step.name}", saga_id, command.step.participant, state)

    def _write_outbox(self, db: str, event: _Event) -> None:
        outbox = self.outboxes[db]
        if event.key not in outbox.rows:
            outbox.rows[event.key] = event
            outbox.unsent.append(event)

    def start(self, saga: Saga) -> Work:
        lab = self.lab
        yield from lab.round_trip(4)  # BEGIN, INSERT the order, INSERT its first event into the outbox, COMMIT
        saga.state = start(saga.order.id, lab.now_us())
        self._write_outbox("orders", self._event(saga.order.id, saga.state))
        lab.accept(saga)

    def background(self) -> Iterable[Work]:
        return (*(self._relay(db) for db in self.outboxes), self._reclaim_forever())

    def _relay(self, db: str) -> Work:
        lab = self.lab
        poll = round(lab.setup.relay_poll_ms * US_PER_MS)
        while True:
            yield lab.env.timeout(poll)
            outbox = self.outboxes[db]
            outbox.unsent = [e for e in outbox.unsent if not e.sent]
            unsent = list(outbox.unsent)  # this batch: rows written while it goes out wait for the next poll
            if not unsent:
                continue
            yield from lab.round_trip()  # SELECT the unsent rows
            for event in unsent:
                yield from lab.redis_trip()  # XADD
                lab.stats.events += 1
                entry = _Entry(event)
                self.pending.append(entry)
                lab.spawn(self._consume(entry))
            yield from lab.round_trip()  # UPDATE them sent (a crash before this publishes them again)
            for event in unsent:
                event.sent = True

    def _reclaim_forever(self) -> Work:
        lab = self.lab
        interval = round(lab.setup.recovery_interval_s * US_PER_S)
        visibility = round(lab.setup.visibility_timeout_s * US_PER_S)
        while True:
            yield lab.env.timeout(interval)
            self.pending = [e for e in self.pending if not e.acked]
            if not self.pending:
                continue
            yield from lab.redis_trip()  # XAUTOCLAIM entries idle past the visibility timeout
            for entry in self.pending:
                if not entry.acked and int(lab.env.now) - entry.delivered_us >= visibility:
                    lab.stats.redeliveries += 1
                    lab.spawn(self._consume(entry))

    def _consume(self, entry: _Entry) -> Work:
        lab = self.lab
        entry.deliveries += 1
        entry.delivered_us = int(lab.env.now)
        yield from lab.redis_trip()  # the blocked XREADGROUP returns it
        event = entry.event
        saga = lab.sagas[event.saga_id]
        db = event.target
        if event.key in self.inboxes[db]:
            yield from lab.round_trip()  # the inbox insert finds it: a duplicate
        elif db == "orders":
            yield from lab.round_trip(4)  # BEGIN, the inbox row, UPDATE the order, COMMIT
            self.inboxes[db].add(event.key)
            lab.finish(saga, event.state)
        else:
            yield from self._handle(saga, event)
        yield from lab.redis_trip()  # XACK
        entry.acked = True

    def _handle(self, saga: Saga, event: _Event) -> Work:
        lab = self.lab
        db = event.target
        state = event.state

        def commit(result: Outcome) -> None:
            self.inboxes[db].add(event.key)
            self._write_outbox(db, self._event(saga.order.id, self._apply(state, result)))

        while event.key not in self.inboxes[db]:
            command = next_command(state, lab.now_us())
            if isinstance(command, Wait):
                yield lab.sleep_until(command.until_us)
                continue
            assert isinstance(command, Do | Undo)
            outcome = yield from lab.local_step(command.step, saga, undo=isinstance(command, Undo), extra=2,
                                                then=commit)
            if outcome in ("ok", "refused"):
                return
            state = self._apply(state, outcome)


DRIVERS: dict[str, type[Driver]] = {d.name: d for d in (Orchestration, Choreography, TwoPhaseCommit, DualWrites)}


def make_driver(design: str, lab: Lab) -> Driver:
    try:
        return DRIVERS[design](lab)
    except KeyError:
        raise ValueError(f"unknown saga design {design!r}; choose one of {', '.join(DRIVERS)}") from None
