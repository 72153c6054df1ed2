"""The retries simulation and report: reproducible rows, Brooker's orderings, the recovery rule, a report from a run."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from reference_impl.retries.core import make_policy
from saaslab.report import load_pattern, write_pattern_report
from saaslab.reports import retries as retries_report
from saaslab.results import ALL_TENANTS, Row, read_rows, write_run
from scenarios import retries
from scenarios.retries import (
    COLLAPSED_SHARE,
    CONTENTION_POLICIES,
    HOLD_S,
    META_DESIGNS,
    RECOVERY_S,
    SINGLE_ATTEMPT,
    TRIGGER_AT_S,
    OpenRun,
    client_design,
    contention_trial,
    goodput_metric,
    goodput_second,
    open_run,
    run,
    simulate_contention,
    simulate_metastability,
    split_trigger_metric,
    trigger_metric,
)

PER_TRIGGER = {"meta_recovered": "bool", "meta_collapsed": "bool", "meta_recovery_s": "s",
               "meta_goodput_after_pct": "percent", "meta_attempt_load_after": "x_capacity",
               "meta_amplification": "ratio"}


def _values(rows: list[Row]) -> dict[str, float]:
    return {r.metric: r.value for r in rows if r.tenant == ALL_TENANTS}


# --- contention ---------------------------------------------------------------------------------

def test_a_lone_client_writes_once_after_four_network_hops() -> None:
    trial = contention_trial(make_policy("exponential"), 1, random.Random(1))
    assert trial.calls == 1
    assert 20_000 < trial.completion_us < 60_000  # four |N(10 ms, 2 ms)| messages


def test_a_trial_is_reproducible_and_every_client_writes_at_least_once() -> None:
    policy = make_policy("full_jitter")
    a = contention_trial(policy, 20, random.Random("x"))
    assert a == contention_trial(policy, 20, random.Random("x")) != contention_trial(policy, 20, random.Random("y"))
    assert a.calls > 20  # they contend, so some writes fail


def test_contention_rows_follow_the_docstring() -> None:
    rows = simulate_contention("equal_jitter", 10, 3, trials=2, run_id="r")
    assert rows == simulate_contention("equal_jitter", 10, 3, trials=2, run_id="r")
    assert {(r.metric, r.unit) for r in rows} == {("contention_calls", "requests"), ("contention_completion_ms", "ms")}
    assert {(r.run_id, r.pattern, r.design, r.seed, r.load_point, r.tenant) for r in rows} == {
        ("r", "retries", "equal_jitter", 3, 10, ALL_TENANTS)}
    assert all(f"`{r.metric}`" in (retries.__doc__ or "") for r in rows)


def test_at_fifty_clients_jitter_saves_work_and_exponential_alone_is_slowest() -> None:
    result = {p: _values(simulate_contention(p, 50, 0, trials=4)) for p in CONTENTION_POLICIES}
    calls = {p: v["contention_calls"] for p, v in result.items()}
    time_ms = {p: v["contention_completion_ms"] for p, v in result.items()}
    # Brooker: exponential without jitter does more work than full jitter, and takes longest.
    assert calls["exponential"] > 1.5 * calls["full_jitter"]
    assert calls["no_backoff"] > calls["exponential"] > max(calls[p] for p in ("equal_jitter", "full_jitter"))
    assert time_ms["exponential"] == max(time_ms.values())
    assert time_ms["no_backoff"] < time_ms["full_jitter"]  # no backoff is fast but wasteful
    assert time_ms["decorrelated_jitter"] < time_ms["equal_jitter"]


# --- metastability ------------------------------------------------------------------------------

def _synthetic(served: list[float], attempts_per_s: float = 80, trigger_s: int = 2) -> OpenRun:
    """An OpenRun whose bins after the trigger have the given goodput shares (100 offered per bin)."""
    end = TRIGGER_AT_S + trigger_s + len(served)
    offered = [100] * end
    shares = [1.0] * (TRIGGER_AT_S + trigger_s) + served
    return OpenRun(trigger_s, offered, [round(100 * s) for s in shares], [round(attempts_per_s)] * end)


def test_recovery_is_the_first_bin_from_which_every_bin_keeps_ninety_percent() -> None:
    hold = [1.0] * 5
    late = _synthetic([0.0] * 3 + [0.95, 0.5] + [0.9] * 5 + hold)
    assert late.recovery_s() == 5.0 and late.recovered() and not late.collapsed() and late.state() == "recovered"
    edge = _synthetic([0.0] * RECOVERY_S + hold)
    assert edge.recovery_s() == RECOVERY_S and edge.recovered()
    # One bad bin in the hold window: not recovered, but most requests served: still draining.
    draining = _synthetic([0.0] * RECOVERY_S + [1.0, 1.0, 0.89, 1.0, 1.0])
    assert draining.recovery_s() == 13.0 and not draining.recovered() and draining.state() == "draining"
    never = _synthetic([0.0] * 15, attempts_per_s=250)
    assert math.isnan(never.recovery_s()) and never.collapsed() and never.amplification() == 2.5


def test_collapsed_is_decided_by_goodput_not_by_the_attempts_sent() -> None:
    """Below COLLAPSED_SHARE served over the hold window is collapsed, whatever the clients send; above it, not."""
    low = [0.0] * RECOVERY_S + [0.45] * 5
    assert _synthetic(low, attempts_per_s=10).collapsed()  # few attempts, yet most requests unserved
    busy = [0.0] * RECOVERY_S + [0.8] * 5
    stretched = _synthetic(busy, attempts_per_s=106)  # attempts above capacity, yet most requests served
    assert stretched.attempt_load_after() > 1.0 and not stretched.collapsed() and stretched.state() == "draining"
    at_threshold = _synthetic([0.0] * RECOVERY_S + [COLLAPSED_SHARE] * 5)
    assert not at_threshold.collapsed()
    assert "COLLAPSED_SHARE" in (retries.__doc__ or "")


def test_client_designs_parse_and_refuse_nonsense() -> None:
    assert client_design(SINGLE_ATTEMPT).policy.max_attempts == 1
    guarded = client_design("full_jitter+budget")
    assert guarded.policy.name == "full_jitter" and guarded.budget is not None and guarded.breaker is None
    assert client_design("exponential+breaker").breaker is not None
    for bad in ("jitter", "full_jitter+cache", "single_attempt+budget", "none", "no_retry"):
        with pytest.raises(ValueError, match="unknown client design"):
            client_design(bad)
    assert trigger_metric("meta_recovered", 4) == "meta_recovered_t4s"
    assert split_trigger_metric("meta_recovered_t4s") == ("meta_recovered", 4)
    assert split_trigger_metric("meta_goodput_before_pct") is None


def test_retries_without_a_budget_collapse_where_a_budget_or_a_breaker_recover() -> None:
    runs = {d: open_run(d, 0.6, 4, seed=1) for d in (SINGLE_ATTEMPT, "full_jitter", "full_jitter+budget",
                                                    "full_jitter+breaker")}
    assert runs["full_jitter"].collapsed() and runs["full_jitter"].goodput_after() < 0.1
    assert runs["full_jitter"].attempt_load_after() > 1.5
    for d in (SINGLE_ATTEMPT, "full_jitter+budget", "full_jitter+breaker"):
        assert runs[d].recovered(), d
    assert runs[SINGLE_ATTEMPT].amplification() == 1.0
    assert runs["full_jitter+budget"].amplification() < 1.2 < runs["full_jitter"].amplification() <= 3.0
    # Every request offered before the spike was served, whatever the design.
    assert all(r.share(1, TRIGGER_AT_S) == 1.0 for r in runs.values())


def test_metastability_rows_are_reproducible_and_follow_the_docstring() -> None:
    rows = simulate_metastability("full_jitter+breaker", 0.3, 2, triggers_s=(1, 2), run_id="r")
    assert rows == simulate_metastability("full_jitter+breaker", 0.3, 2, triggers_s=(1, 2), run_id="r")
    seconds = {t: range(1, TRIGGER_AT_S + t + RECOVERY_S + HOLD_S) for t in (1, 2)}
    expected = {("meta_goodput_before_pct", "percent")} | {
        (trigger_metric(m, t), u) for m, u in PER_TRIGGER.items() for t in (1, 2)} | {
        (goodput_metric(s, t), "percent") for t in (1, 2) for s in seconds[t]}
    assert {(r.metric, r.unit) for r in rows} == expected and len(rows) == len(expected)
    assert goodput_second(split_trigger_metric(goodput_metric(7, 2))[0]) == 7
    doc = retries.__doc__ or ""
    assert "`meta_goodput_before_pct`" in doc and all(f"`{m}_t<T>s`" in doc for m in PER_TRIGGER)
    assert "`meta_goodput_pct_at<S>s_t<T>s`" in doc


# --- the sweep and the report -------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quick run shrunk further (fewer clients, trials, loads and triggers) to keep the suite fast."""
    out = tmp_path_factory.mktemp("reports") / "retries"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(retries.CLIENTS, "quick", (10, 50))
        mp.setitem(retries.TRIALS, "quick", 2)
        mp.setitem(retries.LOADS, "quick", (0.3, 0.6))
        mp.setitem(retries.TRIGGERS_S, "quick", (4,))
        mp.setitem(retries.TIMELINES, "quick", retries.TIMELINES["full"])
        calls: list[tuple[int, int]] = []
        run(out, quick=True, seeds=2, jobs=2, progress=lambda d, n: calls.append((d, n)))
    tasks = len(CONTENTION_POLICIES) * 2 * 2 + len(META_DESIGNS) * 2 * 2
    assert calls[-1] == (tasks, tasks) and len(calls) == tasks and [d for d, _ in calls] == list(range(1, tasks + 1))
    return out


