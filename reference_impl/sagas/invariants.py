"""The sagas checker: pure checks over a checkout history and the final state of the three databases.

The same checks run on a simulated world, on a live run (saaslab/live/) and in pytest. `World` is
what is read back: the orders (the saga log, or whatever a design keeps as an order's status) and the
rows of the inventory, payments and shipping databases, plus the provider's charges, which are the
money that actually moved. Every check returns a `saaslab.history.CheckResult`.

* `terminal`: every saga is completed, compensated or failed; with a bound, each finished within
  `bound_us` of the later of its start and the moment faults stopped.
* `all_or_nothing`: a completed order has its reservation committed, its amount charged and not
  refunded, its shipment scheduled; a compensated or failed one has none of them left.
* `stock_conserved`: per SKU, on_hand + reserved + shipped = stocked (every unit ever put in), none
  negative; `reserved` and `shipped` equal the units of live and committed reservations.
* `money_conserved`: charges - refunds = the amounts of the completed orders.
* `no_orphans`: no reservation, payment, provider charge or shipment of an order nobody knows.
* `at_most_once`: per order, at most one effect per step (one live reservation, one successful
  provider charge, one live shipment), however many deliveries or retries there were.
* `no_prepared_transactions`: two-phase commit left nothing in `pg_prepared_xacts`.
* `unknown_outcomes` (Jepsen's rule): a POST the client saw fail must not have completed; a POST
  whose answer was lost (`info`) is unknown, never counted as failed: the detail says how many such
  orders completed anyway.

History: `f == "checkout"`; the invoke's value carries `key` (the Idempotency-Key) and `tenant_id`,
the completion's `order_id` when the client learnt it. Ops are matched to orders by order id, else by
(tenant, key).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reference_impl.sagas.core import TERMINAL
from saaslab.history import CheckResult, Op, load, pairs

MAX_EXAMPLES = 5
LIVE_RESERVATION = frozenset({"reserved", "committed"})


@dataclass(frozen=True, slots=True)
class OrderRow:
    id: str
    tenant_id: str
    status: str
    amount: int
    units: Mapping[str, int]
    started_us: int = 0
    finished_us: int | None = None
    key: str | None = None
    """The Idempotency-Key of the POST that created it."""


@dataclass(frozen=True, slots=True)
class StockRow:
    tenant_id: str
    sku: str
    on_hand: int
    reserved: int
    shipped: int
    stocked: int


@dataclass(frozen=True, slots=True)
class ReservationRow:
    key: str
    saga_id: str
    tenant_id: str
    units: Mapping[str, int]
    state: str


@dataclass(frozen=True, slots=True)
class PaymentRow:
    key: str
    saga_id: str
    amount: int
    state: str
    refunded: int


@dataclass(frozen=True, slots=True)
class ChargeRow:
    """A provider charge: `reference` is the order id, `token` the step key."""

    token: str
    reference: str | None
    account: str
    amount: int
    status: str


@dataclass(frozen=True, slots=True)
class ShipmentRow:
    key: str
    saga_id: str
    state: str


@dataclass(frozen=True)
class World:
    orders: list[OrderRow]
    stock: list[StockRow] = field(default_factory=list)
    reservations: list[ReservationRow] = field(default_factory=list)
    payments: list[PaymentRow] = field(default_factory=list)
    charges: list[ChargeRow] = field(default_factory=list)
    shipments: list[ShipmentRow] = field(default_factory=list)
    prepared_xacts: list[str] = field(default_factory=list)
    """`gid`s in pg_prepared_xacts of the participants' databases."""


@dataclass(frozen=True)
class _Effects:
    """Per order: what is left of each step's effect."""

    live_reservations: Counter[str]
    committed: Counter[str]
    charged: Counter[str]
    """Money that moved: successful provider charges."""
    refunded: Counter[str]
    successful_charges: Counter[str]
    live_shipments: Counter[str]

    @classmethod
    def of(cls, world: World) -> _Effects:
        e = cls(Counter(), Counter(), Counter(), Counter(), Counter(), Counter())
        for r in world.reservations:
            if r.state in LIVE_RESERVATION:
                e.live_reservations[r.saga_id] += 1
            if r.state == "committed":
                e.committed[r.saga_id] += 1
        for c in world.charges:
            if c.status == "succeeded" and c.reference is not None:
                e.charged[c.reference] += c.amount
                e.successful_charges[c.reference] += 1
        for p in world.payments:
            e.refunded[p.saga_id] += p.refunded
        for s in world.shipments:
            if s.state == "scheduled":
                e.live_shipments[s.saga_id] += 1
        return e

    def net_charged(self, order_id: str) -> int:
        return self.charged[order_id] - self.refunded[order_id]


