"""The idempotency checker on hand-made histories: it passes safe ones and catches each kind of violation."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from reference_impl.idempotency.invariants import (
    F_PAY,
    attempt_value,
    check,
    exactly_one_effect,
    no_orphan_charges,
    replays_match_first,
    response_value,
)
from reference_impl.idempotency.ledger import LedgerState, Payment
from reference_impl.idempotency.provider import Charge
from saaslab.history import History, Op

T = "tenant-1"
WHEN = datetime(2024, 1, 1, tzinfo=UTC)


def charge(n: int, key: str, status: str = "succeeded") -> Charge:
    return Charge(f"ch_{n}", T, f"tok_{n}", key, 100, "EUR", status)


def payment(n: int, key: str) -> Payment:
    return Payment(uuid.UUID(int=n), T, key, f"ch_{n}", 100, "EUR", "succeeded", WHEN)


def body(n: int) -> bytes:
    return json.dumps({"id": str(uuid.UUID(int=n)), "amount": 100}).encode()


def answer(h: History, key: str, kind: str, status: int, payload: bytes = b"", replayed: bool = False) -> None:
    invoked = h.invoke(F_PAY, attempt_value(T, key))
    value = response_value(status, payload, replayed) if kind == "ok" else {"status": status}
    h.complete(invoked, kind, value)  # type: ignore[arg-type]


def test_a_safe_history_passes_every_check() -> None:
    h = History()
    answer(h, "k1", "ok", 201, body(1))
    answer(h, "k1", "fail", 409)
    answer(h, "k1", "ok", 201, body(1), replayed=True)
    answer(h, "k2", "info", 504)  # the charge happened but the answer was lost...
    answer(h, "k2", "ok", 201, body(2))  # ...and the retry finished it
    answer(h, "k3", "ok", 402, b'{"type":"declined"}')
    answer(h, "k3", "ok", 402, b'{"type":"declined"}', replayed=True)
    state = LedgerState((charge(1, "k1"), charge(2, "k2"), charge(3, "k3", "failed")), (payment(1, "k1"), payment(2, "k2")))
    results = check(h.ops, state)
    assert [(r.name, r.valid) for r in results] == [("exactly_one_effect", True), ("replays_match_first", True),
                                                    ("no_orphan_charges", True)]
    assert [r.checked for r in results] == [3, 2, 4]


def test_duplicate_charges_for_one_key_are_caught() -> None:
    h = History()
    for n in range(3):  # the none design: every attempt pays
        answer(h, "k", "ok", 201, body(n))
    state = LedgerState(tuple(charge(n, "k") for n in range(3)), tuple(payment(n, "k") for n in range(3)))
    result = exactly_one_effect(h.ops, state)
    assert (result.valid, result.checked, result.violations) == (False, 1, 1)
    assert result.examples[0]["charges"] == 3 and result.examples[0]["payments"] == 3
    assert no_orphan_charges(state).valid  # each charge has its payment: only the count is wrong


def test_a_201_must_be_backed_by_exactly_one_charge_and_payment_and_name_it() -> None:
    h = History()
    answer(h, "k", "ok", 201, body(1))
    assert not exactly_one_effect(h.ops, LedgerState((), ())).valid
    assert not exactly_one_effect(h.ops, LedgerState((charge(1, "k"),), ())).valid
    assert not exactly_one_effect(h.ops, LedgerState((charge(2, "k"),), (payment(2, "k"),))).valid  # another id
    assert exactly_one_effect(h.ops, LedgerState((charge(1, "k"),), (payment(1, "k"),))).valid


def test_a_replay_differing_by_one_byte_is_caught() -> None:
    h = History()
    answer(h, "k", "ok", 201, body(1))
    answer(h, "k", "ok", 201, body(1) + b" ", replayed=True)
    result = replays_match_first(h.ops)
    assert (result.valid, result.checked, result.violations) == (False, 1, 1)


def test_replays_agree_with_each_other_when_the_first_answer_was_lost() -> None:
    h = History()
    answer(h, "k", "info", 504)
    answer(h, "k", "ok", 201, body(1), replayed=True)
    answer(h, "k", "ok", 201, body(1), replayed=True)
    assert replays_match_first(h.ops).valid
    answer(h, "k", "ok", 500, b"oops", replayed=True)
    assert replays_match_first(h.ops).violations == 1


def test_orphan_charges_and_payments_without_a_charge_are_caught() -> None:
    orphan = no_orphan_charges(LedgerState((charge(1, "k1"), charge(2, "k2")), (payment(1, "k1"),)))
    assert (orphan.valid, orphan.violations, orphan.examples) == (False, 1, [{"charge": "ch_2", "payments": 0}])
    dangling = no_orphan_charges(LedgerState((charge(1, "k1", "failed"),), (payment(1, "k1"),)))
    assert (dangling.valid, dangling.violations) == (False, 1)
    double = no_orphan_charges(LedgerState((charge(1, "k1"),), (payment(1, "k1"), payment(1, "k2"))))
    assert not double.valid


def test_bodies_survive_a_json_lines_history_byte_for_byte() -> None:
    h = History()
    raw = b'{"id":"\xff\x00\xe9"}'
    answer(h, "k", "ok", 201, raw)
    answer(h, "k", "ok", 201, raw, replayed=True)
    reloaded = [Op.from_json(op.to_json()) for op in h.ops]
    assert reloaded[-1].value["body"].encode("latin-1") == raw
    assert replays_match_first(reloaded).valid