def test_run_writes_both_experiments_and_their_parameters(small_run: Path) -> None:
    rows = read_rows(small_run / "sim" / "results.csv")
    contention = [r for r in rows if r.metric.startswith("contention_")]
    meta = [r for r in rows if r.metric.startswith("meta_")]
    assert len(contention) == len(CONTENTION_POLICIES) * 2 * 2 * 2
    per_second = TRIGGER_AT_S + 4 + RECOVERY_S + HOLD_S - 1
    assert len(meta) == len(META_DESIGNS) * 2 * 2 * (1 + len(PER_TRIGGER) + per_second)
    assert len(rows) == len(contention) + len(meta)
    p = json.loads((small_run / "sim" / "run.json").read_text())["parameters"]
    assert (p["contention"]["clients"], p["contention"]["trials_per_seed"], p["seeds"], p["quick"]) == (
        [10, 50], 2, [0, 1], True)
    assert (p["metastability"]["loads"], p["metastability"]["triggers_s"]) == ([0.3, 0.6], [4])
    assert p["metastability"]["designs"] == list(META_DESIGNS)


def test_the_report_builds_from_a_simulated_run_and_says_how_to_measure(small_run: Path) -> None:
    html = write_pattern_report("retries", small_run.parent).read_text()
    report = retries_report.build(load_pattern("retries", small_run.parent))
    assert "saaslab load retries" in html and "simulation-only" not in html
    assert not report.simulation_only and report.sim_vs_live is None and "No live run yet" in report.sim_vs_live_note
    assert [t.title for t in report.tables] == [
        "Contention: write calls until every client succeeded", "Contention: time to completion (ms)",
        "Metastability map: state after the spike", "Metastability map: load that retries add"]
    assert len(report.figures) == 2 and html.count("data:image/png;base64,") == 2
    assert any("seed(s); conclusions need at least 5" in n for n in report.notes)
    text = " ".join(report.conclusions)
    assert "Brooker (2015)" in text and "Brooker (2022)" in text
    assert "full_jitter stayed collapsed in 1 of 2 cells (load 0.6 with a 4 s trigger)" in text
    assert "full_jitter+budget never stayed collapsed" in text and "full_jitter+breaker never stayed collapsed" in text
    summary = (small_run / "summary.md").read_text()
    assert report.headline in summary and "No live run yet" in summary


