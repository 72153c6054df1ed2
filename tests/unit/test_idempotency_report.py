"""The idempotency report: conclusions follow the numbers, the simulated-versus-measured table fills in from
live rows (and says how to get them when there are none), and a real short simulation renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saaslab.history import CheckResult
from saaslab.report import Report, load_pattern, split_sentences, write_pattern_report
from saaslab.reports.idempotency import NO_LIVE, OWN_WORKLOAD, QUESTION, build
from saaslab.results import ALL_TENANTS, Row, write_run
from scenarios import idempotency as scenario

SEEDS = 5
LOADS = (0.3, 0.9, 1.1)
# Per design and load: duplicates, orphans per seed, finished by the completer, timeouts %, retries, p99 ms, 409 %.
PROFILE: dict[str, dict[float, tuple[float, list[float], float, float, float, float, float]]] = {
    "none": {0.3: (400.0, [120.0] * 5, 0.0, 0.5, 0.02, 70.0, 0.0),
             0.9: (380.0, [110.0] * 5, 0.0, 0.6, 0.02, 600.0, 0.0),
             1.1: (8000.0, [240.0] * 5, 0.0, 60.0, 2.4, 990.0, 0.0)},
    "redis": {0.3: (0.0, [0.0, 0.0, 25.0, 25.0, 0.0], 0.0, 0.5, 0.04, 71.0, 1.9),
              0.9: (0.0, [0.0] * 5, 0.0, 0.6, 0.04, 650.0, 1.5),
              1.1: (0.0, [0.0, 25.0, 0.0, 0.0, 0.0], 0.0, 40.0, 1.1, 980.0, 0.8)},
    "postgres": {0.3: (0.0, [0.0] * 5, 120.0, 0.5, 0.04, 73.0, 1.8),
                 0.9: (0.0, [0.0] * 5, 110.0, 0.5, 0.04, 700.0, 1.4),
                 1.1: (0.0, [0.0] * 5, 100.0, 65.0, 2.3, 985.0, 0.2)},
}
SIM_PARAMETERS = {"setup": scenario.SETUP.parameters(), "designs": list(PROFILE), "load_points": list(LOADS),
                  "seeds": list(range(SEEDS)), "quick": False}


def _jitter(seed: int) -> float:
    """Symmetric over the seeds, so a mean over them is the profile's value exactly."""
    return 1 + 0.01 * (seed - (SEEDS - 1) / 2)


def sim_rows(profile: dict = PROFILE, seeds: int = SEEDS) -> list[Row]:
    rows = []
    for design, loads in profile.items():
        for lp, (dup, orphans, completer, timeouts, retries, p99, conflicts) in loads.items():
            for seed in range(seeds):
                def row(metric: str, value: float, unit: str, design: str = design, lp: float = lp,
                        seed: int = seed) -> Row:
                    return Row("idem-sim-test", "sim", "idempotency", design, seed, lp, ALL_TENANTS, metric, value,
                               unit)

                j = _jitter(seed)
                orphan = orphans[seed]
                rows += [
                    row("payments", 1000 * lp, "requests"),
                    row("duplicates_per_10k", dup * j, "per_10k"),
                    row("effect_violations_per_10k", 0.9 * dup * j, "per_10k"),
                    row("orphans_per_10k", orphan, "per_10k"),
                    row("replay_mismatch", 0.0, "requests"),
                    row("conflicts_pct", conflicts * j, "percent"),
                    row("replays_pct", 0.0 if design == "none" else 2.5, "percent"),
                    row("timeouts_pct", timeouts * j, "percent"),
                    row("retries_per_request", retries * j, "ratio"),
                    row("gave_up_pct", 0.0, "percent"),
                    row("latency_p99", p99 * j, "ms"),
                    row("payment_latency_p99", 1000.0 + p99, "ms"),
                    row("crashes", 2.0, "count"),
                    row("completed_by_completer_per_10k", completer * j, "per_10k"),
                    row("exactly_one_effect", float(dup == 0), "bool"),
                    row("replays_match_first", 1.0, "bool"),
                    row("no_orphan_charges", float(orphan == 0 and design != "none"), "bool"),
                    row("checks_valid", float(dup == 0 and orphan == 0 and design != "none"), "bool"),
                ]
    return rows


