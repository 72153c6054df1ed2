"""Invariants of idempotent payments: pure checks over a history plus the final ledger state.

The history holds one operation per HTTP attempt, `f = "pay"`: the invoke's value is
`attempt_value(tenant, key)`, the completion's `response_value(status, body, replayed)`. The
recorder types a completion `ok` when a response decides the request (2xx, a stored 402, any
replay), `fail` when it certainly had no effect (409 conflict, 422 mismatch, 400) and `info` when
the outcome is unknown (a timeout, a 5xx, a dropped connection).

The state is the provider's charges and the payment ledger (`ledger.read_state`, or records with
the same fields from a simulation), read after the completer has run. Declined charges moved no
money and are ignored. A run must not reuse a key after its retention, or a legitimate second
charge would count as a duplicate.

Checks:
* `exactly_one_effect`: every key in the history has at most one charge and at most one payment,
  and exactly one of each if any attempt was answered 201; every 201 names that payment.
* `replays_match_first`: every replayed response equals, byte for byte, the key's first response
  (the first non-replayed `ok` one, or the first replay when the executing attempt's answer was lost).
* `no_orphan_charges`: every charge has exactly one payment and every payment has its charge.

The `none` design fails `exactly_one_effect` under retries or concurrency: the checker is shown to
catch duplicates (tests/unit/test_idempotency_invariants.py and the integration tests).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from saaslab.history import CheckResult, Op, pairs

F_PAY = "pay"
MAX_EXAMPLES = 5
SUCCEEDED = "succeeded"


class ChargeFacts(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def reference(self) -> str | None: ...
    @property
    def status(self) -> str: ...


class PaymentFacts(Protocol):
    @property
    def id(self) -> Any: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def idempotency_key(self) -> str | None: ...
    @property
    def charge_id(self) -> str: ...


class LedgerFacts(Protocol):
    @property
    def charges(self) -> Sequence[ChargeFacts]: ...
    @property
    def payments(self) -> Sequence[PaymentFacts]: ...


def attempt_value(tenant: str, key: str) -> dict[str, Any]:
    return {"tenant": tenant, "key": key}


def response_value(status: int, body: bytes, replayed: bool) -> dict[str, Any]:
    """`body` is kept as latin-1 text, which maps bytes to characters one to one: exact comparisons."""
    return {"status": status, "body": body.decode("latin-1"), "replayed": replayed}


def _answers(ops: Iterable[Op]) -> dict[tuple[str, str], list[Op]]:
    """Completed attempts per (tenant, key), in completion order."""
    by_key: dict[tuple[str, str], list[Op]] = defaultdict(list)
    done = [(inv, comp) for inv, comp in pairs(ops) if inv.f == F_PAY]
    done.sort(key=lambda pair: (pair[1] is None, pair[1].time_us if pair[1] else 0))
    for inv, comp in done:
        by_key[(inv.value["tenant"], inv.value["key"])].append(comp or inv)
    return by_key


def _paid_id(op: Op) -> str | None:
    try:
        return str(json.loads(op.value["body"].encode("latin-1"))["id"])
    except (ValueError, KeyError, TypeError):
        return None


def exactly_one_effect(ops: Sequence[Op], state: LedgerFacts) -> CheckResult:
    charges = Counter((c.tenant_id, c.reference) for c in state.charges if c.status == SUCCEEDED)
    payments: dict[tuple[str, str | None], list[str]] = defaultdict(list)
    for p in state.payments:
        payments[(p.tenant_id, p.idempotency_key)].append(str(p.id))
    violations = 0
    examples: list[dict[str, Any]] = []
    answers = _answers(ops)
    for (tenant, key), attempts in sorted(answers.items()):
        paid = payments.get((tenant, key), [])
        created = [op for op in attempts if op.type == "ok" and op.value.get("status") == 201]
        problems = []
        if charges[(tenant, key)] > 1 or len(paid) > 1:
            problems.append("duplicate effect")
        if created and (charges[(tenant, key)] != 1 or len(paid) != 1):
            problems.append("201 without exactly one charge and payment")
        if any(_paid_id(op) not in paid for op in created):
            problems.append("a 201 names another payment")
        if problems:
            violations += 1
            if len(examples) < MAX_EXAMPLES:
                examples.append({"tenant": tenant, "key": key, "charges": charges[(tenant, key)],
                                 "payments": len(paid), "created_answers": len(created), "problems": problems})
    return CheckResult("exactly_one_effect", violations == 0, len(answers), violations, examples,
                       f"{len(answers)} keys, {sum(charges.values())} charges, {len(state.payments)} payments")


def replays_match_first(ops: Sequence[Op]) -> CheckResult:
    checked = violations = 0
    examples: list[dict[str, Any]] = []
    for (tenant, key), attempts in sorted(_answers(ops).items()):
        answered = [op for op in attempts if op.type == "ok"]
        replays = [op for op in answered if op.value.get("replayed")]
        if not replays:
            continue
        first = next((op for op in answered if not op.value.get("replayed")), replays[0])
        expected = (first.value["status"], first.value["body"])
        for op in replays:
            checked += 1
            if (op.value["status"], op.value["body"]) != expected:
                violations += 1
                if len(examples) < MAX_EXAMPLES:
                    examples.append({"tenant": tenant, "key": key, "first": first.value, "replay": op.value})
    return CheckResult("replays_match_first", violations == 0, checked, violations, examples,
                       f"{checked} replays")


def no_orphan_charges(state: LedgerFacts) -> CheckResult:
    succeeded = {c.id for c in state.charges if c.status == SUCCEEDED}
    paid = Counter(p.charge_id for p in state.payments)
    bad = [{"charge": c, "payments": paid[c]} for c in sorted(succeeded) if paid[c] != 1]
    bad += [{"payment": str(p.id), "missing_charge": p.charge_id} for p in state.payments
            if p.charge_id not in succeeded]
    return CheckResult("no_orphan_charges", not bad, len(succeeded) + len(state.payments), len(bad), bad[:MAX_EXAMPLES],
                       f"{len(succeeded)} charges, {len(state.payments)} payments")


def check(history: Iterable[Op], state: LedgerFacts) -> list[CheckResult]:
    ops = list(history)
    return [exactly_one_effect(ops, state), replays_match_first(ops), no_orphan_charges(state)]
