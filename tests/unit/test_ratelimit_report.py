"""The rate-limiting report: conclusions follow the numbers, the simulated-versus-measured table fills
in from live rows (and says how to get them when there are none), and a real quick simulation renders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from saaslab.history import CheckResult
from saaslab.report import PatternData, Report, load_pattern, load_run, split_sentences, write_pattern_report
from saaslab.reports import ratelimit
from saaslab.reports.ratelimit import QUESTION, View, build, sim_rejected_pct
from saaslab.results import ALL_TENANTS, Row, write_run
from scenarios import ratelimit as scenario

LOADS = (1.0, 2.0, 10.0)
NOISY = "noisy"
QUIET = ("quiet1", "quiet2", "quiet3", "quiet4")
SEEDS = 5
PROFILE = {
    # admission error (admitted vs exact - 100, %), state bytes, boundary flood at 10x, skewed max window
    "sliding_log": (0.0, 1200.0, 1.0, 1.0),
    "sliding_counter": (-3.0, 120.0, 1.1, 1.2),
    "gcra": (20.0, 88.0, 1.2, 2.1),
    "naive": (10.0, 120.0, 2.0, 3.5),
}


def _jitter(seed: int) -> float:
    """Symmetric over the seeds, so a mean over them is the profile's value exactly."""
    return 1 + 0.01 * (seed - (SEEDS - 1) / 2)


def sim_rows(profile: dict[str, tuple[float, float, float, float]] = PROFILE, *, seeds: int = SEEDS) -> list[Row]:
    """Rows shaped like scenarios/ratelimit.py's, from a profile per design."""
    rows = []
    for design, (error, memory, boundary, skewed) in profile.items():
        for lp in LOADS:
            for seed in range(seeds):
                def row(tenant: str, metric: str, value: float, unit: str, design: str = design, lp: float = lp,
                        seed: int = seed) -> Row:
                    return Row("ratelimit-sim-test", "sim", "ratelimit", design, seed, lp, tenant, metric, value,
                               unit)

                noisy_rejected = 100.0 * (1 - 1 / lp)  # the noisy tenant gets exactly its quota
                race_ok = design != "naive" or lp <= 1
                rows += [
                    row(ALL_TENANTS, "accuracy_offered", 1000 * lp, "requests"),
                    row(ALL_TENANTS, "accuracy_admitted_vs_exact_pct", 100 + error * _jitter(seed), "percent"),
                    row(ALL_TENANTS, "accuracy_false_admit_pct", max(error, 0) * _jitter(seed), "percent"),
                    row(ALL_TENANTS, "accuracy_false_reject_pct", max(-error, 0) * _jitter(seed), "percent"),
                    row(ALL_TENANTS, "accuracy_max_window_ratio", 1 + max(error, 0) / 20, "x_limit"),
                    row(ALL_TENANTS, "accuracy_rejected_pct", noisy_rejected, "percent"),
                    row(ALL_TENANTS, "memory_state_bytes_mean", memory, "bytes"),
                    row(ALL_TENANTS, "memory_state_bytes_max", memory, "bytes"),
                    row(ALL_TENANTS, "boundary_burst_ratio", min(lp, boundary), "x_limit"),
                    row(NOISY, "neighbour_rejected_pct", noisy_rejected, "percent"),
                    row(NOISY, "neighbour_admitted_x_quota", 1.0, "x_limit"),
                    row(ALL_TENANTS, "neighbour_noisy_admitted_x_quota", 1.0, "x_limit"),
                    *(row(q, m, v, u) for q in QUIET for m, v, u in (("neighbour_rejected_pct", 0.0, "percent"),
                                                                     ("neighbour_admitted_x_quota", 0.5, "x_limit"))),
                    row(ALL_TENANTS, "cluster_max_window_ratio", min(skewed, 1.9), "x_limit"),
                    row(ALL_TENANTS, "skew_max_window_ratio", skewed, "x_limit"),
                    row(ALL_TENANTS, "cluster_false_admit_pct", 1.0, "percent"),
                    row(ALL_TENANTS, "cluster_false_reject_pct", 0.0, "percent"),
                    row(ALL_TENANTS, "skew_false_admit_pct", 1.0 + (skewed - 1), "percent"),
                    row(ALL_TENANTS, "skew_false_reject_pct", 0.0, "percent"),
                    row(ALL_TENANTS, "race_admitted_ratio", min(lp, 1.0) if race_ok else lp, "x_limit"),
                    row(ALL_TENANTS, "race_no_over_admission", float(race_ok), "bool"),
                ]
    return rows


