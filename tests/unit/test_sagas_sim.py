"""The sagas simulation: reproducible per seed, judged by the live checker (the unsafe design fails it, the others
hold it), and driven by core.py's step machine and retry policy rather than a copy of them."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from reference_impl.sagas import core
from saaslab.results import read_rows
from scenarios import sagas as sg
from scenarios.sagas import drivers
from scenarios.sagas.plan import Condition, split_metric

SETUP = replace(sg.SETUP, duration_s=1.0)
STORMY = Condition(0.05, 1.0)
"""Failures and crashes together: every kind of trouble the model has."""
SAFE = [d for d in sg.DESIGNS if d != sg.UNSAFE]


def values(result: sg.RunResult) -> dict[str, float]:
    return {m: v for m, v, _ in result.values()}


def test_a_run_is_reproducible_per_seed_and_differs_across_seeds() -> None:
    first = sg.simulate_one("choreography", 0.6, 3, conditions=(STORMY,), setup=SETUP, run_id="r")
    again = sg.simulate_one("choreography", 0.6, 3, conditions=(STORMY,), setup=SETUP, run_id="r")
    other = sg.simulate_one("choreography", 0.6, 4, conditions=(STORMY,), setup=SETUP, run_id="r")
    assert first == again
    assert [r.value for r in first] != [r.value for r in other]


def test_every_design_sees_the_same_orders_and_crashes_for_a_seed() -> None:
    runs = {d: sg.simulate(d, 0.6, 0, STORMY, SETUP) for d in sg.DESIGNS}
    crash_times = {d: [at for at, _ in r.stats.crashes] for d, r in runs.items()}
    assert len({tuple(t) for t in crash_times.values()}) == 1 and crash_times["orchestration"]
    orders = {d: {s.order.id: s.order for s in r.sagas} for d, r in runs.items()}
    common = set.intersection(*(set(o) for o in orders.values()))
    assert len(common) > 30
    assert all(orders[d][i] == orders["orchestration"][i] for d in sg.DESIGNS for i in common)


@pytest.mark.parametrize("condition", [sg.CALM, Condition(0.05, 0.0), STORMY], ids=lambda c: c.suffix)
@pytest.mark.parametrize("design", SAFE)
def test_the_safe_designs_end_every_order_all_done_or_all_undone(design: str, condition: Condition) -> None:
    for seed in range(2):
        result = sg.simulate(design, 0.6, seed, condition, SETUP)
        assert result.valid, [c for c in result.checks if not c.valid]
        v = values(result)
        assert v["anomalies_per_10k"] == 0 and v["unfinished"] == 0
        assert v["completed_share"] > 0.5 and v["orders"] > 30  # 2PC aborts what a crash left undecided
        assert not result.world.prepared_xacts


@pytest.mark.parametrize("condition", [Condition(0.05, 0.0), STORMY], ids=lambda c: c.suffix)
def test_the_checker_catches_the_unsafe_design(condition: Condition) -> None:
    for seed in range(2):
        result = sg.simulate(sg.UNSAFE, 0.6, seed, condition, SETUP)
        assert not result.check("all_or_nothing").valid
        assert values(result)["anomalies_per_10k"] > 0
    crashed = sg.simulate(sg.UNSAFE, 0.6, 0, STORMY, SETUP)
    assert crashed.stats.crashes and not crashed.check("terminal").valid  # a crash leaves orders pending for good
    assert values(crashed)["unresolved_after_crash"] > 0


def test_twopc_holds_locks_across_the_protocol_and_recovers_in_doubt_transactions_at_restart() -> None:
    twopc = values(sg.simulate("twopc", 0.6, 0, STORMY, SETUP))
    orchestration = values(sg.simulate("orchestration", 0.6, 0, STORMY, SETUP))
    assert twopc["lock_hold_p50"] > 5 * orchestration["lock_hold_p50"]
    assert twopc["in_doubt_max"] >= sg.SETUP.restart_ms  # prepared through the coordinator's downtime
    # The coordinator resolves in-doubt transactions when it is back; the orchestrator waits for leases to run out.
    assert twopc["time_to_consistency"] < sg.SETUP.lease_s * 1000 <= orchestration["time_to_consistency"]


def test_the_retry_policy_of_the_core_is_what_runs() -> None:
    """Fewer attempts give up sooner (more orders compensated); a longer backoff stretches the tail."""
    flaky = Condition(0.1, 0.0)
    base = sg.simulate("orchestration", 0.6, 0, flaky, SETUP)
    once = sg.simulate("orchestration", 0.6, 0, flaky, replace(SETUP, max_attempts=1))
    slow = sg.simulate("orchestration", 0.6, 0, flaky, replace(SETUP, retry_base_ms=1000, step_timeout_s=0.2))
    assert values(once)["compensated_share"] > values(base)["compensated_share"]
    assert values(slow)["latency_p99"] != values(base)["latency_p99"]
    assert once.valid and slow.valid


def test_the_drivers_call_the_cores_step_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_apply = core.apply

    def counting_apply(state, outcome, now_us, policy, saga=core.CHECKOUT):  # type: ignore[no-untyped-def]
        calls.append(outcome)
        return real_apply(state, outcome, now_us, policy, saga)

    monkeypatch.setattr(drivers, "apply", counting_apply)
    result = sg.simulate("orchestration", 0.3, 0, sg.CALM, SETUP)
    assert drivers.apply is counting_apply and core.apply is real_apply
    assert calls.count("ok") >= 4 * sum(1 for s in result.sagas if s.status == "completed")


def test_run_writes_the_tidy_rows_and_run_json(tmp_path: Path) -> None:
    csv = sg.run(tmp_path, quick=True, seeds=1, jobs=1)
    rows = read_rows(csv)
    assert {r.source for r in rows} == {"sim"} and {r.pattern for r in rows} == {"sagas"}
    cells = {(r.design, r.load_point, split_metric(r.metric)[1]) for r in rows}
    assert cells == {(d, lp, c) for d in sg.DESIGNS for lp in sg.LOAD_POINTS for c in sg.CONDITIONS}
    named = {split_metric(r.metric)[0] for r in rows}
    assert {"latency_p50", "latency_p99", "throughput", "compensated_share", "messages_per_saga", "lock_hold_p99",
            "time_to_consistency", "anomalies_per_10k", "in_doubt_p99", "checks_valid"} <= named
    run = json.loads((tmp_path / "sim" / "run.json").read_text())
    assert run["parameters"]["quick"] is True and run["parameters"]["failure_rates"] == list(sg.FAILURE_RATES)
    unsafe = [r.value for r in rows if r.design == sg.UNSAFE and split_metric(r.metric)[0] == "anomalies_per_10k"]
    assert sum(unsafe) > 0 and not any(math.isnan(x) for x in unsafe)


def test_metric_names_carry_their_condition() -> None:
    c = Condition(0.05, 0.5)
    assert c.metric("latency_p99") == "latency_p99@fail0.05/crash0.5"
    assert split_metric(c.metric("latency_p99")) == ("latency_p99", c)
    assert split_metric("latency_p99") == ("latency_p99", None)


def test_an_unknown_design_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match="unknown saga design 'nope'"):
        sg.simulate("nope", 0.3, 0)