def as_live_rows(cells: dict[tuple[str, float], tuple[float, float, float]], seeds: int = 3) -> list[Row]:
    """The simulation's replay of the live plan: (design, load) -> (duplicates per 10k, orphans per 10k, p99 ms)."""
    rows = []
    for (design, lp), values in cells.items():
        for seed in range(seeds):
            for metric, value, unit in zip(("duplicates_per_10k", "orphans_per_10k", "latency_p99", "crashes"),
                                           (*values, 2.0), ("per_10k", "per_10k", "ms", "count"), strict=True):
                rows.append(Row("idem-sim-test", "sim", "idempotency", design, seed, lp, ALL_TENANTS, f"aslive_{metric}",
                                value * (1 + 0.01 * (seed - 1)), unit))
    return rows


def live_rows(cells: dict[tuple[str, float], tuple[float, float, float]]) -> list[Row]:
    """(design, load) -> (duplicates per 10k, orphans per 10k, p99 ms)."""
    rows = []
    for (design, lp), values in cells.items():
        for metric, value, unit in zip(("duplicates_per_10k", "orphans_per_10k", "latency_p99"), values,
                                       ("per_10k", "per_10k", "ms"), strict=True):
            rows.append(Row("idem-live-test", "live", "idempotency", design, 0, lp, ALL_TENANTS, metric, value, unit))
    return rows


def write(reports: Path, source: str, rows: list[Row], parameters: dict | None = None,
          checks: list[CheckResult] | None = None) -> None:
    directory = reports / "idempotency" / source
    write_run(directory, run_id=f"idem-{source}-test", pattern="idempotency", source=source,  # type: ignore[arg-type]
              rows=rows, parameters=parameters if parameters is not None else {})
    if checks is not None:
        (directory / "check.json").write_text(json.dumps([c.to_dict() for c in checks]))


def report_for(reports: Path) -> Report:
    return build(load_pattern("idempotency", reports))


def sim_vs_live(report: Report) -> dict[tuple[str, str], list[str]]:
    assert report.sim_vs_live is not None
    return {(r[0], r[1]): r[2:] for r in report.sim_vs_live.rows}


# --- synthetic rows -----------------------------------------------------------------------------------


def test_the_conclusions_are_filled_in_from_the_numbers(tmp_path: Path) -> None:
    write(tmp_path, "sim", sim_rows(), SIM_PARAMETERS)
    report = report_for(tmp_path)
    assert report.question == QUESTION
    assert report.headline == (
        "Under client timeouts, retries, provider faults and crashes, none made 380 to 400 duplicate effects per "
        "10,000 payments within capacity (loads 0.3 and 0.9) and 8,000 at load 1.1; redis and postgres made no "
        "duplicate in any of their 30 runs; but redis left up to 10.0 charges per 10,000 without a payment row "
        "(load 0.3) where postgres left none.")
    text = "\n".join(report.conclusions)
    assert ("on none's runs exactly_one_effect failed 15 of 15 and no_orphan_charges failed 15 of 15; on redis's "
            "runs no_orphan_charges failed 3 of 15; every check held on all 15 of postgres's runs. It catches the "
            "unsafe none design in every run.") in text
    assert "redis left charges without a payment row in 3 of 15 runs (at most 10.0 per 10,000 on average" in text
    assert "postgres left none: its completer finished up to 120 abandoned claims per 10,000 payments" in text
    assert ("at load 1.1, 60.0% of none's attempts timed out, clients retried 2.40 times per payment and duplicates "
            "reached 8,000 per 10,000, 20.0x the most seen within capacity") in text
    assert "At load 0.9 the p99 of an answered attempt was none 600 ms ± " in text
    assert "Every replay matched the key's first answer byte for byte (45 runs; up to 2.50% of attempts" in text
    assert report.conclusions[-1].startswith("No live run yet: run `saaslab load idempotency`")
    assert not report.notes
    assert report.workload[0].startswith("Payments: Poisson arrivals at 0.3, 0.9, 1.1 x capacity (380.952 payments/s")
    assert "timeout after the charge 1%" in report.workload[2] and report.workload[-1] == (
        "5 seeds per design and load point.")