SIM_PARAMETERS = {"policy": {"requests": 100, "window_s": 1.0}, "race_policy": {"requests": 50, "window_s": 10.0},
                  "durations_s": {"accuracy": 20.0, "neighbour": 10.0, "skew": 4.0}, "quiet_multiple": 0.5,
                  "boundary_spread": 0.1, "servers": 3, "skew_ms": 50, "race_spread_us": 2000,
                  "network_hop_us": {"base": 200, "jitter_mean": 100}, "load_points": list(LOADS),
                  "seeds": list(range(SEEDS)), "quick": True}


def live_rows(cells: dict[tuple[str, float], tuple[float, float]]) -> list[Row]:
    """(design, load) -> (noisy rejected fraction, noisy p99 ms); quiet tenants are never refused."""
    rows = []
    for (design, lp), (noisy, p99) in cells.items():
        def row(tenant: str, metric: str, value: float, unit: str, design: str = design, lp: float = lp) -> Row:
            return Row("ratelimit-live-test", "live", "ratelimit", design, 0, lp, tenant, metric, value, unit)

        rows += [row(NOISY, "rejected_rate", noisy, "fraction"), row(NOISY, "latency_p99", p99, "ms"),
                 *(row(q, "rejected_rate", 0.0, "fraction") for q in QUIET),
                 *(row(q, "latency_p99", 3.0 + i, "ms") for i, q in enumerate(QUIET)),
                 row(ALL_TENANTS, "rejected_rate", noisy * lp / (lp + 2), "fraction"),
                 row(ALL_TENANTS, "latency_p99", p99 / 2, "ms")]
    return rows


def write(reports: Path, source: str, rows: list[Row], parameters: dict | None = None,
          checks: list[CheckResult] | None = None) -> None:
    directory = reports / "ratelimit" / source
    write_run(directory, run_id=f"ratelimit-{source}-test", pattern="ratelimit", source=source,  # type: ignore[arg-type]
              rows=rows, parameters=parameters if parameters is not None else {})
    if checks is not None:
        (directory / "check.json").write_text(json.dumps([c.to_dict() for c in checks]))


def report_for(reports: Path) -> Report:
    return build(load_pattern("ratelimit", reports))


def table_rows(report: Report) -> dict[tuple[str, str, str], list[str]]:
    assert report.sim_vs_live is not None
    return {(r[0], r[1], r[2]): r[3:] for r in report.sim_vs_live.rows}


# --- synthetic rows -------------------------------------------------------------------------------


def test_the_headline_answers_accuracy_memory_concurrency_and_skew_from_the_numbers(tmp_path: Path) -> None:
    write(tmp_path, "sim", sim_rows(), SIM_PARAMETERS)
    report = report_for(tmp_path)
    assert report.question == QUESTION
    assert report.headline == (
        "Of the atomic algorithms, sliding_log (0.00% off an exact sliding window's admissions, 1,200 bytes per "
        "tenant) kept a tenant closest to its quota, sliding_counter (3.00% off an exact sliding window's "
        "admissions, 120 bytes per tenant) came next and the cheapest was gcra (20.0% off an exact sliding "
        "window's admissions, 88 bytes per tenant); all 3 atomic algorithms stayed within the limit when requests "
        "raced while naive admitted up to 10.0x it; with app clocks ±50 ms apart, gcra admitted more in one "
        "window than they promise.")
    text = "\n".join(report.conclusions)
    assert "got naive to admit 2.00x the limit, sliding_log 1.00x, the others 1.10x to 1.20x." in text
    assert "the largest is 13.6x the smallest" in text
    assert "naive failed it in 10 of 15 runs (every run at loads 2 and 10), admitting up to 10.0x the limit" in text
    assert "under every algorithm and load the quiet tenants were never refused" in text
    assert "naive reached 3.50x (1.90x with agreeing clocks): its race" in text


