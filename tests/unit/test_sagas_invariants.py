"""The sagas checker (reference_impl/sagas/invariants.py) on hand-built worlds: it passes a consistent one
and names each kind of violation."""

from __future__ import annotations

from reference_impl.sagas.invariants import (
    ChargeRow,
    OrderRow,
    PaymentRow,
    ReservationRow,
    ShipmentRow,
    StockRow,
    World,
    check,
)
from saaslab.history import History


def consistent() -> World:
    """o1 completed (2 units), o2 compensated after a charge, o3 failed at once; 10 units stocked."""
    return World(
        orders=[OrderRow("o1", "t", "completed", 500, {"A": 2}, 0, 10, "k1"),
                OrderRow("o2", "t", "compensated", 300, {"A": 1}, 0, 10, "k2"),
                OrderRow("o3", "t", "failed", 300, {"A": 50}, 0, 10, "k3")],
        stock=[StockRow("t", "A", 8, 0, 2, 10)],
        reservations=[ReservationRow("o1:reserve", "o1", "t", {"A": 2}, "committed"),
                      ReservationRow("o2:reserve", "o2", "t", {"A": 1}, "released"),
                      ReservationRow("o3:reserve", "o3", "t", {"A": 50}, "refused")],
        payments=[PaymentRow("o1:charge", "o1", 500, "charged", 0), PaymentRow("o2:charge", "o2", 300, "refunded", 300)],
        charges=[ChargeRow("o1:charge", "o1", "t", 500, "succeeded"), ChargeRow("o2:charge", "o2", "t", 300, "succeeded")],
        shipments=[ShipmentRow("o1:schedule", "o1", "scheduled"), ShipmentRow("o2:schedule", "o2", "tombstone")],
    )


def failing(world: World, history: History | None = None) -> set[str]:
    return {r.name for r in check(world, history.ops if history else ()) if not r.valid}


def test_a_consistent_world_passes_every_check() -> None:
    assert failing(consistent()) == set()


def test_a_pending_saga_is_not_terminal() -> None:
    w = consistent()
    w.orders[2] = OrderRow("o3", "t", "pending", 300, {"A": 50})
    assert failing(w) == {"terminal"}


def test_a_compensated_order_that_kept_its_charge_breaks_all_or_nothing_and_money() -> None:
    w = consistent()
    w.payments[1] = PaymentRow("o2:charge", "o2", 300, "charged", 0)
    assert failing(w) == {"all_or_nothing", "money_conserved"}


def test_a_leftover_reservation_breaks_stock_conservation_and_all_or_nothing() -> None:
    w = consistent()
    w.reservations[1] = ReservationRow("o2:reserve", "o2", "t", {"A": 1}, "reserved")
    assert failing(w) == {"all_or_nothing", "stock_conserved"}


def test_a_double_charge_is_caught() -> None:
    w = consistent()
    w.charges.append(ChargeRow("o1:charge-again", "o1", "t", 500, "succeeded"))
    assert {"at_most_once", "money_conserved", "all_or_nothing"} <= failing(w)


def test_an_effect_of_an_unknown_order_is_an_orphan() -> None:
    w = consistent()
    w.shipments.append(ShipmentRow("zz:schedule", "zz", "scheduled"))
    assert failing(w) == {"no_orphans"}


def test_a_prepared_transaction_left_behind_is_caught() -> None:
    w = consistent()
    w.prepared_xacts.append("saga-o1-inventory")
    assert failing(w) == {"no_prepared_transactions"}


def test_an_unknown_outcome_is_never_a_failure_but_a_failed_post_must_not_complete() -> None:
    history = History()
    lost = history.invoke("checkout", {"tenant_id": "t", "key": "k1"})
    history.complete(lost, "info")
    results = {r.name: r for r in check(consistent(), history.ops)}
    assert results["unknown_outcomes"].valid and "1 unknown outcomes" in results["unknown_outcomes"].detail
    assert "1 completed" in results["unknown_outcomes"].detail
    refused = history.invoke("checkout", {"tenant_id": "t", "key": "k1"})
    history.complete(refused, "fail")
    assert failing(consistent(), history) == {"unknown_outcomes"}
