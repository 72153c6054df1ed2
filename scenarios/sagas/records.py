"""The three participants' rows in memory, changed as reference_impl/sagas/participants.py changes them.

Each operation is what one participant transaction does to its rows, applied at once when the
transaction commits (the model charges its time elsewhere, in `scenarios.sagas.lab`): keyed by the saga
step key, idempotent, a compensation that finds no action leaves a tombstone that refuses the late action.
The payment provider (reference_impl/idempotency/provider.py) dedupes by token: asking again with a token
it has seen returns the first charge.

Two-phase commit prepares the same operations: `prepared` holds what a prepared transaction will do at
COMMIT PREPARED; until then nobody sees it (ROLLBACK PREPARED drops it). The provider is not a resource
manager, so a prepared charge has already moved money; rolling it back refunds it.

`world()` reads everything back as reference_impl/sagas/invariants.py's `World`, for the checker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from reference_impl.sagas.core import Order, step_key
from reference_impl.sagas.invariants import (
    ChargeRow,
    OrderRow,
    PaymentRow,
    ReservationRow,
    ShipmentRow,
    StockRow,
    World,
)

Result = str
"""'ok' or 'refused', as participants.py answers."""


@dataclass
class Stock:
    on_hand: int
    reserved: int = 0
    shipped: int = 0
    stocked: int = 0


@dataclass
class Reservation:
    saga_id: str
    units: dict[str, int]
    state: str


@dataclass
class Payment:
    saga_id: str
    amount: int
    state: str
    refunded: int = 0


@dataclass
class Charge:
    reference: str
    amount: int
    status: str


@dataclass
class Prepared:
    """A prepared transaction: what COMMIT PREPARED will apply, and what ROLLBACK PREPARED must undo outside
    the database (a provider charge)."""

    gid: str
    saga_id: str
    participant: str
    commit: Callable[[], None]
    rollback: Callable[[], None] = lambda: None
    locks: list = field(default_factory=list)
    """The SKU row locks it holds (SimPy requests), released when it is resolved."""
    prepared_us: int = 0


class Records:
    """Every participant's rows, the provider's charges and the prepared transactions."""

    def __init__(self, tenant: str, stock: dict[str, int]) -> None:
        self.tenant = tenant
        self.stock = {s: Stock(n, stocked=n) for s, n in stock.items()}
        self.reservations: dict[str, Reservation] = {}
        self.payments: dict[str, Payment] = {}
        self.charges: dict[str, Charge] = {}
        """The provider's, by token (the step key)."""
        self.shipments: dict[str, tuple[str, str]] = {}
        """key -> (saga_id, state)."""
        self.prepared: dict[str, Prepared] = {}

    # --- inventory

    def _move(self, units: dict[str, int], to: str, source: str) -> None:
        for s, q in units.items():
            row = self.stock[s]
            setattr(row, to, getattr(row, to) + q)
            setattr(row, source, getattr(row, source) - q)

    def available(self, order: Order) -> bool:
        return all(self.stock[s].on_hand >= q for s, q in order.units().items())

    def reserve(self, order: Order, key: str) -> Result:
        found = self.reservations.get(key)
        if found is not None:
            return "ok" if found.state in ("reserved", "committed") else "refused"
        units = order.units()
        if not self.available(order):
            self.reservations[key] = Reservation(order.id, units, "refused")
            return "refused"
        self._move(units, "reserved", "on_hand")
        self.reservations[key] = Reservation(order.id, units, "reserved")
        return "ok"

    def release(self, order: Order, key: str) -> None:
        found = self.reservations.get(key)
        if found is None:
            self.reservations[key] = Reservation(order.id, order.units(), "tombstone")
        elif found.state == "reserved":
            self._move(found.units, "on_hand", "reserved")
            found.state = "released"

    def commit(self, order: Order, reserve_key: str) -> Result:
        found = self.reservations.get(reserve_key)
        if found is not None and found.state == "committed":
            return "ok"
        if found is None or found.state != "reserved":
            return "refused"
        self._move(found.units, "shipped", "reserved")
        found.state = "committed"
        return "ok"

    # --- payments and the provider

    def provider_charge(self, order: Order, token: str, declined: bool) -> Charge:
        """The provider's side of a charge: one per token, whatever becomes of its caller."""
        made = self.charges.get(token)
        if made is None:
            made = self.charges[token] = Charge(order.id, order.amount, "failed" if declined else "succeeded")
        return made

    def charge_known(self, key: str) -> Result | None:
        """What a charge answers without asking the provider: 'ok' if charged, 'refused' if declined, refunded or
        tombstoned; None when there is no row, so the provider is asked (participants.charge)."""
        row = self.payments.get(key)
        if row is None:
            return None
        return "ok" if row.state == "charged" else "refused"

    def record_charge(self, order: Order, key: str, made: Charge) -> Result:
        """The payments row once the provider answered `made`; a row written meanwhile (a tombstone) wins, as the
        row lock makes it in the service."""
        known = self.charge_known(key)
        if known is not None:
            return known
        state = "charged" if made.status == "succeeded" else "declined"
        self.payments[key] = Payment(order.id, order.amount, state)
        return "ok" if state == "charged" else "refused"

    def refund(self, order: Order, key: str) -> None:
        row = self.payments.get(key)
        if row is None:
            made = self.charges.get(key)
            charged = made is not None and made.status == "succeeded"
            self.payments[key] = Payment(order.id, order.amount, "refunded" if charged else "tombstone",
                                         order.amount if charged else 0)
        elif row.state == "charged":
            row.state, row.refunded = "refunded", row.amount

    # --- shipping

    def schedule(self, order: Order, key: str) -> Result:
        found = self.shipments.get(key)
        if found is None:
            self.shipments[key] = (order.id, "scheduled")
            return "ok"
        return "ok" if found[1] == "scheduled" else "refused"

    def cancel(self, order: Order, key: str) -> None:
        found = self.shipments.get(key)
        if found is None:
            self.shipments[key] = (order.id, "tombstone")
        elif found[1] == "scheduled":
            self.shipments[key] = (order.id, "cancelled")

    # --- one step's action or compensation, by step name

    def act(self, step: str, order: Order, made: Charge | None = None) -> Result:
        """A step's action; for `charge`, `made` is the provider's answer (None when it was not asked)."""
        key = step_key(order.id, step)
        if step == "reserve":
            return self.reserve(order, key)
        if step == "charge":
            known = self.charge_known(key)
            return known if known is not None or made is None else self.record_charge(order, key, made)
        if step == "schedule":
            return self.schedule(order, key)
        if step == "commit":
            return self.commit(order, step_key(order.id, "reserve"))
        raise KeyError(step)

    def compensate(self, step: str, order: Order) -> None:
        key = step_key(order.id, step)
        {"reserve": self.release, "charge": self.refund, "schedule": self.cancel}[step](order, key)

    # --- read back

    def world(self, orders: list[OrderRow]) -> World:
        return World(
            orders=orders,
            stock=[StockRow(self.tenant, s, r.on_hand, r.reserved, r.shipped, r.stocked) for s, r in self.stock.items()],
            reservations=[ReservationRow(k, r.saga_id, self.tenant, r.units, r.state)
                          for k, r in self.reservations.items()],
            payments=[PaymentRow(k, p.saga_id, p.amount, p.state, p.refunded) for k, p in self.payments.items()],
            charges=[ChargeRow(token, c.reference, self.tenant, c.amount, c.status) for token, c in self.charges.items()],
            shipments=[ShipmentRow(k, saga_id, state) for k, (saga_id, state) in self.shipments.items()],
            prepared_xacts=sorted(self.prepared),
        )
