"""The sagas report, built from a quick simulation: it opens with the answer from the numbers, shows the checker
catching the unsafe design, and sets live rows (plain metric names, the run's fault condition) beside the sweep."""

from __future__ import annotations

from pathlib import Path

import pytest

from saaslab.report import build, declaration_for, load_pattern, split_sentences
from saaslab.reports.sagas.live import live_run_notes
from saaslab.results import ALL_TENANTS, Row, write_run
from scenarios import sagas as sg


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reports")
    sg.run(root / "sagas", quick=True, seeds=2, jobs=2)
    return root


def test_without_a_live_run_it_answers_from_the_simulation(reports: Path) -> None:
    report = build(declaration_for("sagas"), load_pattern("sagas", reports))
    assert 1 <= sum(len(split_sentences(s)) for s in report.answer) <= 5
    assert report.answer[0].startswith("Orchestration, choreography and twopc ended every order all-done or all-undone")
    assert "unsafe dual writes left" in report.answer[0]
    assert report.headline_figure is not None and len(report.figures) == 2
    assert [t.title.split(" (")[0] for t in report.tables] == [
        "Outcomes under faults at load 0.6", "What each design costs, by load", "Locks, doubt and recovery at load 0.6"]
    assert report.invariants is not None
    failed = {(r[1], r[2]) for r in report.invariants.rows if r[4] != "0"}
    assert ("unsafe", "all_or_nothing") in failed and not any(d != "unsafe" for d, _ in failed)
    assert report.sim_vs_live is not None and {r[5] for r in report.sim_vs_live.rows} == {"no live run yet"}
    assert any("saaslab load sagas" in s for s in report.conclusions)


def test_live_rows_are_compared_under_the_live_runs_fault_condition(reports: Path, tmp_path: Path) -> None:
    live = tmp_path / "sagas" / "live"
    live.mkdir(parents=True)
    (tmp_path / "sagas" / "sim").symlink_to(reports / "sagas" / "sim", target_is_directory=True)
    rows = [Row("r", "live", "sagas", "choreography", 0, 0.3, ALL_TENANTS, metric, value, unit)
            for metric, value, unit in (("latency_p50", 80.0, "ms"), ("compensated_share", 0.0, "ratio"),
                                        ("messages_per_saga", 60.0, "messages"))]
    write_run(live, run_id="r", pattern="sagas", source="live", rows=rows,
              parameters={"failure_rate": 0.05, "crash_rate": 0})
    report = build(declaration_for("sagas"), load_pattern("sagas", tmp_path))
    table = report.sim_vs_live
    assert table is not None
    by_metric = {r[3]: r for r in table.rows}
    assert set(by_metric) == {"p50 (ms)", "share compensated", "messages per order"}
    assert all(r[:3] == ["choreography", "0.3", "5% failures"] for r in table.rows)
    assert by_metric["p50 (ms)"][5] == "80.0" and "±" in by_metric["p50 (ms)"][4]
    assert any("measured values agree with the simulation" in s for s in report.conclusions)


def test_the_notes_say_what_the_live_run_did_differently_from_the_model() -> None:
    notes = live_run_notes({"skipped": {"twopc": "the server's max_prepared_transactions is 0 (twopc needs it > 0)"},
                            "crash_rate": 0.5, "workers": 2, "service": {"saga_lease_s": 2.0}})
    assert notes[0] == "The live run skipped twopc: the server's max_prepared_transactions is 0 (twopc needs it > 0)."
    assert "crashed one of its 2 service workers 0.5 times per second" in notes[1] and "lease of 2 s" in notes[1]
    assert "(lease 10 s" in notes[1]
    assert len(live_run_notes({})) == 1  # no crashes, nothing skipped: only the provider's difference