def _result(name: str, checked: int, bad: list[dict[str, Any]], detail: str = "") -> CheckResult:
    return CheckResult(name, not bad, checked, len(bad), bad[:MAX_EXAMPLES], detail)


def terminal(world: World, *, faults_stopped_us: int | None = None, bound_us: int | None = None) -> CheckResult:
    bad: list[dict[str, Any]] = []
    for o in world.orders:
        if o.status not in TERMINAL:
            bad.append({"order": o.id, "status": o.status})
        elif bound_us is not None and o.finished_us is not None:
            since = max(o.started_us, faults_stopped_us or 0)
            if o.finished_us - since > bound_us:
                bad.append({"order": o.id, "status": o.status, "took_us": o.finished_us - since})
    bound = "" if bound_us is None else f" within {bound_us / 1e6:g} s of the faults' end"
    return _result("terminal", len(world.orders), bad, f"every saga completed, compensated or failed{bound}")


def all_or_nothing(world: World) -> CheckResult:
    e = _Effects.of(world)
    bad: list[dict[str, Any]] = []
    checked = 0
    for o in world.orders:
        if o.status not in TERMINAL:
            continue
        checked += 1
        left = {"reserved": e.live_reservations[o.id], "committed": e.committed[o.id],
                "net_charged": e.net_charged(o.id), "shipments": e.live_shipments[o.id]}
        if o.status == "completed":
            ok = left == {"reserved": 1, "committed": 1, "net_charged": o.amount, "shipments": 1}
        else:
            ok = left == {"reserved": 0, "committed": 0, "net_charged": 0, "shipments": 0}
        if not ok:
            bad.append({"order": o.id, "status": o.status, **left})
    return _result("all_or_nothing", checked, bad,
                   "completed: every step's effect present once; compensated or failed: none left")


def stock_conserved(world: World) -> CheckResult:
    held: Counter[tuple[str, str]] = Counter()
    shipped: Counter[tuple[str, str]] = Counter()
    for r in world.reservations:
        for sku, qty in r.units.items():
            if r.state == "reserved":
                held[(r.tenant_id, sku)] += qty
            elif r.state == "committed":
                shipped[(r.tenant_id, sku)] += qty
    bad: list[dict[str, Any]] = []
    for s in world.stock:
        k = (s.tenant_id, s.sku)
        if (min(s.on_hand, s.reserved, s.shipped) < 0 or s.on_hand + s.reserved + s.shipped != s.stocked
                or s.reserved != held[k] or s.shipped != shipped[k]):
            bad.append({"tenant": s.tenant_id, "sku": s.sku, "on_hand": s.on_hand, "reserved": s.reserved,
                        "shipped": s.shipped, "stocked": s.stocked, "reservations_hold": held[k],
                        "reservations_shipped": shipped[k]})
    return _result("stock_conserved", len(world.stock), bad,
                   "on_hand + reserved = stocked - shipped, none negative, matching the reservations")


def money_conserved(world: World) -> CheckResult:
    e = _Effects.of(world)
    net = sum(c.amount for c in world.charges if c.status == "succeeded") - sum(p.refunded for p in world.payments)
    owed = sum(o.amount for o in world.orders if o.status == "completed")
    bad = [] if net == owed else [{"charges_minus_refunds": net, "completed_amounts": owed}]
    bad += [{"order": o.id, "status": o.status, "net_charged": e.net_charged(o.id), "amount": o.amount}
            for o in world.orders if o.status in TERMINAL
            and e.net_charged(o.id) != (o.amount if o.status == "completed" else 0)]
    return _result("money_conserved", len(world.orders), bad, "charges - refunds = amounts of completed orders")


def no_orphans(world: World) -> CheckResult:
    known = {o.id for o in world.orders}
    bad: list[dict[str, Any]] = []
    bad += [{"reservation": r.key, "state": r.state} for r in world.reservations
            if r.saga_id not in known and r.state in LIVE_RESERVATION]
    bad += [{"payment": p.key, "state": p.state} for p in world.payments
            if p.saga_id not in known and p.state == "charged"]
    bad += [{"charge": c.token, "reference": c.reference} for c in world.charges
            if c.status == "succeeded" and c.reference not in known]
    bad += [{"shipment": s.key} for s in world.shipments if s.saga_id not in known and s.state == "scheduled"]
    checked = len(world.reservations) + len(world.payments) + len(world.charges) + len(world.shipments)
    return _result("no_orphans", checked, bad, "every effect belongs to a known order")