def test_an_incomplete_setup_is_named_not_guessed(tmp_path: Path) -> None:
    write(tmp_path, "sim", sim_rows(), {**SIM_PARAMETERS, "setup": {"workers": 4}})
    assert report_for(tmp_path).workload == [
        "The simulated run's setup in run.json is incomplete (an older version?): re-run `saaslab sim idempotency`."]


def test_without_a_live_run_the_table_shows_the_simulation_and_says_how_to_measure(tmp_path: Path) -> None:
    write(tmp_path, "sim", sim_rows(), SIM_PARAMETERS)
    report = report_for(tmp_path)
    rows = sim_vs_live(report)
    assert set(rows) == {(d, f"{lp:g}") for d in PROFILE for lp in LOADS}
    none = rows[("none", "0.9")]
    assert none[0].startswith("380 ± ") and none[1:3] == [NO_LIVE, "n/a"]
    assert rows[("postgres", "1.1")][:3] == ["0.00 ± 0.00", NO_LIVE, "n/a"]
    assert report.sim_vs_live_note.startswith("No live run yet")
    assert report.invariants is not None
    inv = {(r[0], r[1], r[2]): r[3:] for r in report.invariants.rows}
    assert inv[("simulated", "none", "exactly_one_effect")][:2] == ["0/15 runs", "15"]
    assert inv[("simulated", "redis", "no_orphan_charges")] == [
        "12/15 runs", "3", "orphan charges per 10,000 payments: up to 10.0 (load 0.3)"]
    assert inv[("simulated", "postgres", "exactly_one_effect")] == ["15/15 runs", "0", "no violating keys"]
    assert "saaslab load idempotency" in report.invariants_note
    assert [t.title for t in report.tables] == ["Duplicate and orphan effects (simulated)",
                                               "What the protection costs (simulated)"]
    assert report.tables[0].rows[3][:2] == ["redis", "0.3"] and report.tables[0].rows[3][-1] == "3/5"
    assert len(report.figures) == 2


