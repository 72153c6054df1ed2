"""What a live idempotency run becomes: its rows, its verdicts per design, and `state.json`.

`saaslab/live/idempotency.py` measures the runs (`Cell`: one design at one load point, its Locust
outputs and the ledger read back after the completer); here they become the report's rows
(`cell_rows`, the simulation's metric names where it measures the same), the checker's verdicts per
design (`check_designs`, named `<check>[<design>]`) and the ledger as `state.json`, which
`check_run` (what `saaslab check idempotency` calls) judges again without a connection. `expected`
tells `saaslab check` which verdicts a run that mixes the unsafe `none` with safe designs should give.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from reference_impl.idempotency.invariants import SUCCEEDED, check
from reference_impl.idempotency.ledger import LedgerState, Payment
from reference_impl.idempotency.provider import Charge
from saaslab.history import CheckResult, Op, load
from saaslab.live.harness import SEND_LAG_PERCENTILES, LocustRun, worker_line, worker_rows
from saaslab.results import ALL_TENANTS, LatencyHistogram, Row
from saaslab.services import ServiceError
from saaslab.settings import Settings
from scenarios import idempotency as scenario
from scenarios.kernel.metrics import RunKey

PATTERN = scenario.PATTERN
UNSAFE = "none"
PER_10K = scenario.PER_10K


@dataclass
class Cell:
    """One Locust run: one design at one load point."""

    design: str
    load_point: float
    rate: float
    run: LocustRun
    crashes: dict[str, int] | None
    """Worker crashes by fault point, from the service log (None: a service at --host, whose log is not ours)."""
    state: LedgerState = field(default_factory=lambda: LedgerState((), ()))
    abandoned: int = 0
    """Claims of the run still unfinished when the last completer pass came (its tenants' keys)."""
    completed_during: int = 0
    """Claims the completer beside the service finished or rolled back during the run."""

    @property
    def tenant_ids(self) -> list[str]:
        return sorted(self.run.api_keys)

    def summaries(self) -> list[dict[str, Any]]:
        return [o["summary"] for o in self.run.outputs]



# ---------------------------------------------------------------------------------------------
# Rows and checks


def totals(cell: Cell) -> Counter[str]:
    out: Counter[str] = Counter()
    for s in cell.summaries():
        out.update(s["counters"]["total"])
    return out


def attempt_latency(cell: Cell) -> LatencyHistogram:
    h = LatencyHistogram()
    for s in cell.summaries():
        h.add(LatencyHistogram.decode(s["counters"]["latency"]))
    return h


def extra_effects(state: LedgerState) -> int:
    """Per key, the larger of (succeeded charges - 1) and (payment rows - 1), when positive, summed (as the
    simulation counts duplicates)."""
    charges = Counter((c.tenant_id, c.reference) for c in state.charges if c.status == SUCCEEDED)
    payments = Counter((p.tenant_id, p.idempotency_key) for p in state.payments)
    return sum(max(0, charges[k] - 1, payments[k] - 1) for k in set(charges) | set(payments))


def provider_timeouts(history: Iterable[Op]) -> int:
    """Attempts answered 504 because the provider's answer was lost (it charged, then timed out)."""
    n = 0
    for op in history:
        if op.type != "invoke" and op.value.get("status") == 504:
            try:
                n += json.loads(op.value["body"].encode("latin-1")).get("type", "").endswith("/provider-timeout")
            except (KeyError, ValueError, AttributeError):
                pass
    return n


def cell_rows(key: RunKey, cell: Cell, results: Sequence[CheckResult]) -> list[Row]:
    """The report's rows for one run (module docstring; the simulation's names where it measures the same)."""
    t, om, lat = totals(cell), cell.run.open_model(), attempt_latency(cell)
    payments, attempts = t["payments"], t["attempts"]
    verdict = {r.name: r for r in results}

    def per_10k(n: float) -> float:
        return PER_10K * n / payments if payments else math.nan

    def pct(n: float, of: float) -> float:
        return 100.0 * n / of if of else math.nan

    payment_latency = LatencyHistogram()
    for c in om.tenants.values():
        payment_latency.add(c.latency)
    values: list[tuple[str, float, str]] = [
        ("payments", payments, "requests"),
        ("attempts", attempts, "requests"),
        ("duplicates_per_10k", per_10k(extra_effects(cell.state)), "per_10k"),
        ("effect_violations_per_10k", per_10k(verdict["exactly_one_effect"].violations), "per_10k"),
        ("orphans_per_10k", per_10k(verdict["no_orphan_charges"].violations), "per_10k"),
        ("replay_mismatch", verdict["replays_match_first"].violations, "requests"),
        ("conflicts_pct", pct(t["conflicts"], attempts), "percent"),
        ("replays_pct", pct(t["replays"], attempts), "percent"),
        ("timeouts_pct", pct(t["timeouts"], attempts), "percent"),
        ("retries_per_request", (attempts - t["chains"]) / payments if payments else math.nan, "ratio"),
        ("gave_up_pct", pct(t["gave_up"], payments), "percent"),
        ("unresolved", t["gave_up"] - t["reconciled"], "requests"),
        ("latency_p50", lat.percentile_ms(50), "ms"),
        ("latency_p99", lat.percentile_ms(99), "ms"),
        ("payment_latency_p99", payment_latency.percentile_ms(99), "ms"),
        ("completed_by_completer_per_10k", per_10k(cell.completed_during + cell.abandoned), "per_10k"),
        ("provider_timeouts", provider_timeouts(cell.run.history), "count"),
        ("errors", t["dropped_connections"] + t["server_errors"], "requests"),
        ("timeouts", t["timeouts"], "requests"),
        ("dropped", om.dropped, "requests"),
        ("budget_refused", t["budget_refused"], "requests"),
        ("capacity_rps", summary_value(cell, "capacity_rps"), "rps"),
        ("target_rate", om.target_rate, "rps"),
        ("sent_rate", om.sent_rate, "rps"),
        *((f"send_lag_{name}", om.send_lag.percentile_ms(q), "ms") for name, q in SEND_LAG_PERCENTILES),
        *((r.name, float(r.valid), "bool") for r in results),
        ("checks_valid", float(all(r.valid for r in results)), "bool"),
    ]
    if cell.crashes is not None:
        values.append(("crashes", sum(cell.crashes.values()), "count"))
    return [*(key.row(ALL_TENANTS, metric, value, unit) for metric, value, unit in values),
            *worker_rows(key, cell.run)]


def summary_value(cell: Cell, name: str) -> float:
    found = [s[name] for s in cell.summaries() if name in s]
    return float(found[0]) if found else math.nan


def named(results: Iterable[CheckResult], design: str) -> list[CheckResult]:
    """The verdicts as check.json names them: `<check>[<design>]`."""
    return [CheckResult(f"{r.name}[{design}]", r.valid, r.checked, r.violations, r.examples, r.detail)
            for r in results]


def merged(states: Iterable[LedgerState]) -> LedgerState:
    states = list(states)
    return LedgerState(tuple(c for s in states for c in s.charges), tuple(p for s in states for p in s.payments))


def check_designs(history: Sequence[Op], states: dict[str, LedgerState]) -> list[CheckResult]:
    """`invariants.check` per design on its attempts (each op carries its design) and its ledger."""
    results: list[CheckResult] = []
    for design, state in states.items():
        ops = [op for op in history if op.value.get("design") == design]
        results += named(check(ops, state), design)
    return results


def expected(result: CheckResult, results: Sequence[CheckResult]) -> bool:
    """Whether a verdict is what the lab expects of a run that mixes safe designs with the unsafe one: every
    check holds on a safe design, and the unsafe design is caught by `exactly_one_effect` (its other checks may
    go either way); `saaslab check` exits 1 otherwise. A run of the unsafe design alone (`<out>/unsafe`) is
    judged as every pattern's is: caught means violated, and `saaslab check` exits 1."""
    if all(r.name.endswith(f"[{UNSAFE}]") for r in results):
        return result.valid
    if result.name.endswith(f"[{UNSAFE}]"):
        return not result.valid if result.name.startswith("exactly_one_effect[") else True
    return result.valid


# ---------------------------------------------------------------------------------------------
# state.json: each design's ledger after the completer, for `saaslab check idempotency`


def state_json(states: dict[str, LedgerState], tenants: dict[str, list[str]]) -> dict[str, Any]:
    def payment(p: Payment) -> dict[str, Any]:
        return {**asdict(p), "id": str(p.id), "created_at": p.created_at.isoformat()}

    return {d: {"tenants": tenants[d], "charges": [asdict(c) for c in s.charges],
                "payments": [payment(p) for p in s.payments]} for d, s in states.items()}


def states_from_json(data: dict[str, Any]) -> dict[str, LedgerState]:
    def payment(p: dict[str, Any]) -> Payment:
        return Payment(**{**p, "id": uuid.UUID(p["id"]), "created_at": datetime.fromisoformat(p["created_at"])})

    return {d: LedgerState(tuple(Charge(**c) for c in s["charges"]), tuple(payment(p) for p in s["payments"]))
            for d, s in data.items()}


def write_check(path: Path, results: list[CheckResult]) -> None:
    """`check.json`: the list of verdicts (the form the report and the notebook read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_dict() for r in results], indent=2))


def check_run(out_dir: Path, settings: Settings | None = None) -> list[CheckResult]:
    """Check a live run folder again: `out_dir/live/history.jsonl` against `state.json`, the ledger the run read
    back after the completer (so no connection is needed). Writes `out_dir/live/check.json`."""
    live = out_dir / "live"
    state_path = live / "state.json"
    if not state_path.is_file():
        raise ServiceError(f"no state.json in {live}; run `saaslab load {PATTERN}` first")
    results = check_designs(load(live / "history.jsonl"), states_from_json(json.loads(state_path.read_text())))
    write_check(live / "check.json", results)
    return results


# ---------------------------------------------------------------------------------------------
# Writing a run


def cell_line(c: Cell) -> str:
    t = totals(c)
    dup = PER_10K * extra_effects(c.state) / t["payments"] if t["payments"] else math.nan
    crashes = "?" if c.crashes is None else str(sum(c.crashes.values()))
    return (f"{c.design}-lp{c.load_point:g}: {t['payments']} payments at {c.rate:.1f}/s, {t['attempts']} attempts "
            f"({t['conflicts']} 409, {t['replays']} replays, {t['timeouts']} client timeouts, "
            f"{provider_timeouts(c.run.history)} provider timeouts, {t['gave_up']} gave up, {t['reconciled']} of "
            f"them reconciled); {crashes} worker crashes; the completer finished {c.completed_during} claims "
            f"during the run and {c.abandoned} after it; duplicates {dup:.0f} per 10k; p99 "
            f"{attempt_latency(c).percentile_ms(99):.1f} ms; the generator's send lag p99 "
            f"{c.run.open_model().send_lag.percentile_ms(99):.1f} ms"
            + (f" ({worker_line(c.run)})" if len(c.run.outputs) > 1 else ""))


def verdicts_line(results: Sequence[CheckResult]) -> str:
    """Verdicts by design, without the names' brackets (a progress line may be printed as rich markup)."""
    by_design: dict[str, list[str]] = defaultdict(list)
    for r in results:
        check_name, _, design = r.name.rstrip("]").partition("[")
        by_design[design].append(f"{check_name} {'valid' if r.valid else 'VIOLATED'}")
    return "; ".join(f"{d}: {', '.join(v)}" for d, v in by_design.items())