def test_a_different_winner_changes_the_sentences_not_just_the_numbers(tmp_path: Path) -> None:
    profile = {**PROFILE, "sliding_log": (6.0, 1200.0, 1.0, 1.0), "sliding_counter": (0.0, 120.0, 1.1, 1.2)}
    write(tmp_path, "sim", sim_rows(profile), SIM_PARAMETERS)
    report = report_for(tmp_path)
    assert report.headline.startswith("Of the atomic algorithms, sliding_counter (0.00% off")
    assert "sliding_log (6.00% off an exact sliding window's admissions, 1,200 bytes per tenant) came next" in (
        report.headline)
    separation = next(c for c in report.conclusions if "runner-up" in c)
    assert "(sliding_counter over sliding_log) is larger than the 95% CIs" in separation


def test_one_seed_gives_no_intervals_and_a_note_asking_for_more(tmp_path: Path) -> None:
    write(tmp_path, "sim", sim_rows(seeds=1), SIM_PARAMETERS)
    report = report_for(tmp_path)
    assert any("used 1 seed(s)" in n for n in report.notes)
    assert not any("runner-up" in c or "overlap" in c for c in report.conclusions)


def test_the_all_tenants_rate_pools_refusals_by_offered_requests(tmp_path: Path) -> None:
    write(tmp_path, "sim", sim_rows(), SIM_PARAMETERS)
    view = View.of(load_run(tmp_path / "ratelimit" / "sim", "sim"))  # type: ignore[arg-type]
    # The noisy tenant offers load x quota and gets one quota through; four quiet ones offer half a quota each.
    for lp in LOADS:
        assert sim_rejected_pct(view, "gcra", lp, "all").mean == pytest.approx(100 * (lp - 1) / (lp + 2))
        assert sim_rejected_pct(view, "gcra", lp, "quiet").mean == 0.0
        assert sim_rejected_pct(view, "gcra", lp, "noisy").mean == pytest.approx(100 * (1 - 1 / lp))


def test_without_a_live_run_the_table_gives_the_sim_429_rate_and_says_how_to_measure(tmp_path: Path) -> None:
    write(tmp_path, "sim", sim_rows(), SIM_PARAMETERS)
    report = report_for(tmp_path)
    rows = table_rows(report)
    assert set(rows) == {(d, f"{lp:g}", g) for d in PROFILE for lp in LOADS
                         for g in ("noisy", "quiet (mean of 4)", "all tenants")}
    assert rows[("gcra", "10", "noisy")] == ["90.0% ± 0.0", "no live run yet", "n/a", "not modelled",
                                             "no live run yet", "n/a"]
    assert rows[("gcra", "2", "all tenants")][0] == "25.0% ± 0.0"
    assert report.sim_vs_live_note.startswith("No live run yet: run `saaslab load ratelimit`")
    assert report.conclusions[-1] == report.sim_vs_live_note
    assert report.invariants is None and "saaslab load ratelimit" in report.invariants_note


