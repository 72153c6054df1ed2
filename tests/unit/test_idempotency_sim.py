"""The idempotency simulation: reproducible rows, exactly one effect where the real designs promise it,
duplicates where `none` cannot avoid them, and the checker's verdicts as the metrics."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from reference_impl.idempotency.ledger import CHARGED
from saaslab.results import ALL_TENANTS, read_rows
from scenarios import idempotency
from scenarios.idempotency import DESIGNS, SETUP, RunResult, Setup, simulate, simulate_one
from scenarios.kernel import US_PER_S

CALM = replace(SETUP, duration_s=2.0, p_slow=0.0, p_fail=0.0, p_timeout_after_effect=0.0, p_crash=0.0,
               p_double_click=0.0)
"""No faults and no double clicks: every payment is one attempt."""
SHORT = replace(SETUP, duration_s=3.0)
UNITS = {
    "payments": "requests", "attempts": "requests", "duplicates_per_10k": "per_10k",
    "effect_violations_per_10k": "per_10k", "orphans_per_10k": "per_10k", "replay_mismatch": "requests",
    "conflicts_pct": "percent", "replays_pct": "percent", "timeouts_pct": "percent", "retries_per_request": "ratio",
    "gave_up_pct": "percent", "latency_p50": "ms", "latency_p99": "ms", "payment_latency_p99": "ms",
    "crashes": "count", "completed_by_completer_per_10k": "per_10k", "exactly_one_effect": "bool",
    "replays_match_first": "bool", "no_orphan_charges": "bool", "checks_valid": "bool",
}


def succeeded(r: RunResult) -> int:
    return sum(1 for c in r.ledger.charges if c.status == "succeeded")


def verdicts(r: RunResult) -> dict[str, bool]:
    return {c.name: c.valid for c in r.checks}


def test_the_same_seed_gives_the_same_rows_and_another_seed_other_ones() -> None:
    rows = simulate_one("postgres", 0.6, 3, setup=SHORT, run_id="r")
    assert rows == simulate_one("postgres", 0.6, 3, setup=SHORT, run_id="r")
    assert rows != simulate_one("postgres", 0.6, 4, setup=SHORT, run_id="r")


def test_rows_follow_the_docstring() -> None:
    rows = simulate_one("redis", 0.3, 0, setup=CALM, run_id="r")
    assert {(r.metric, r.unit) for r in rows} == set(UNITS.items()) and len(rows) == len(UNITS)
    assert {(r.run_id, r.source, r.pattern, r.design, r.seed, r.load_point, r.tenant) for r in rows} == {
        ("r", "sim", "idempotency", "redis", 0, 0.3, ALL_TENANTS)}
    assert all(f"`{m}`" in (idempotency.__doc__ or "") for m in UNITS)


@pytest.mark.parametrize("design", DESIGNS)
def test_without_faults_every_design_charges_each_payment_once(design: str) -> None:
    r = simulate(design, 0.3, 1, CALM)
    assert r.stats.payments > 200
    assert r.stats.attempts == r.stats.payments == succeeded(r) == len(r.ledger.payments)
    assert r.extra_effects() == 0 and r.valid
    assert (r.stats.conflicts, r.stats.replays, r.stats.timeouts, r.stats.gave_up, r.stats.crashes) == (0, 0, 0, 0, 0)


def test_under_faults_none_duplicates_and_fails_the_checker_while_redis_and_postgres_never_do() -> None:
    runs = {d: simulate(d, 0.6, 0, SHORT) for d in DESIGNS}
    none = runs["none"]
    assert none.extra_effects() > 10
    assert verdicts(none) == {"exactly_one_effect": False, "replays_match_first": True, "no_orphan_charges": False}
    assert none.check("exactly_one_effect").violations <= none.extra_effects()
    for d in ("redis", "postgres"):
        r = runs[d]
        assert r.extra_effects() == 0, d
        assert verdicts(r)["exactly_one_effect"] and verdicts(r)["replays_match_first"], d
        assert r.stats.replays > 0 and r.stats.conflicts > 0, d
    assert runs["postgres"].valid and runs["postgres"].stats.completed_by_completer > 0
    # Every design saw the same payments: arrivals depend on the seed and load only.
    assert len({r.stats.payments for r in runs.values()}) == 1


def test_a_provider_that_always_times_out_after_charging() -> None:
    setup = replace(CALM, p_timeout_after_effect=1.0)
    none, redis, postgres = (simulate(d, 0.3, 2, setup) for d in DESIGNS)
    n = none.stats.payments
    # none: each of the 6 attempts charges with a fresh token and never records a payment.
    assert none.stats.attempts == succeeded(none) == 6 * n and len(none.ledger.payments) == 0
    assert none.extra_effects() == 5 * n and none.check("no_orphan_charges").violations == 6 * n
    # redis: every retry recovers the released claim and gets the same charge back; no payment row ever.
    assert redis.stats.attempts == 6 * n and succeeded(redis) == n and len(redis.ledger.payments) == 0
    assert redis.extra_effects() == 0 and redis.check("no_orphan_charges").violations == n
    assert redis.stats.gave_up == n
    # postgres: the completer (no faults of its own) finishes every claim with the charge already made.
    assert succeeded(postgres) == len(postgres.ledger.payments) == n == postgres.stats.completed_by_completer
    assert postgres.valid and postgres.stats.replays > 0


def test_a_worker_that_dies_right_after_every_charge() -> None:
    setup = replace(CALM, p_crash=1.0, crash_points=(CHARGED,))
    schedule = [(0, "acme"), (US_PER_S, "acme"), (20 * US_PER_S, "acme")]
    none, redis, postgres = (simulate(d, 0.3, 1, setup, schedule=schedule) for d in DESIGNS)
    assert none.stats.attempts == succeeded(none) == none.stats.crashes == 18 and not none.ledger.payments
    assert none.extra_effects() == 15
    # redis: retries meet the lock (409) and the client gives up before it runs out: three charges, no payment.
    assert succeeded(redis) == 3 and not redis.ledger.payments and redis.stats.gave_up == 3
    assert redis.extra_effects() == 0 and redis.check("no_orphan_charges").violations == 3
    assert redis.stats.conflicts >= 12
    # postgres: the completer resumes each abandoned claim from `started` with the same token.
    assert succeeded(postgres) == len(postgres.ledger.payments) == 3 == postgres.stats.completed_by_completer
    assert postgres.valid and postgres.stats.crashes == 3


def test_a_double_click_charges_twice_only_without_idempotency() -> None:
    setup = replace(CALM, p_double_click=1.0)
    runs = {d: simulate(d, 0.3, 1, setup) for d in DESIGNS}
    n = runs["none"].stats.payments
    assert runs["none"].extra_effects() == n and runs["none"].stats.chains == 2 * n
    for d in ("redis", "postgres"):
        r = runs[d]
        assert r.extra_effects() == 0 and r.valid, d
        assert r.stats.replays == n, d  # the second click always ends with the stored answer
        bodies = Counter(op.value["body"] for op in r.history.ops if op.type == "ok" and op.value["replayed"])
        assert sum(bodies.values()) == n and len(bodies) == n


def test_past_capacity_timeouts_feed_retries_and_duplicates() -> None:
    setup = replace(SETUP, duration_s=4.0)
    low, high = (simulate("none", lp, 0, setup) for lp in (0.6, 1.5))
    assert high.stats.timeouts > 100 * max(1, low.stats.timeouts)
    assert high.per_10k(high.extra_effects()) > 10 * low.per_10k(low.extra_effects())
    assert high.stats.attempts > 2 * high.stats.payments


def test_setup_parameters_carry_the_capacity() -> None:
    p = Setup(workers=2, slots=5, handler_ms=3.0, handler_overhead_ms=0.0, provider_ms=40.0, provider_jitter_ms=0.0,
              p_slow=0.0, pg_rtt_ms=1.0).parameters()
    assert p["capacity_rps"] == pytest.approx(10 * 1000 / 46)
    assert p["crash_points"] == ("charged", "charge_created")


def test_run_writes_every_design_and_load_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(idempotency.DURATION_S, "quick", 0.5)
    monkeypatch.setattr(idempotency, "LOAD_POINTS", (0.3, 0.9))
    calls: list[tuple[int, int]] = []
    path = idempotency.run(tmp_path / "idempotency", quick=True, seeds=2, jobs=2,
                           progress=lambda done, total: calls.append((done, total)))
    rows = read_rows(path)
    # Each run's metrics, plus the same payments under the live plan's clients and faults (aslive_*).
    assert len(rows) == len(DESIGNS) * 2 * 2 * (len(UNITS) + len(idempotency.AS_LIVE_METRICS))
    assert {r.metric for r in rows} == set(UNITS) | {f"aslive_{m}" for m in idempotency.AS_LIVE_METRICS}
    assert {(r.design, r.load_point, r.seed) for r in rows} == {(d, lp, s) for d in DESIGNS for lp in (0.3, 0.9)
                                                                 for s in (0, 1)}
    assert calls[-1] == (12, 12) and len(calls) == 12
    meta = json.loads((path.parent / "run.json").read_text())
    assert meta["pattern"] == "idempotency" and meta["source"] == "sim"
    p = meta["parameters"]
    assert (p["designs"], p["load_points"], p["seeds"], p["quick"]) == (list(DESIGNS), [0.3, 0.9], [0, 1], True)
    assert p["setup"]["duration_s"] == 0.5 and p["setup"]["capacity_rps"] == pytest.approx(idempotency.capacity_rps())


def test_as_live_replays_the_live_plan_and_only_none_duplicates() -> None:
    """The simulation's replay of the live load test's plan: the unsafe design duplicates, the others never."""
    setup = replace(idempotency.SETUP, duration_s=2.0)
    got = {d: {r.metric: r.value for r in idempotency.simulate_as_live(d, 0.3, 0, setup=setup)} for d in DESIGNS}
    assert got["none"]["aslive_duplicates_per_10k"] > 0
    assert got["redis"]["aslive_duplicates_per_10k"] == got["postgres"]["aslive_duplicates_per_10k"] == 0
    assert got["postgres"]["aslive_orphans_per_10k"] == 0
    live = idempotency.as_live(setup)
    assert (live.p_double_click, live.retry_budget) == (idempotency.LIVE_PLAN.p_double_click,
                                                        idempotency.LIVE_PLAN.retry_budget)