def at_most_once(world: World) -> CheckResult:
    e = _Effects.of(world)
    ids = {o.id for o in world.orders} | set(e.live_reservations) | set(e.successful_charges) | set(e.live_shipments)
    bad = [{"order": i, "reservations": e.live_reservations[i], "charges": e.successful_charges[i],
            "shipments": e.live_shipments[i]}
           for i in sorted(ids)
           if max(e.live_reservations[i], e.successful_charges[i], e.live_shipments[i]) > 1]
    return _result("at_most_once", len(ids), bad, "at most one effect per step per order")


def no_prepared_transactions(world: World) -> CheckResult:
    bad = [{"gid": gid} for gid in world.prepared_xacts]
    return _result("no_prepared_transactions", len(world.prepared_xacts), bad,
                   "pg_prepared_xacts is empty after recovery")


def unknown_outcomes(history: Iterable[Op], world: World) -> CheckResult:
    by_id = {o.id: o for o in world.orders}
    by_key = {(o.tenant_id, o.key): o for o in world.orders if o.key is not None}
    statuses: dict[str, Counter[str]] = defaultdict(Counter)
    bad: list[dict[str, Any]] = []
    checked = 0
    for invoked, done in pairs(history):
        if invoked.f != "checkout":
            continue
        checked += 1
        kind = "info" if done is None else done.type
        value = {**invoked.value, **(done.value if done else {})}
        order = by_id.get(value.get("order_id", "")) or by_key.get((value.get("tenant_id"), value.get("key")))
        statuses[kind][order.status if order else "absent"] += 1
        if kind == "fail" and order is not None and order.status == "completed":
            bad.append({"key": value.get("key"), "order": order.id, "status": order.status})
    info = statuses["info"]
    detail = (f"{sum(info.values())} unknown outcomes (never counted as failed): "
              + ", ".join(f"{n} {s}" for s, n in sorted(info.items()))) if info else "no unknown outcomes"
    return _result("unknown_outcomes", checked, bad, detail)


def check(world: World, history: Iterable[Op] = (), *, faults_stopped_us: int | None = None,
          bound_us: int | None = None) -> list[CheckResult]:
    """Every invariant, in the order a report lists them."""
    return [terminal(world, faults_stopped_us=faults_stopped_us, bound_us=bound_us), all_or_nothing(world),
            stock_conserved(world), money_conserved(world), no_orphans(world), at_most_once(world),
            no_prepared_transactions(world), unknown_outcomes(list(history), world)]


# ---------------------------------------------------------------------------------------------
# A live run's folder: `live/history.jsonl` and `live/state.json` ({design: world}), as saaslab/live/sagas.py writes them

_ROWS: dict[str, type] = {"orders": OrderRow, "stock": StockRow, "reservations": ReservationRow,
                          "payments": PaymentRow, "charges": ChargeRow, "shipments": ShipmentRow}


def world_to_json(world: World) -> dict[str, Any]:
    return asdict(world)


def world_from_json(data: Mapping[str, Any]) -> World:
    return World(**{name: [cls(**row) for row in data.get(name, [])] for name, cls in _ROWS.items()},
                 prepared_xacts=list(data.get("prepared_xacts", [])))


def check_designs(history: list[Op], worlds: Mapping[str, World], **bounds: Any) -> list[CheckResult]:
    """Every check per design, named `check[design]`; each design sees only its own ops (`value.design`)."""
    results: list[CheckResult] = []
    for design, world in worlds.items():
        mine = [op for op in history if op.value.get("design") in (design, None)]
        for r in check(world, mine, **bounds):
            r.name = f"{r.name}[{design}]"
            results.append(r)
    return results


def check_run(out_dir: Path, settings: object = None) -> list[CheckResult]:
    """Check a run folder from the files the load run wrote (the state was read back while it ran);
    writes `out_dir/live/check.json`. `settings` is part of every checker's interface; unused here."""
    live = out_dir / "live"
    state = json.loads((live / "state.json").read_text()) if (live / "state.json").exists() else {}
    results = check_designs(load(live / "history.jsonl"), {d: world_from_json(w) for d, w in state.items()})
    (live / "check.json").write_text(json.dumps([r.to_dict() for r in results], indent=2))
    return results