def test_live_rows_fill_the_table_with_gaps_and_the_checks(tmp_path: Path) -> None:
    write(tmp_path, "sim", sim_rows(), SIM_PARAMETERS)
    write(tmp_path, "live", live_rows({("gcra", 1.0): (0.02, 9.0), ("gcra", 2.0): (0.55, 12.5),
                                       ("gcra", 10.0): (0.9, 20.0)}),
          {"load_points": list(LOADS), "workers": 2},
          checks=[CheckResult("no_over_admission", True, 4000), CheckResult("quiet_never_limited", True, 900)])
    report = report_for(tmp_path)
    rows = table_rows(report)
    assert set(rows) == {("gcra", f"{lp:g}", g) for lp in LOADS for g in ("noisy", "quiet (mean of 4)", "all tenants")}
    assert rows[("gcra", "2", "noisy")] == ["50.0% ± 0.0", "55.0%", "+10% (+5.0 pp)", "not modelled", "12.5 ms",
                                            "n/a"]
    assert rows[("gcra", "2", "quiet (mean of 4)")] == ["0.00% ± 0.00", "0.00%", "±0% (both 0)", "not modelled",
                                                        "4.50 ms", "n/a"]
    assert rows[("gcra", "10", "all tenants")][:3] == ["75.0% ± 0.0", "75.0%", "+0% (0.0 pp)"]
    assert rows[("gcra", "1", "noisy")][:3] == ["0.00% ± 0.00", "2.00%", "n/a (sim 0; +2.0 pp)"]
    text = "\n".join(report.conclusions)
    assert "4 of 6 simulated 429 rates are within 25% of the measured ones; in 3 more both were zero" in text
    assert "The largest relative gap is gcra at load 2 (noisy): simulated 50.0%, measured 55.0% (+10%)." in text
    assert "Measured refusals where the simulation refused none: gcra at load 1 (noisy) 2.00%; gcra at load 1 " \
           "(all tenants) 0.67%." in text
    assert "Measured p99 ranged 4.50 ms to 20.0 ms" in text
    assert "All 2 invariant checks held on the live history (4,900 items checked)." in text
    assert report.invariants is not None and [r[:2] for r in report.invariants.rows] == [
        ["no_over_admission", "yes"], ["quiet_never_limited", "yes"]]
    assert len(report.figures) == 5 and "No live run" not in text


def test_live_load_points_the_simulation_lacks_are_marked_and_noted(tmp_path: Path) -> None:
    write(tmp_path, "sim", sim_rows(), SIM_PARAMETERS)
    write(tmp_path, "live", live_rows({("naive", 5.0): (0.7, 15.0)}),
          checks=[CheckResult("no_over_admission", False, 3000, violations=12)])
    report = report_for(tmp_path)
    rows = table_rows(report)
    assert rows[("naive", "5", "noisy")][:3] == ["not simulated", "70.0%", "n/a"]
    notes = "\n".join(report.notes)
    assert "The simulation has no load 5" in notes and "asks for 3 load points" in notes
    assert "its naive rates are fixed_window's" in notes
    assert "1 of 1 invariant checks failed on the live history, a problem: no_over_admission (12 violations)." in (
        report.conclusions)


def test_a_live_run_alone_still_reports_what_it_measured(tmp_path: Path) -> None:
    write(tmp_path, "live", live_rows({("gcra", 2.0): (0.5, 10.0)}))
    report = report_for(tmp_path)
    assert table_rows(report)[("gcra", "2", "noisy")][:2] == ["no simulation", "50.0%"]
    assert report.headline.startswith("There is no simulation") and "`saaslab sim ratelimit`" in report.headline
    assert report.tables == [] and report.figures == []


def test_the_html_is_self_contained_and_the_markdown_has_both_tables(tmp_path: Path) -> None:
    write(tmp_path, "sim", sim_rows(), SIM_PARAMETERS)
    html_path = write_pattern_report("ratelimit", tmp_path)
    page = html_path.read_text()
    assert page.count("data:image/png;base64,") == 4 and "src=\"http" not in page
    md = (tmp_path / "ratelimit" / "summary.md").read_text()
    assert "### Noisy neighbour: simulated versus measured" in md
    assert "### Concurrency and clock skew at load 10 (simulated)" in md
    assert "no live run yet: run `saaslab load ratelimit`" in md.lower()