def test_live_rows_fill_the_table_and_the_invariants(tmp_path: Path) -> None:
    write(tmp_path, "sim", sim_rows(), SIM_PARAMETERS)
    write(tmp_path, "live", live_rows({("none", 0.9): (350.0, 100.0, 30.0), ("redis", 0.9): (0.0, 4.0, 25.0),
                                       ("postgres", 0.9): (12.0, 0.0, 35.0)}),
          {"load_points": [0.9], "duration_s": 60, "designs": ["none", "redis", "postgres"]},
          checks=[CheckResult("exactly_one_effect[none]", False, 900, 31),
                  CheckResult("exactly_one_effect[postgres]", False, 900, 2),
                  CheckResult("replays_match_first", True, 1200)])
    report = report_for(tmp_path)
    rows = sim_vs_live(report)
    assert set(rows) == {("none", "0.9"), ("redis", "0.9"), ("postgres", "0.9")}
    assert rows[("none", "0.9")][1:3] == ["350", "-8%"]
    assert rows[("redis", "0.9")][:3] == ["0.00 ± 0.00", "0.00", "±0% (both 0)"]
    assert rows[("redis", "0.9")][4:6] == ["4.00", "n/a (sim 0; 4.00 measured)"]
    assert rows[("postgres", "0.9")][1:3] == ["12.0", "n/a (sim 0; 12.0 measured)"]
    assert rows[("postgres", "0.9")][7] == "35.0"
    text = "\n".join(report.conclusions)
    # Zero against zero is counted apart, never as agreement.
    assert ("1 of 2 measured duplicate rates agree with the simulation (inside its 95% CI or within 25%); in 1 more "
            "both were zero") in text
    assert "Measured duplicates where the simulation had none: postgres at load 0.9 12.0 per 10,000." in text
    assert "redis made no duplicate live either." in text
    assert "The p99s differ most for redis at load 0.9: simulated 650 ms, measured 25.0 ms (-96%)." in text
    assert ("On the live history the checker caught the deliberately unsafe none design, as expected: "
            "exactly_one_effect[none] (31 violations) failed.") in text
    assert ("1 of 3 invariant checks failed on the live history on designs meant to be safe, a problem: "
            "exactly_one_effect[postgres] (2 violations).") in text
    assert NO_LIVE not in str(report.sim_vs_live)
    assert report.invariants is not None
    live = [r for r in report.invariants.rows if r[0] == "live"]
    assert [r[1:5] for r in live] == [["none", "exactly_one_effect", "NO", "31"],
                                      ["postgres", "exactly_one_effect", "NO", "2"],
                                      ["none", "replays_match_first", "yes", "0"],
                                      ["redis", "replays_match_first", "yes", "0"],
                                      ["postgres", "replays_match_first", "yes", "0"]]
    assert any(line.startswith("Live run: load points [0.9]; duration s 60") for line in report.workload)
    assert len(report.figures) == 3


def test_the_table_sets_the_replay_of_the_live_plan_beside_the_live_run(tmp_path: Path) -> None:
    """Like for like: where the simulation replayed the live plan (aslive_*), the table's simulated side is that
    replay, not the sweep's own workload; elsewhere it falls back to the sweep, marked."""
    replay = as_live_rows({("none", 0.9): (15_000.0, 2_500.0, 900.0), ("redis", 0.9): (0.0, 0.0, 950.0),
                           ("postgres", 0.9): (0.0, 0.0, 960.0), ("none", 0.5): (14_000.0, 2_400.0, 800.0)})
    write(tmp_path, "sim", sim_rows() + replay, SIM_PARAMETERS)
    write(tmp_path, "live", live_rows({("none", 0.9): (12_000.0, 2_300.0, 700.0), ("redis", 0.9): (0.0, 0.0, 920.0),
                                       ("postgres", 0.9): (0.0, 0.0, 260.0), ("none", 0.3): (11_000.0, 2_000.0, 500.0)}),
          {"load_points": [0.3, 0.9]})
    report = report_for(tmp_path)
    rows = sim_vs_live(report)
    assert set(rows) == {("none", "0.3"), ("none", "0.9"), ("redis", "0.9"), ("postgres", "0.9")}
    # The replay at 0.9 (mean over its 3 seeds), against the measured 12,000: -20%.
    assert rows[("none", "0.9")][:3] == ["15,000 ± 373", "12,000", "-20%"]
    assert rows[("none", "0.9")][3:6] == ["2,500 ± 62", "2,300", "-8%"]
    assert rows[("redis", "0.9")][:3] == ["0.00 ± 0.00", "0.00", "±0% (both 0)"]
    assert rows[("postgres", "0.9")][6:8] == ["960 ± 24", "260"]
    # No replay at 0.3: the sweep's own workload, marked as such.
    assert rows[("none", "0.3")][:2] == ["400 ± 8" + OWN_WORKLOAD, "11,000"]
    assert report.sim_vs_live is not None
    caption = report.sim_vs_live.caption
    assert "The simulated column replays the live load test's plan in the model" in caption
    assert f"cells marked{OWN_WORKLOAD} come from the simulation's own, milder workload" in caption
    text = "\n".join(report.conclusions)
    assert "1 of 2 measured duplicate rates agree with the simulation (inside its 95% CI" in text
    # The replay's cells (0.5 among them) stay out of the sweep's own tables, and its load point out of the notes.
    assert {r[1] for r in report.tables[0].rows} == {"0.3", "0.9", "1.1"}
    assert not any("has no" in n for n in report.notes)


