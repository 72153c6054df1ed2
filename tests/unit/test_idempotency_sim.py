"""The idempotency simulation: reproducible rows, exactly one effect where the real designs promise it,
duplicates where `none` cannot avoid them, and the checker's verdicts as the metrics."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import simpy

from reference_impl.idempotency.core import Outcome, StoredResponse, fingerprint
from reference_impl.idempotency.ledger import CHARGED, RECORDED
from reference_impl.idempotency.round_trips import POSTGRES, REDIS, cost
from saaslab.results import ALL_TENANTS, read_rows
from scenarios import idempotency
from scenarios.idempotency import DESIGNS, LIVE_PLAN, SETUP, Lab, RunResult, Setup, simulate, simulate_one
from scenarios.idempotency.messages import Attempt
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


AS_LIVE_UNITS = {**{f"aslive_{m}": UNITS[m] for m in idempotency.AS_LIVE_METRICS}, "aslive_unresolved": "requests"}


def test_run_writes_every_design_and_load_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(idempotency.DURATION_S, "quick", 0.5)
    monkeypatch.setattr(idempotency, "LOAD_POINTS", (0.3, 0.9))
    monkeypatch.setattr(idempotency, "LIVE_PLAN", replace(LIVE_PLAN, quick_load_points=(0.3, 0.5),
                                                          quick_duration_s=1.0))
    calls: list[tuple[int, int]] = []
    path = idempotency.run(tmp_path / "idempotency", quick=True, seeds=2, jobs=2,
                           progress=lambda done, total: calls.append((done, total)))
    rows = read_rows(path)
    # The sweep's own metrics at its load points; the live plan's replay (aslive_*) at the live run's.
    units = {(r.design, r.load_point, r.metric): r.unit for r in rows}
    assert len(rows) == len(units) * 2
    assert units == {**{(d, lp, m): u for d in DESIGNS for lp in (0.3, 0.9) for m, u in UNITS.items()},
                     **{(d, lp, m): u for d in DESIGNS for lp in (0.3, 0.5) for m, u in AS_LIVE_UNITS.items()}}
    assert {r.seed for r in rows} == {0, 1}
    assert calls[-1] == (18, 18) and len(calls) == 18
    meta = json.loads((path.parent / "run.json").read_text())
    assert meta["pattern"] == "idempotency" and meta["source"] == "sim"
    p = meta["parameters"]
    assert (p["designs"], p["load_points"], p["seeds"], p["quick"]) == (list(DESIGNS), [0.3, 0.9], [0, 1], True)
    assert p["setup"]["duration_s"] == 0.5 and p["setup"]["capacity_rps"] == pytest.approx(idempotency.capacity_rps())
    live = p["as_live"]
    assert (live["load_points"], live["seeds"], live["setup"]["duration_s"]) == ([0.3, 0.5], [0, 1], 1.0)
    assert live["setup"]["measured_capacity_rps"] == pytest.approx(16 * 1000 / 36)
    assert live["plan"]["clicks"] == [2, 3] and live["setup"]["crash_at"] == [[0.15, "charged"],
                                                                              [0.5, "charge_created"]]


def test_a_full_sweep_replays_the_live_plan_on_fewer_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, float, int]] = []
    monkeypatch.setattr(idempotency, "simulate_one", lambda d, lp, seed, **_: [])
    monkeypatch.setattr(idempotency, "simulate_as_live", lambda d, lp, seed, **_: seen.append((d, lp, seed)) or [])
    monkeypatch.setattr(idempotency, "write_run", lambda *a, **k: Path("x"))
    idempotency.run(Path("unused"), seeds=5, jobs=1)
    assert seen == [(d, lp, s) for d in DESIGNS for lp in LIVE_PLAN.load_points
                    for s in range(idempotency.AS_LIVE_SEEDS)]


def test_as_live_is_the_live_plan() -> None:
    live = idempotency.as_live(quick=True)
    plan = LIVE_PLAN
    assert (live.duration_s, live.workers, live.slots, live.lock_timeout_s) == (
        plan.quick_duration_s, plan.workers, plan.slots, plan.lock_timeout_s)
    assert (live.p_double_click, live.clicks, live.double_click_ms, live.client_timeout_ms, live.max_attempts,
            live.retry_budget) == (1.0, (2, 3), 50.0, 1000.0, 8, (20, 5, 50))
    assert (live.p_slow, live.slow_ms, live.slow_phase, live.p_timeout_after_effect, live.p_fail, live.p_crash) == (
        0.25, 1500.0, (0.4, 0.6), 0.1, 0.0, 0.0)
    assert live.crash_at == ((0.15, CHARGED), (0.5, RECORDED))
    assert live.reconcile_after_s == plan.lock_timeout_s + plan.completer_interval_s + 0.5 == 3.5
    assert idempotency.as_live().duration_s == plan.duration_s == idempotency.DURATION_S["full"]
    assert idempotency.as_live(plan=replace(plan, reconcile=False)).reconcile_after_s is None
    # The live service: the settings' default scheduler slots per worker.
    from saaslab.settings import Settings

    assert Settings.model_fields["scheduler_slots"].default == plan.slots


def test_the_provider_keeps_one_standing_fault_per_phase() -> None:
    setup = replace(idempotency.as_live(quick=True), duration_s=10.0)
    lab = Lab("none", setup, 0.3, 0)
    drawn = {}
    for phase, at_s in (("steady", 1.0), ("slow", 5.0), ("storm", 9.0), ("after", 30.0)):
        lab.env.run(until=round(at_s * US_PER_S))
        drawn[phase] = Counter(lab.draw_fault() for _ in range(4000))
    for phase in ("steady", "storm", "after"):
        assert set(drawn[phase]) == {None, "timeout_after_effect"}, phase
        assert drawn[phase]["timeout_after_effect"] == pytest.approx(400, abs=80), phase
    assert set(drawn["slow"]) == {None, "slow"} and drawn["slow"]["slow"] == pytest.approx(1000, abs=120)


def test_one_shot_crashes_fire_once_each_at_their_checkpoint() -> None:
    setup = replace(CALM, crash_at=((0.25, CHARGED), (0.5, RECORDED)))
    runs = {d: simulate(d, 0.3, 0, setup) for d in DESIGNS}
    assert {d: r.stats.crashes for d, r in runs.items()} == dict.fromkeys(DESIGNS, 2)
    assert verdicts(runs["redis"])["exactly_one_effect"] and runs["postgres"].valid
    # No live worker when it is armed: the crash is lost, as a live arm that finds no worker fails.
    lab = Lab("redis", replace(CALM, duration_s=1.0, crash_at=((0.5, CHARGED),)), 0.3, 0)
    for w in lab.workers:
        w.up = False
    lab.env.process(lab._arm_crash(0.5, CHARGED))
    lab.env.run(until=US_PER_S)
    assert not any(w.armed for w in lab.workers)


def test_the_reconcile_pass_retries_payments_whose_clients_gave_up() -> None:
    # One payment; its worker dies right after the charge; its client meets the lock (409) until it gives up.
    setup = replace(CALM, duration_s=1.0, workers=1, crash_at=((0.0, CHARGED),))
    schedule = [(0, "acme")]
    stranded = simulate("redis", 0.3, 0, setup, schedule=schedule)
    assert (stranded.stats.crashes, stranded.stats.gave_up, stranded.stats.reconciled) == (1, 1, 0)
    assert succeeded(stranded) == 1 and not stranded.ledger.payments
    assert stranded.check("no_orphan_charges").violations == 1
    # With the live run's reconcile pass a client comes back after the run, past the lock: it recovers the claim,
    # gets the same charge back from the provider and records it.
    healed = simulate("redis", 0.3, 0, replace(setup, reconcile_after_s=3.5), schedule=schedule)
    assert (healed.stats.crashes, healed.stats.gave_up, healed.stats.reconciled) == (1, 1, 1)
    assert succeeded(healed) == len(healed.ledger.payments) == 1 and healed.valid
    assert healed.stats.chains == stranded.stats.chains + 1


def test_as_live_replays_the_live_plan_and_only_none_duplicates() -> None:
    """The simulation's replay of the live load test's plan: every payment double-clicked, so the unsafe design
    duplicates most payments; the others never, and the reconcile pass leaves nothing unresolved."""
    got = {d: {r.metric: r.value for r in idempotency.simulate_as_live(d, 0.3, 0, setup=idempotency.as_live(quick=True))}
           for d in DESIGNS}
    assert all(set(v) == set(AS_LIVE_UNITS) for v in got.values())
    assert all(f"`{m}`" in (idempotency.__doc__ or "") for m in AS_LIVE_UNITS)
    assert got["none"]["aslive_duplicates_per_10k"] > 10_000
    assert got["redis"]["aslive_duplicates_per_10k"] == got["postgres"]["aslive_duplicates_per_10k"] == 0
    assert got["redis"]["aslive_orphans_per_10k"] == got["postgres"]["aslive_orphans_per_10k"] == 0
    assert {v["aslive_crashes"] for v in got.values()} == {2}
    assert {v["aslive_unresolved"] for v in got.values()} == {0}
    # Arrivals at the load point of the capacity with nothing armed, for the live run's quick duration.
    expected = 0.3 * idempotency.measured_capacity_rps(idempotency.as_live()) * LIVE_PLAN.quick_duration_s
    assert got["none"]["aslive_payments"] == pytest.approx(expected, rel=0.15)


@pytest.mark.parametrize("design", DESIGNS)
def test_the_simulated_store_takes_the_round_trips_the_real_stores_take(design: str) -> None:
    """One table (round_trips.py) for the model and the service; test_idempotency_round_trips checks the service."""
    lab = Lab(design, CALM, 0.3, 0)
    request, body = idempotency.payment_body(1)
    attempt = Attempt("k", fingerprint("POST", idempotency.TARGET, body), request)
    rtt = {REDIS: round(CALM.redis_rtt_ms * 1000), POSTGRES: round(CALM.pg_rtt_ms * 1000)}

    def took(operation: Generator[simpy.Event, Any, Any]) -> tuple[int, Any]:
        start = lab.env.now
        process = lab.env.process(operation)
        lab.env.run(until=process)
        return int(lab.env.now - start), process.value

    def expected(operation: str, variant: str | None = None) -> int:
        spent = cost(design, operation, variant)
        return spent.trips * rtt[spent.server]

    elapsed, claim = took(lab.store.claim(attempt, lab.now_us()))
    assert claim.outcome == Outcome.EXECUTE and elapsed == expected("claim")
    elapsed, _ = took(lab.store.finish(claim, StoredResponse(201, (), b"{}")))
    assert elapsed == expected("finish")
    elapsed, again = took(lab.store.claim(attempt, lab.now_us()))
    assert again.outcome == (Outcome.EXECUTE if design == "none" else Outcome.REPLAY)
    assert elapsed == expected("claim") == {"none": 0, "redis": 300, "postgres": 1000}[design]
    if design == "postgres":  # a retry past the lock: the claim statement, then the row-locked take-over
        other = Attempt("k2", attempt.fingerprint, request)
        took(lab.store.claim(other, lab.now_us()))
        lab.env.run(until=lab.env.now + lab.policy.lock_timeout_us)
        elapsed, recovered = took(lab.store.claim(other, lab.now_us()))
        assert recovered.outcome == Outcome.RECOVER
        assert elapsed == expected("claim") + expected("lock", "take_over") == 5000