def _contention_rows(calls: dict[str, float], clients: tuple[int, ...] = (10, 50, 100)) -> list[Row]:
    """Five seeds per (policy, clients) around the given calls (x clients/10) and a matching time."""
    rows = []
    for policy, base in calls.items():
        for n in clients:
            for seed in range(5):
                value = base * n / 10 * (1 + 0.01 * (seed - 2))
                rows += [Row("r", "sim", "retries", policy, seed, n, ALL_TENANTS, "contention_calls", value, "requests"),
                         Row("r", "sim", "retries", policy, seed, n, ALL_TENANTS, "contention_completion_ms",
                             value * 10, "ms")]
    return rows


@pytest.mark.parametrize(("calls", "verdict"), [
    ({"exponential": 60.0, "full_jitter": 40.0, "equal_jitter": 45.0}, "This agrees with Brooker (2015)"),
    ({"exponential": 30.0, "full_jitter": 40.0, "equal_jitter": 45.0}, "This disagrees with Brooker (2015)"),
])
def test_the_verdict_on_brookers_finding_follows_the_numbers(tmp_path: Path, calls: dict[str, float],
                                                             verdict: str) -> None:
    write_run(tmp_path / "retries" / "sim", run_id="r", pattern="retries", source="sim",
              rows=_contention_rows(calls), parameters={})
    report = retries_report.build(load_pattern("retries", tmp_path))
    assert any(c.startswith(verdict) for c in report.conclusions)
    least = min(calls, key=calls.__getitem__)
    assert report.headline.startswith(f"Under contention (100 clients), {least} did the least work")
    assert "The run has no metastability rows, so there is no map." in report.notes