def test_a_replay_alone_is_named_in_the_agreement(tmp_path: Path) -> None:
    write(tmp_path, "sim", sim_rows() + as_live_rows({("none", 0.3): (11_000.0, 2_000.0, 500.0)}), SIM_PARAMETERS)
    write(tmp_path, "live", live_rows({("none", 0.3): (11_500.0, 2_100.0, 450.0)}))
    report = report_for(tmp_path)
    assert sim_vs_live(report)[("none", "0.3")][:3] == ["11,000 ± 273", "11,500", "+5%"]
    assert ("1 of 1 measured duplicate rates agree with the simulation's replay of the live plan"
            in "\n".join(report.conclusions))
    assert report.sim_vs_live is not None and OWN_WORKLOAD not in str(report.sim_vs_live.rows)


def test_a_live_run_alone_still_reports_what_it_measured(tmp_path: Path) -> None:
    write(tmp_path, "live", live_rows({("none", 1.0): (500.0, 80.0, 40.0)}))
    report = report_for(tmp_path)
    assert sim_vs_live(report)[("none", "1")][:3] == ["no simulation", "500", "n/a"]
    assert report.headline.startswith("There is no simulation") and "`saaslab sim idempotency`" in report.headline
    assert report.tables == [] and report.figures == []
    assert report.invariants is None and "has no check.json" in report.invariants_note


def test_one_seed_asks_for_more(tmp_path: Path) -> None:
    write(tmp_path, "sim", sim_rows(seeds=1), SIM_PARAMETERS)
    report = report_for(tmp_path)
    assert any("used 1 seed(s)" in n for n in report.notes)


# --- a real short simulation --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reports = tmp_path_factory.mktemp("reports")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(scenario.DURATION_S, "quick", 1.5)
        mp.setattr(scenario, "LOAD_POINTS", (0.5, 0.9))
        scenario.run(reports / "idempotency", quick=True, seeds=2, jobs=2)
    return reports


def test_a_real_simulation_renders_a_self_contained_report(real_run: Path) -> None:
    html = write_pattern_report("idempotency", real_run).read_text()
    assert html.count("data:image/png;base64,") == 2 and 'src="http' not in html
    report = report_for(real_run)
    assert report.answer[0] == report.headline and len(split_sentences(" ".join(report.answer))) <= 5
    assert report.headline.startswith("Under client timeouts, retries, provider faults and crashes, none made ")
    assert "redis and postgres made no duplicate in any of their 8 runs" in report.headline
    assert "It catches the unsafe none design in every run." in "\n".join(report.conclusions)
    # The sweep ran 0.5 and 0.9; the live plan's replay ran the quick live load point, 0.3, on its own.
    (replay,) = [line for line in report.workload if line.startswith("The live plan, replayed in the model")]
    assert "loads 0.3 x 444.444 payments/s (the capacity with nothing armed) for 3 s, 2 seeds, on 2 workers" in replay
    rows = sim_vs_live(report)
    assert {lp for _, lp in rows} == {"0.3", "0.5", "0.9"}
    assert not rows[("none", "0.3")][0].endswith(OWN_WORKLOAD) and rows[("none", "0.5")][0].endswith(OWN_WORKLOAD)
    assert {r[1] for r in report.tables[0].rows} == {"0.5", "0.9"}
    md = (real_run / "idempotency" / "summary.md").read_text()
    assert "### Simulated versus measured: duplicates per 10,000 payments by design" in md
    assert "no live run yet" in md
