"""The report writer on synthetic tenancy rows: statistics, tables, self-contained HTML, conclusions."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from saaslab import patterns
from saaslab.report import (
    Report,
    ReportError,
    Summary,
    Table,
    fmt_gap,
    gap_percent,
    html_table,
    load_pattern,
    markdown_table,
    split_sentences,
    summarise,
    write_index,
    write_pattern_report,
)
from saaslab.reports import tenancy
from saaslab.results import ALL_TENANTS, Row, write_run

DESIGNS = ("fifo", "bulkhead", "wfq")
LOADS = (0.3, 0.5, 0.7)
QUIET = ("quiet1", "quiet2", "quiet3", "quiet4")
SOLO_MS = 30.0

Ratios = dict[tuple[str, float], float]

BASE: Ratios = {("fifo", 0.3): 3.0, ("fifo", 0.5): 38.0, ("fifo", 0.7): 90.0,
                ("bulkhead", 0.3): 1.4, ("bulkhead", 0.5): 2.8, ("bulkhead", 0.7): 30.0,
                ("wfq", 0.3): 1.05, ("wfq", 0.5): 1.1, ("wfq", 0.7): 1.3}


def rows_for(ratios: Ratios, *, source: str = "sim", seeds: int = 5, spread: float = 0.02) -> list[Row]:
    """Tenancy rows shaped like the simulation's: each seed's ratio is the base times 1 + spread * (seed - 2)."""
    out = []
    for (design, lp), base in ratios.items():
        for seed in range(seeds):
            ratio = base * (1 + spread * (seed - (seeds - 1) / 2))

            def row(tenant: str, metric: str, value: float, unit: str,
                    design: str = design, lp: float = lp, seed: int = seed) -> Row:
                return Row(f"tenancy-{source}-test", source, "tenancy", design, seed, lp, tenant, metric,  # type: ignore[arg-type]
                           value, unit)

            noisy_p99 = 1000.0 * (2 if design != "fifo" else 1)
            for t in ("noisy", *QUIET):
                p99 = noisy_p99 if t == "noisy" else SOLO_MS * ratio
                out += [row(t, "latency_p50", p99 / 3, "ms"), row(t, "latency_p99", p99, "ms"),
                        row(t, "offered", 300, "requests"), row(t, "completed", 300, "requests"),
                        row(t, "goodput", 20.0, "rps")]
            out += [row(ALL_TENANTS, "quiet_p99", SOLO_MS * ratio, "ms"),
                    row(ALL_TENANTS, "noisy_p99", noisy_p99, "ms"),
                    row(ALL_TENANTS, "solo_quiet_p99", SOLO_MS, "ms"),
                    row(ALL_TENANTS, "quiet_p99_vs_solo", ratio, "ratio"),
                    row(ALL_TENANTS, "jain_index", 0.95 if design == "fifo" else 0.85, "ratio"),
                    row(ALL_TENANTS, "goodput", 60.0 if design == "fifo" else 90.0, "rps")]
    return out


SIM_PARAMETERS = {"workload": {"slots": 4, "service_ms": 20.0, "burst_multiplier": 10.0, "burst_start_s": 5.0,
                               "burst_length_s": 5.0, "load_point": None},
                  "tenants": ["noisy", *QUIET], "bulkhead_per_tenant": 2, "slo_ms": 500.0, "duration_s": 15.0,
                  "load_points": list(LOADS), "seeds": list(range(5)), "designs": list(DESIGNS)}


def write_source(reports: Path, source: str, rows: list[Row], checks: list[dict] | dict | None = None,
                 parameters: dict | None = None) -> None:
    directory = reports / "tenancy" / source
    if parameters is None:
        parameters = SIM_PARAMETERS if source == "sim" else {"load_points": [0.5], "seed": 1}
    write_run(directory, run_id=f"tenancy-{source}-test", pattern="tenancy", source=source,  # type: ignore[arg-type]
              rows=rows, parameters=parameters)
    if checks is not None:
        (directory / "check.json").write_text(json.dumps(checks))


def build(reports: Path) -> Report:
    return tenancy.build(load_pattern("tenancy", reports))


# --- statistics ----------------------------------------------------------------------------------

def test_summary_is_mean_and_students_t_half_width() -> None:
    s = Summary.of([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s.n == 5 and s.mean == 3.0
    # t(0.975, df=4) = 2.776; sample std of 1..5 is sqrt(2.5).
    assert s.ci95 == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5))
    assert (s.low, s.high) == pytest.approx((3.0 - s.ci95, 3.0 + s.ci95))


def test_summary_drops_nan_and_is_honest_about_one_or_no_value() -> None:
    assert Summary.of([2.0, float("nan"), 4.0]).n == 2
    one = Summary.of([7.0])
    assert one.n == 1 and math.isnan(one.ci95) and one.text("x") == "7.00x"
    none = Summary.of([float("nan")])
    assert not none.known and none.text() == "n/a"


def test_summary_text_uses_the_precision_of_the_mean() -> None:
    assert Summary(1.4913, 0.0512, 5).text("x") == "1.49x ± 0.05"
    assert Summary(66.14, 3.1, 5).text("x") == "66.1x ± 3.1"
    assert Summary(2384.2, 145.4, 5).text() == "2,384 ± 145"


def test_summarise_groups_values_over_seeds() -> None:
    rows = rows_for({("wfq", 0.5): 1.1, ("fifo", 0.5): 38.0}, seeds=3, spread=0.1)
    stats = summarise([r for r in rows if r.tenant == ALL_TENANTS], by=("design", "metric"))
    wfq = stats[("wfq", "quiet_p99_vs_solo")]
    assert wfq.n == 3
    assert wfq.mean == pytest.approx(1.1)
    assert wfq.ci95 == pytest.approx(4.303 * 0.11 / math.sqrt(3))
    assert stats[("fifo", "solo_quiet_p99")] == Summary(SOLO_MS, 0.0, 3)


def test_gap_is_relative_to_the_simulation_and_undefined_without_one() -> None:
    assert fmt_gap(gap_percent(2.0, 3.0)) == "+50%"
    assert fmt_gap(gap_percent(40.0, 30.0)) == "-25%"
    assert fmt_gap(gap_percent(1.0, 0.999)) == "+0%"
    assert fmt_gap(gap_percent(0.0, 3.0)) == "n/a"
    assert fmt_gap(gap_percent(float("nan"), 3.0)) == "n/a"


# --- tables --------------------------------------------------------------------------------------

def test_tables_escape_their_text() -> None:
    t = Table("a <b> & c", ["design", "p|99"], [["<script>alert(1)</script>", "1 | 2"]], caption="x < y")
    out = html_table(t)
    assert "<script>" not in out and "&lt;script&gt;" in out and "a &lt;b&gt; &amp; c" in out
    md = markdown_table(t)
    assert md.splitlines()[2] == "| design | p\\|99 |"
    assert md.splitlines()[4] == "| <script>alert(1)</script> | 1 \\| 2 |"


def test_result_table_per_load_point_has_every_design_with_ci_and_seed_count(tmp_path: Path) -> None:
    write_source(tmp_path, "sim", rows_for(BASE))
    report = build(tmp_path)
    assert [t.title for t in report.tables] == [f"Load {lp:g} of capacity (simulated)" for lp in LOADS]
    middle = report.tables[1]
    assert middle.columns == ["design", "quiet p99 / solo", "quiet p99 (ms)", "noisy p99 (ms)", "Jain index",
                              "goodput (rps)", "seeds"]
    assert [r[0] for r in middle.rows] == list(DESIGNS)
    wfq = middle.rows[2]
    expected_ci = Summary.of([1.1 * (1 + 0.02 * (seed - 2)) for seed in range(5)]).ci95
    assert wfq[1] == f"1.10x ± {expected_ci:.2f}"
    assert wfq[2] == f"33.0 ± {SOLO_MS * expected_ci:.1f}" and wfq[-1] == "5"


# --- the written report --------------------------------------------------------------------------

def test_html_is_one_self_contained_file(tmp_path: Path) -> None:
    write_source(tmp_path, "sim", rows_for(BASE))
    write_source(tmp_path, "live", rows_for({k: v for k, v in BASE.items() if k[1] == 0.5}, source="live", seeds=1))
    path = write_pattern_report("tenancy", tmp_path)
    assert path == tmp_path / "tenancy" / "index.html"
    page = path.read_text()
    assert 'src="http' not in page and "<link" not in page and "<script" not in page
    assert "url(" not in page  # no CSS-fetched assets either
    assert page.count('src="data:image/png;base64,') == 2
    assert "<style>" in page and tenancy.QUESTION.replace("'", "&#x27;") in page
    assert '<a href="../index.html">' in page  # back to every pattern
    assert "td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }" in page


def test_summary_md_and_json_lead_with_the_question_and_headline(tmp_path: Path) -> None:
    write_source(tmp_path, "sim", rows_for(BASE))
    write_pattern_report("tenancy", tmp_path)
    md = (tmp_path / "tenancy" / "summary.md").read_text().splitlines()
    summary = json.loads((tmp_path / "tenancy" / "summary.json").read_text())
    assert md[0] == f"# tenancy: {tenancy.QUESTION}"
    assert md[2] == summary["headline"]
    assert summary["headline"].startswith("wfq kept the quiet tenants closest to their solo latency")
    assert summary["sources"] == {"sim": True}


def test_conclusions_are_built_from_the_numbers(tmp_path: Path) -> None:
    write_source(tmp_path, "sim", rows_for(BASE))
    before = build(tmp_path).conclusions
    assert before[0] == ("wfq kept the quiet tenants closest to their solo latency at every load point tested "
                         "(0.3, 0.5 and 0.7): their p99 stayed between 1.05x and 1.30x of solo, against up to "
                         "90.0x under fifo (at load 0.7).")
    assert any(c.startswith("At load 0.5, wfq kept quiet tenants' p99 at 1.10x their solo p99 (95% CI ±")
               and "while fifo let it rise to 38.0x" in c for c in before)

    # Make bulkhead the best everywhere: the winner, the figures and the wording must follow.
    swapped = {**BASE, **{("bulkhead", lp): BASE[("wfq", lp)] * 0.5 for lp in LOADS}}
    write_source(tmp_path, "sim", rows_for(swapped))
    after = build(tmp_path).conclusions
    assert after != before
    assert after[0].startswith("bulkhead kept the quiet tenants closest") and "between 0.53x and 0.65x" in after[0]


def test_no_design_near_solo_is_said_plainly(tmp_path: Path) -> None:
    write_source(tmp_path, "sim", rows_for({("fifo", 0.7): 90.0, ("wfq", 0.7): 4.0}))
    conclusions = build(tmp_path).conclusions
    assert any(c.startswith("At load 0.7 no design kept quiet tenants within 1.5x of their solo p99: the best, "
                            "wfq, still reached 4.00x") for c in conclusions)


def test_overlapping_intervals_are_not_called_a_win(tmp_path: Path) -> None:
    close = {("bulkhead", 0.5): 1.12, ("wfq", 0.5): 1.10, ("fifo", 0.5): 38.0}
    write_source(tmp_path, "sim", rows_for(close, spread=0.2))
    conclusions = build(tmp_path).conclusions
    assert any("wfq (1.10x ±" in c and "bulkhead (1.12x ±" in c and "cannot separate them" in c
               for c in conclusions)


def test_a_missing_live_source_is_reported_not_a_crash(tmp_path: Path) -> None:
    write_source(tmp_path, "sim", rows_for(BASE))
    report = build(tmp_path)
    assert report.sim_vs_live is None and report.invariants is None
    assert "saaslab load tenancy --quick" in report.sim_vs_live_note
    assert "No live run" in report.invariants_note
    page = write_pattern_report("tenancy", tmp_path).read_text()
    assert "Measured (live): missing" in page
    assert f"run `saaslab load tenancy --out {tmp_path / 'tenancy'}` to produce it" in page


def test_live_only_still_reports_and_says_the_simulation_is_missing(tmp_path: Path) -> None:
    write_source(tmp_path, "live", rows_for({("fifo", 0.5): 30.0, ("wfq", 0.5): 1.2}, source="live", seeds=1))
    report = build(tmp_path)
    assert report.tables[0].title == "Load 0.5 of capacity (measured)"
    assert report.tables[0].rows[1][1] == "1.20x"  # one seed: no interval
    assert any("no simulation" in n.lower() for n in report.notes)
    assert "With a single seed per design there are no confidence intervals" in " ".join(report.conclusions)
    assert "Simulated: missing" in write_pattern_report("tenancy", tmp_path).read_text()


def test_no_source_at_all_says_which_command_to_run(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=rf"run `saaslab sim tenancy --out {tmp_path / 'tenancy'}` first"):
        write_pattern_report("tenancy", tmp_path)


def test_few_seeds_and_missing_metrics_are_flagged(tmp_path: Path) -> None:
    rows = [r for r in rows_for(BASE, seeds=2) if r.metric != "jain_index"]
    write_source(tmp_path, "sim", rows)
    report = build(tmp_path)
    assert any("used 2 seed(s)" in n for n in report.notes)
    assert any("no Jain index" in n for n in report.notes)
    assert all(row[4] == "n/a" for t in report.tables for row in t.rows)


def test_nan_ratios_give_honest_wording(tmp_path: Path) -> None:
    rows = [replace(r, value=float("nan")) if r.metric == "quiet_p99_vs_solo" else r
            for r in rows_for({("fifo", 0.5): 3.0, ("wfq", 0.5): 1.0})]
    write_source(tmp_path, "sim", rows)
    report = build(tmp_path)
    assert report.conclusions[0].startswith("No design's quiet-tenant p99 relative to solo could be computed")
    assert "could not be computed" in report.conclusions[1]
    assert report.tables[0].rows[0][1] == "n/a"
    write_pattern_report("tenancy", tmp_path)  # and the plots cope with it


def test_sim_versus_live_table_and_agreement(tmp_path: Path) -> None:
    write_source(tmp_path, "sim", rows_for(BASE))
    live = {("fifo", 0.5): 38.0 * 1.5, ("bulkhead", 0.5): 2.8 * 1.1, ("wfq", 0.5): 1.1 * 0.95}
    write_source(tmp_path, "live", rows_for(live, source="live", seeds=1))
    report = build(tmp_path)
    table = report.sim_vs_live
    assert table is not None
    by_key = {(r[0], r[1], r[2]): r for r in table.rows}
    assert len(table.rows) == 3 * 3
    assert by_key[("fifo", "0.5", "quiet p99 / solo")][4:] == ["57.0x", "+50%"]
    assert by_key[("wfq", "0.5", "quiet p99 / solo")][4:] == ["1.04x", "-5%"]
    assert by_key[("wfq", "0.5", "Jain index")][5] == "+0%"
    text = " ".join(report.conclusions)
    assert ("differ by up to 50% on quiet p99 vs solo (largest: fifo at load 0.5, simulated 38.0x, measured 57.0x); "
            "2 of 3 pairs are within 25%") in text
    assert "ranks the designs as the simulation does at load 0.5 (best first: wfq, bulkhead, fifo)" in text

    one_close = {**live, ("bulkhead", 0.5): 2.8 * 1.5}
    write_source(tmp_path, "live", rows_for(one_close, source="live", seeds=1))
    assert "; 1 of 3 pairs is within 25%." in " ".join(build(tmp_path).conclusions)

    close = {k: BASE[k] * 1.1 for k in live}
    write_source(tmp_path, "live", rows_for(close, source="live", seeds=1))
    assert "agree within 10% on quiet p99 vs solo for all 3 (design, load) pairs" in " ".join(build(tmp_path).conclusions)


def test_invariant_results_come_from_check_json(tmp_path: Path) -> None:
    write_source(tmp_path, "sim", rows_for(BASE))
    checks = [{"name": "isolation", "valid": True, "checked": 1200, "violations": 0, "examples": [], "detail": ""},
              {"name": "no_lost_ops", "valid": False, "checked": 900, "violations": 3,
               "examples": [{"index": 7}], "detail": "3 invokes never completed"}]
    write_source(tmp_path, "live", rows_for({("wfq", 0.5): 1.1}, source="live", seeds=1), checks=checks)
    report = build(tmp_path)
    assert report.invariants is not None
    assert report.invariants.rows == [["isolation", "yes", "1200", "0", ""],
                                      ["no_lost_ops", "NO", "900", "3", "3 invokes never completed"]]
    assert "1 of 2 invariant checks failed on the live history, a problem: no_lost_ops (3 violations)." in report.conclusions

    write_source(tmp_path, "live", rows_for({("wfq", 0.5): 1.1}, source="live", seeds=1), checks=checks[:1])
    assert "The invariant check isolation held on the live history (1,200 items checked)." in build(tmp_path).conclusions

    write_source(tmp_path, "live", rows_for({("wfq", 0.5): 1.1}, source="live", seeds=1), checks=[checks[0]] * 2)
    assert "All 2 invariant checks held on the live history (2,400 items checked)." in build(tmp_path).conclusions


def test_check_json_may_be_the_checkers_envelope(tmp_path: Path) -> None:
    write_source(tmp_path, "sim", rows_for(BASE))
    envelope = {"pattern": "tenancy", "valid": True, "results": [
        {"name": "isolation", "valid": True, "checked": 5, "violations": 0, "examples": [], "detail": "ok"}]}
    write_source(tmp_path, "live", rows_for({("wfq", 0.5): 1.1}, source="live", seeds=1), checks=envelope)
    report = build(tmp_path)
    assert report.invariants is not None and report.invariants.rows == [["isolation", "yes", "5", "0", "ok"]]


def test_live_run_caveats_are_noted(tmp_path: Path) -> None:
    write_source(tmp_path, "sim", rows_for(BASE))
    live = rows_for({("fifo", 0.5): 40.0, ("wfq", 0.5): 1.2}, source="live", seeds=1)
    health = [Row("tenancy-live-test", "live", "tenancy", "fifo", 0, 0.5, ALL_TENANTS, metric, value, unit)
              for metric, value, unit in (("sent_rate", 40.0, "rps"), ("target_rate", 50.0, "rps"),
                                          ("dropped", 12, "requests"), ("errors", 0, "requests"))]
    health += [Row("tenancy-live-test", "live", "tenancy", "wfq", 0, 0.5, ALL_TENANTS, metric, value, unit)
               for metric, value, unit in (("sent_rate", 49.5, "rps"), ("target_rate", 50.0, "rps"))]
    parameters = {"load_points": [0.5], "seed": 1, "solo_workload": {"duration_s": 6.0},
                  "workload": {"duration_s": 10.0, "burst_start_s": 3.0, "burst_length_s": 4.0}}
    write_source(tmp_path, "live", live + health, parameters=parameters)
    report = build(tmp_path)
    assert report.notes == [
        "The live run's burst (t=3 s for 4 s of 10 s) differs from the simulated one (t=5 s for 5 s of 15 s), so "
        "part of any gap comes from the workload, not the model.",
        "Live fifo at load 0.5: the load generator sent only 40.0 of 50.0 requests/s and dropped 12 arrivals, so "
        "the measured latencies describe the traffic actually sent."]
    assert report.workload[-1] == "Live run: load points 0.5; burst from t=3 s for 4 s of a 10 s run; solo baseline 6 s; seed 1."


def test_live_run_without_check_json_says_how_to_get_it(tmp_path: Path) -> None:
    write_source(tmp_path, "sim", rows_for(BASE))
    write_source(tmp_path, "live", rows_for({("wfq", 0.5): 1.1}, source="live", seeds=1))
    report = build(tmp_path)
    assert report.invariants is None and "has no check.json" in report.invariants_note


# --- the index -----------------------------------------------------------------------------------

def test_index_links_each_report_relatively_with_its_headline(tmp_path: Path) -> None:
    write_source(tmp_path, "sim", rows_for(BASE))
    write_pattern_report("tenancy", tmp_path)
    (tmp_path / "bench").mkdir()
    page = write_index(tmp_path).read_text()
    assert '<a href="tenancy/index.html">tenancy</a>' in page
    assert '<a href="bench/">' in page
    headline = json.loads((tmp_path / "tenancy" / "summary.json").read_text())["headline"]
    assert headline.replace("'", "&#x27;") in page
    assert str(tmp_path) not in page


def test_index_with_no_reports_says_how_to_make_them(tmp_path: Path) -> None:
    (tmp_path / "tenancy" / "sim").mkdir(parents=True)  # a run folder without a report is not listed
    page = write_index(tmp_path).read_text()
    assert "No pattern reports yet" in page and 'href="tenancy' not in page and "Benchmarks" not in page


def test_every_registered_pattern_is_listed_with_its_question(tmp_path: Path) -> None:
    write_source(tmp_path, "sim", rows_for(BASE))
    write_pattern_report("tenancy", tmp_path)
    page = write_index(tmp_path).read_text()
    for slug, declared in patterns.REGISTRY.items():
        assert f"{slug}</a>: {declared.title}" in page or f"{slug}: {declared.title}" in page
        assert declared.question.replace("'", "&#x27;") in page
    assert page.count('href="') - page.count('summary.md"') == 1  # only the written report is linked
    assert "No report yet: run `saaslab sim ratelimit`, then `saaslab report ratelimit`." in page


# --- the answer and the headline plot ------------------------------------------------------------

def test_the_report_opens_with_its_headline_plot_and_an_answer_of_at_most_five_sentences(tmp_path: Path) -> None:
    write_source(tmp_path, "sim", rows_for(BASE))
    write_source(tmp_path, "live", rows_for({k: v for k, v in BASE.items() if k[1] == 0.5}, source="live", seeds=1),
                 checks=[{"name": "isolation", "valid": True, "checked": 5, "violations": 0, "examples": [],
                          "detail": ""}])
    report = build(tmp_path)
    assert report.answer[0] == report.headline
    assert len(split_sentences(" ".join(report.answer))) <= 5
    assert all(s in " ".join(report.conclusions) for s in report.answer)
    assert report.headline_figure is not None
    assert report.figures[report.headline_figure].title == "Quiet tenants' p99 relative to solo"
    page = write_pattern_report("tenancy", tmp_path).read_text()
    first_plot, answer = page.index("<figure>"), page.index("<h2>Answer</h2>")
    assert first_plot < answer < page.index("<h2>Conclusions</h2>") < page.index("<h2>Results</h2>")
    assert page[first_plot:answer].count("data:image/png") == 1 and page.count("data:image/png") == 2
    md = (tmp_path / "tenancy" / "summary.md").read_text().splitlines()
    assert md[2] == report.headline and md[4] == " ".join(report.answer[1:])


# --- the load generator's send lag ----------------------------------------------------------------

def _lag(design: str, lp: float, ms: float) -> Row:
    return Row("tenancy-live-test", "live", "tenancy", design, 0, lp, ALL_TENANTS, "send_lag_p99", ms, "ms")


def test_send_lag_stands_beside_the_live_latencies_and_flags_those_it_weighs_on(tmp_path: Path) -> None:
    write_source(tmp_path, "sim", rows_for(BASE))
    live = rows_for({("wfq", 0.5): 1.1, ("fifo", 0.5): 38.0}, source="live", seeds=1)
    write_source(tmp_path, "live", [*live, _lag("wfq", 0.5, 5.0), _lag("fifo", 0.5, 5.0)])
    report = build(tmp_path)
    assert report.send_lag is not None
    rows = {(r[0], r[2]): r[3:] for r in report.send_lag.rows}
    # wfq's quiet p99 is 33 ms: 5 ms of lag is more than a tenth of it; fifo's is 1,140 ms.
    assert rows[("wfq", "quiet p99")] == ["33.0 ms", "5.00 ms", "15.2%", "FLAGGED"]
    assert rows[("fifo", "quiet p99")][-1] == "" and rows[("wfq", "noisy p99")][-1] == ""
    lag = next(c for c in report.conclusions if c.startswith("The load generator's send lag p99 was 5.00 ms"))
    assert "exceeds a tenth of 1 of 4 measured latencies: wfq at load 0.5 (quiet p99 33.0 ms, lag 5.00 ms)" in lag
    assert lag in report.answer and len(split_sentences(" ".join(report.answer))) <= 5
    assert "The load generator&#x27;s send lag beside the measured latencies" in (
        write_pattern_report("tenancy", tmp_path).read_text())

    write_source(tmp_path, "live", [*live, _lag("wfq", 0.5, 1.0), _lag("fifo", 0.5, 1.0)])
    report = build(tmp_path)
    assert ("The load generator's send lag p99 was 1.00 ms, under a tenth of every measured latency shown, so those "
            "latencies are the service's.") in report.conclusions
    assert not any("send lag" in s for s in report.answer)


def test_a_live_run_without_send_lag_says_it_was_not_recorded_and_by_whom(tmp_path: Path) -> None:
    write_source(tmp_path, "sim", rows_for(BASE))
    write_source(tmp_path, "live", rows_for({("wfq", 0.5): 1.1}, source="live", seeds=1))
    report = build(tmp_path)
    assert report.send_lag is not None and {r[4] for r in report.send_lag.rows} == {"not recorded"}
    assert ("The load generator's send lag was not recorded (saaslab.live.tenancy does not emit send_lag_p99), so the "
            "measured latencies cannot be told apart from the generator's own delay.") in report.conclusions


def test_a_simulation_alone_has_no_send_lag(tmp_path: Path) -> None:
    write_source(tmp_path, "sim", rows_for(BASE))
    report = build(tmp_path)
    assert report.send_lag is None and not any("send lag" in c for c in report.conclusions)


def _worker_rows(design: str, worker: int, *, sent_rps: float, target_rps: float, lag_ms: float) -> list[Row]:
    def row(metric: str, value: float, unit: str) -> Row:
        return Row("tenancy-live-test", "live", "tenancy", design, 0, 0.5, f"worker-{worker}", metric, value, unit)

    return [row("sent_rate", sent_rps, "rps"), row("target_rate", target_rps, "rps"),
            row("send_lag_p99", lag_ms, "ms")]


def test_the_setup_names_each_load_generator_process_its_share_and_its_send_lag(tmp_path: Path) -> None:
    write_source(tmp_path, "sim", rows_for(BASE))
    live = rows_for({("wfq", 0.5): 1.1, ("fifo", 0.5): 38.0}, source="live", seeds=1)
    aggregate = [Row("tenancy-live-test", "live", "tenancy", d, 0, 0.5, ALL_TENANTS, m, v, "rps")
                 for d in ("wfq", "fifo") for m, v in (("sent_rate", 99.5), ("target_rate", 100.0))]
    workers = [*_worker_rows("wfq", 0, sent_rps=50.0, target_rps=50.0, lag_ms=1.5),
               *_worker_rows("wfq", 1, sent_rps=49.5, target_rps=50.0, lag_ms=30.0),
               *_worker_rows("fifo", 0, sent_rps=50.0, target_rps=50.0, lag_ms=2.0),
               *_worker_rows("fifo", 1, sent_rps=49.0, target_rps=50.0, lag_ms=3.0)]
    write_source(tmp_path, "live", [*live, _lag("wfq", 0.5, 1.0), _lag("fifo", 0.5, 1.0), *aggregate, *workers])
    report = build(tmp_path)
    assert ("Load generator: 2 Locust processes (Locust's distributed mode), each sending one in every 2 arrivals of "
            "the one seeded schedule from a common start; over 2 runs, worker-0 sent 100.0% of its share's rate, send "
            "lag p99 at most 2.00 ms; worker-1 sent 98.0% to 99.0% of its share's rate, send lag p99 at most 30.0 ms; "
            "all together 99.5% of the target rate.") in report.workload
    # A worker's lag is its own row: the run's lag, which the latencies are judged against, stays the merged one.
    assert {r[4] for r in report.send_lag.rows} == {"1.00 ms"}  # type: ignore[union-attr]
    assert not any("worker-" in " ".join(r) for t in report.tables for r in t.rows)


def test_a_live_run_of_one_process_names_it_without_a_split() -> None:
    from saaslab.report import RunData
    from saaslab.report.evidence import generator_line

    run = RunData("live", Path("."), _worker_rows("fifo", 0, sent_rps=99.0, target_rps=100.0, lag_ms=1.25), {})
    assert generator_line(run) == ("Load generator: 1 Locust process; over 1 run, worker-0 sent 99.0% of its share's "
                                   "rate, send lag p99 at most 1.25 ms.")
    assert generator_line(RunData("live", Path("."), [], {})) is None
