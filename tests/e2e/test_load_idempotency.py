"""The live face of idempotency: a quick load run with worker crashes and lost provider answers, every design in
the same harness, the unsafe `none` caught by the checker, the report built on the result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from reference_impl.idempotency.invariants import F_PAY, SUCCEEDED
from saaslab import patterns
from saaslab.history import load
from saaslab.live.idempotency import LOCK_TIMEOUT_S, QUICK_LOAD_POINTS, UNSAFE, WORKERS, check_run
from saaslab.report import load_pattern
from saaslab.reports.idempotency import build
from saaslab.results import ALL_TENANTS, read_rows
from saaslab.settings import Settings
from scenarios import idempotency as scenario

pytestmark = pytest.mark.e2e

SAFE = ("redis", "postgres")
CHECKS = ("exactly_one_effect", "replays_match_first", "no_orphan_charges")
CRASH_POINTS = {"idempotency.charged", "idempotency.charge_created"}


def test_quick_live_run_keeps_one_effect_through_crashes_and_catches_none(settings: Settings,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "idempotency"
    csv_path = patterns.get("idempotency").module("live").run(settings, out, quick=True, unsafe=True)
    assert csv_path == out / "live" / "results.csv"
    live = out / "live"

    # Rows with the report's schema: every design at the quick load point, run-level (tenant "*").
    rows = read_rows(csv_path)
    (load_point,) = QUICK_LOAD_POINTS
    assert {r.source for r in rows} == {"live"} and {r.pattern for r in rows} == {"idempotency"}
    assert {r.design for r in rows} == set(scenario.DESIGNS)
    # Besides the run-level rows, each Locust process's share and send lag (tenant "worker-<i>").
    assert {r.load_point for r in rows} == {load_point}
    assert {r.tenant for r in rows} == {ALL_TENANTS, "worker-0"}
    rows = [r for r in rows if r.tenant == ALL_TENANTS]
    units = {(r.design, r.metric): r.unit for r in rows}
    value = {(r.design, r.metric): r.value for r in rows}
    params = json.loads((live / "run.json").read_text())["parameters"]
    assert params["workers"] == WORKERS == 2 and params["lock_timeout_s"] == LOCK_TIMEOUT_S
    # The live run ran the plan the simulation replays (`scenario.LIVE_PLAN`, one source for both faces).
    plan, live_plan = params["plan"], scenario.LIVE_PLAN
    assert (params["slots"], params["duration_s"], plan["duration_s"]) == (live_plan.slots, live_plan.quick_duration_s,
                                                                          live_plan.quick_duration_s)
    assert {k: plan[k] for k in ("p_double_click", "double_click_ms", "max_attempts", "p_timeout_after_effect",
                                 "p_slow", "slow_ms", "reconcile", "retry_policy", "retry_base_ms", "retry_cap_ms")} \
        == {k: getattr(live_plan, k) for k in ("p_double_click", "double_click_ms", "max_attempts",
                                              "p_timeout_after_effect", "p_slow", "slow_ms", "reconcile",
                                              "retry_policy", "retry_base_ms", "retry_cap_ms")}
    assert (tuple(plan["clicks"]), tuple(plan["slow_phase"]), plan["client_timeout_s"] * 1000) == (
        live_plan.clicks, live_plan.slow_phase, live_plan.client_timeout_ms)
    assert (plan["budget_ratio_pct"], plan["budget_min_per_s"], plan["budget_burst"]) == live_plan.retry_budget
    assert [tuple(c) for c in plan["crashes"]] == [(at, f"idempotency.{p}") for at, p in live_plan.crashes]
    assert plan["reconcile_after_s"] == live_plan.reconcile_after_s
    assert params["capacity_rps"] > 0 and params["rate"] == [pytest.approx(load_point * params["capacity_rps"],
                                                                            rel=1e-3)]

    history = load(live / "history.jsonl")
    state = json.loads((live / "state.json").read_text())
    checks = {c["name"]: c for c in json.loads((live / "check.json").read_text())}
    assert set(checks) == {f"{c}[{d}]" for c in CHECKS for d in scenario.DESIGNS}
    for design in scenario.DESIGNS:
        for metric, unit in (("duplicates_per_10k", "per_10k"), ("orphans_per_10k", "per_10k"),
                             ("latency_p99", "ms"), ("payments", "requests"), ("attempts", "requests"),
                             ("crashes", "count"), ("provider_timeouts", "count")):
            assert units[(design, metric)] == unit, (design, metric)
        # The rows count what the history holds: every attempt, every logical payment (a key of its own).
        ops = [op for op in history if op.f == F_PAY and op.value["design"] == design]
        invokes = [op for op in ops if op.type == "invoke"]
        keys = {(op.value["tenant"], op.value["key"]) for op in invokes}
        assert len(invokes) == value[(design, "attempts")] == len(ops) / 2
        assert len(keys) == value[(design, "payments")] > 0
        assert value[(design, "latency_p99")] > 0
        # Faults really happened in each design's run: workers died between recovery points (the service
        # log's crash lines) and the provider charged, then lost its answer (504 provider-timeout).
        run = next(m for m in params["measured"] if m["design"] == design)
        assert set(run["crashes"]) <= CRASH_POINTS
        assert 1 <= value[(design, "crashes")] == sum(run["crashes"].values()) <= len(CRASH_POINTS), run["crashes"]
        timeouts = [op for op in ops if op.type == "info" and op.value["status"] == 504
                    and json.loads(op.value["body"])["type"].endswith("/provider-timeout")]
        assert value[(design, "provider_timeouts")] == len(timeouts) > 0
        assert value[(design, "unresolved")] == 0  # every payment ended with a final answer

        charges = [c for c in state[design]["charges"] if c["status"] == SUCCEEDED]
        payments = state[design]["payments"]
        if design in SAFE:
            # Exactly one effect per key, whatever the crashes, the retries and the storm did.
            assert len(charges) == len(payments) == len(keys)
            assert Counter((c["tenant_id"], c["reference"]) for c in charges) == Counter(dict.fromkeys(keys, 1))
            assert {p["charge_id"] for p in payments} == {c["id"] for c in charges}
            assert value[(design, "duplicates_per_10k")] == 0 and value[(design, "orphans_per_10k")] == 0
            assert all(checks[f"{c}[{design}]"]["valid"] for c in CHECKS), checks
            assert value[(design, "checks_valid")] == 1
        else:
            # The unsafe design charges again on every retry and every extra click: the checker catches it.
            assert len(charges) > len(keys) and value[(design, "duplicates_per_10k")] > 0
            assert not checks[f"exactly_one_effect[{design}]"]["valid"]
            assert checks[f"exactly_one_effect[{design}]"]["violations"] > 0

    # `saaslab check idempotency` re-checks the folder with the same verdicts; `none` failing is what the lab
    # expects, so it exits 0, and says so.
    assert {r.name: r.valid for r in check_run(out, settings)} == {n: c["valid"] for n, c in checks.items()}
    env = {**os.environ, "SAASLAB_DATABASE_URL": settings.database_url or "",
           "SAASLAB_REDIS_URL": settings.redis_url or ""}
    cli = subprocess.run([sys.executable, "-m", "saaslab.cli", "check", "idempotency", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "exactly_one_effect[none]: VIOLATED (expected of the unsafe design)" in cli.stdout + cli.stderr

    # With `unsafe`, the unsafe design's part stands alone too.
    unsafe = json.loads((out / "unsafe" / "live" / "check.json").read_text())
    assert {c["name"] for c in unsafe} == {f"{c}[{UNSAFE}]" for c in CHECKS}
    assert not next(c for c in unsafe if c["name"] == f"exactly_one_effect[{UNSAFE}]")["valid"]
    assert {r.design for r in read_rows(out / "unsafe" / "live" / "results.csv")} == {UNSAFE}
    # Alone, it is judged as every pattern's unsafe run is: its checker is meant to fail, so the violations are
    # marked expected and the check exits 0 (it would exit 1 if the unsafe design were not caught).
    cli = subprocess.run([sys.executable, "-m", "saaslab.cli", "check", "idempotency", "--out", str(out / "unsafe")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    said = cli.stdout + cli.stderr
    assert "exactly_one_effect[none]: VIOLATED (expected of the unsafe design)" in said

    # The report builds on the run, beside a simulation: one measured row per design at the live load point.
    scenario.run(out, quick=True, seeds=1, jobs=1)
    report = build(load_pattern("idempotency", tmp_path))
    assert report.sim_vs_live is not None
    measured = {row[0]: row for row in report.sim_vs_live.rows}
    assert set(measured) == set(scenario.DESIGNS)
    # Like for like: the simulated column is the simulation's replay of the same plan at the same load point.
    assert "The simulated column replays the live load test's plan" in report.sim_vs_live.caption
    assert float(measured[UNSAFE][2].replace(",", "")) > 10_000 and "*" not in measured[UNSAFE][2]
    assert all(row[1] == f"{load_point:g}" for row in measured.values())
    for design in SAFE:
        assert measured[design][3] == "0.00" and measured[design][6] == "0.00"
    assert report.invariants is not None
    live_verdicts = {(r[1], r[2]): r[3] for r in report.invariants.rows if r[0] == "live"}
    assert live_verdicts[(UNSAFE, "exactly_one_effect")] == "NO"
    assert all(live_verdicts[(d, c)] == "yes" for d in SAFE for c in CHECKS)