def _map_rows(collapsed: dict[str, bool], loads: tuple[float, ...] = (0.5, 0.9)) -> list[Row]:
    """Five seeds per (design, load) at a 4 s trigger, each either collapsed or recovered in 2 s."""
    rows = []
    for design, stuck in collapsed.items():
        for lp in loads:
            for seed in range(5):
                for metric, value, unit in (("meta_recovered", float(not stuck), "bool"),
                                            ("meta_collapsed", float(stuck), "bool"),
                                            ("meta_recovery_s", math.nan if stuck else 2.0, "s"),
                                            ("meta_goodput_after_pct", 0.0 if stuck else 100.0, "percent")):
                    rows.append(Row("r", "sim", "retries", design, seed, lp, ALL_TENANTS, trigger_metric(metric, 4),
                                    value, unit))
    return rows


def test_the_verdict_on_open_systems_follows_the_map(tmp_path: Path) -> None:
    write_run(tmp_path / "retries" / "sim", run_id="r", pattern="retries", source="sim",
              rows=_map_rows({"no_backoff": True, "full_jitter": False, "full_jitter+budget": False}), parameters={})
    report = retries_report.build(load_pattern("retries", tmp_path))
    text = " ".join(report.conclusions)
    assert "Backoff reduced collapse: full_jitter collapsed in 0 cells, against 2 when retrying at once." in text
    assert ("This only partly agrees with Brooker (2022), for whom backoff alone does little in an open system while "
            "a budget caps amplification: backoff alone spared more than a quarter") in text
    assert report.headline == ("After a latency spike, full_jitter and full_jitter+budget never stayed collapsed "
                               "while no_backoff did.")
    assert report.tables[0].rows[0] == ["no_backoff", "0.5", "collapsed 5/5 (0% served)"]
    assert "The run has no contention rows, so Brooker's experiment is not reported." in report.notes