# --- a real quick simulation ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One quick sweep of every design, load point and 5 seeds (about 20 s on 2 cores) for the module."""
    reports = tmp_path_factory.mktemp("reports")
    scenario.run(reports / "ratelimit", quick=True, seeds=5, jobs=2)
    return reports


def _conclusion(report: Report, start: str) -> str:
    return next(c for c in report.conclusions if c.startswith(start))


def test_a_real_simulation_reports_the_known_shape_of_each_algorithm(quick_sim: Path) -> None:
    report = report_for(quick_sim)
    assert report.answer[0] == report.headline and len(split_sentences(" ".join(report.answer))) <= 5
    assert report.headline.startswith("Of the atomic algorithms, sliding_log (0.00% off an exact sliding window's")
    assert "all 5 atomic algorithms stayed within the limit when requests raced while naive admitted up to 10.0x" in (
        report.headline)
    boundary = _conclusion(report, "A flood of 10x the limit")
    assert "got fixed_window and naive to admit 2.00x the limit, sliding_log 1.00x" in boundary
    assert "naive failed it in 10 of 20 runs (every run at loads 2 and 10)" in _conclusion(report, "In the race")
    assert "the quiet tenants were never refused" in _conclusion(report, "Limits are per tenant")
    memory = _conclusion(report, "Redis state per tenant")
    assert re.search(r"It grows with the requests admitted for sliding_log \(\d", memory)
    rows = table_rows(report)
    assert {(d, lp) for d, lp, _ in rows} == {(d, lp) for d in scenario.DESIGNS for lp in ("1", "2", "10")}
    # The pooled rate lies between the quiet tenants' and the noisy tenant's, as a weighted mean must.
    for d in scenario.DESIGNS:
        for lp in ("1", "2", "10"):
            noisy, quiet, pooled = (float(rows[(d, lp, g)][0].split("%")[0])
                                    for g in ("noisy", "quiet (mean of 4)", "all tenants"))
            assert quiet <= pooled <= noisy


def test_a_real_simulation_beside_a_live_run_fills_the_table(quick_sim: Path, tmp_path: Path) -> None:
    sim = load_run(quick_sim / "ratelimit" / "sim", "sim")
    write(tmp_path, "live", live_rows({(d, lp): (0.5, 10.0) for d in ("fixed_window", "naive") for lp in LOADS}))
    live = load_run(tmp_path / "ratelimit" / "live", "live")
    report = build(PatternData(pattern="ratelimit", directory=tmp_path / "ratelimit", sim=sim, live=live))
    rows = table_rows(report)
    assert len(rows) == 2 * 3 * 3
    assert all(r[0] != "not simulated" and r[1] == "50.0%" and r[3] == "not modelled" for k, r in rows.items()
               if k[2] == "noisy")
    assert any(c.startswith(("The largest relative gap", "Measured refusals")) for c in report.conclusions)
    assert ratelimit.NO_LIVE not in str(report.sim_vs_live)


def test_a_real_simulation_reports_whether_critical_traffic_keeps_flowing(quick_sim: Path) -> None:
    """Stripe's question, answered from the shedding rows of the same sweep: critical keeps flowing under
    priority shedding, and the other designs fail it with the rest."""
    report = report_for(quick_sim)
    priority = _conclusion(report, "With priority shedding")
    assert re.search(r"critical requests kept at least 95\.0% success up to \d+x capacity", priority), priority
    assert priority.endswith("shed in priority order in every seed.")
    others = _conclusion(report, "At the same 10x load, critical success without priorities")
    assert "shed_uniform" in others and "shed_none" in others
    table = next(t for t in report.tables if t.title.startswith("Priority load shedding"))
    assert {r[0] for r in table.rows} == {"shed_priority", "shed_uniform", "shed_none"}
    critical_success = {(r[0], r[1]): float(r[2].split("%")[0]) for r in table.rows}
    assert critical_success[("shed_priority", "10")] > critical_success[("shed_uniform", "10")]
    assert critical_success[("shed_priority", "10")] > critical_success[("shed_none", "10")]
