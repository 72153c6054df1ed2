"""One results folder: the CLI's `--out` and default, the report engine and the notebooks resolve it the same way
(SAASLAB_RESULTS_DIR, default the project's reports/); the notebooks' few-seeds flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from saaslab import cli
from saaslab.report import Summary, load_pattern, write_pattern_report
from saaslab.report.data import command
from saaslab.report.notebook import error_bar, report_data, results_dir, run_line, seeds_sentence, shown
from saaslab.results import ALL_TENANTS, Row, write_run
from saaslab.settings import Settings

PROJECT = Path(__file__).resolve().parents[2]


def _sim_run(folder: Path) -> None:
    rows = [Row("tenancy-sim-test", "sim", "tenancy", "fifo", seed, 0.5, ALL_TENANTS, "quiet_p99_vs_solo", 2.0, "ratio")
            for seed in range(5)]
    write_run(folder / "sim", run_id="tenancy-sim-test", pattern="tenancy", source="sim", rows=rows, parameters={})


def test_the_default_is_the_projects_reports_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAASLAB_RESULTS_DIR", raising=False)
    assert Settings().results_dir == PROJECT / "reports"
    assert results_dir() == PROJECT / "reports"
    assert cli._out_dir(None, "tenancy", False, "sim") == PROJECT / "reports" / "tenancy"


def test_the_cli_and_the_notebooks_read_one_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAASLAB_RESULTS_DIR", str(tmp_path))
    assert results_dir() == tmp_path
    for verb in ("sim", "load", "check", "report"):
        assert cli._out_dir(None, "tenancy", False, verb) == results_dir() / "tenancy"
    assert cli._out_dir(None, "tenancy", True, "sim") == tmp_path / "tenancy"
    _sim_run(tmp_path / "tenancy")
    data = report_data("tenancy")  # the notebooks' default: the same folder
    assert data.directory == tmp_path / "tenancy" and data.sim is not None and data.live is None
    assert command("sim", "tenancy", tmp_path / "tenancy") == "saaslab sim tenancy"


@pytest.mark.parametrize(("verb", "out", "expected"), [
    ("sim", "x", "x"),
    ("sim", "x/sim", "x"),  # the run's own folder: x/sim/results.csv, not x/sim/sim/
    ("load", "x/live", "x"),
    ("check", "x/live", "x"),
    ("report", "x/sim", "x"),
    ("report", "x/live", "x"),
])
def test_out_is_the_patterns_results_folder(tmp_path: Path, verb: str, out: str, expected: str) -> None:
    assert cli._out_dir(tmp_path / out, "tenancy", False, verb) == tmp_path / expected


@pytest.mark.parametrize(("verb", "out", "many"), [
    ("sim", "x/live", False), ("load", "x/sim", False), ("check", "x/sim", False), ("sim", "x/sim", True),
])
def test_out_naming_the_other_run_folder_is_refused_with_the_fix(tmp_path: Path, verb: str, out: str,
                                                                  many: bool) -> None:
    with pytest.raises(cli.UserError, match=rf"try --out {tmp_path / 'x'}$"):
        cli._out_dir(tmp_path / out, "tenancy", many, verb)


def test_a_report_in_any_folder_reads_its_runs_and_names_the_commands_for_it(tmp_path: Path) -> None:
    folder = tmp_path / "somewhere"
    _sim_run(folder)
    assert load_pattern("tenancy", directory=folder).directory == folder
    page = write_pattern_report("tenancy", directory=folder).read_text()
    assert f"run `saaslab load tenancy --out {folder}`" in page
    assert "../index.html" not in page  # not a <results>/<pattern>/ folder: no index beside it
    named = tmp_path / "tenancy"
    _sim_run(named)
    assert "../index.html" in write_pattern_report("tenancy", tmp_path).read_text()


def test_fewer_than_five_seeds_are_said_in_a_sentence_and_shown_without_intervals() -> None:
    assert seeds_sentence(range(5)) is None and seeds_sentence(7) is None
    sentence = seeds_sentence(range(3))
    assert sentence is not None and sentence.startswith("3 seed(s) per cell: fewer than the 5")
    assert "SEEDS = range(5)" in sentence
    three, five = Summary.of([1.0, 2.0, 3.0]), Summary.of([1.0, 2.0, 3.0, 2.0, 2.0])
    assert shown(three, "x") == "2.00x" and error_bar(three) == 0.0
    assert shown(five, "x").startswith("2.00x ± ") and error_bar(five) == five.ci95 > 0


def test_a_run_is_named_by_its_id_and_date(tmp_path: Path) -> None:
    _sim_run(tmp_path / "tenancy")
    run = load_pattern("tenancy", tmp_path).sim
    assert run is not None
    line = run_line(run)
    assert line.startswith("simulation tenancy-sim-test of 20") and " UTC, in " in line


def test_check_knows_a_run_of_the_unsafe_design_alone(tmp_path: Path) -> None:
    from saaslab.patterns import REGISTRY

    ratelimit = REGISTRY["ratelimit"]
    for designs, alone in ((["naive"], True), (["gcra", "naive"], False), (["gcra"], False)):
        write_run(tmp_path / "live", run_id="r", pattern="ratelimit", source="live", rows=[],
                  parameters={"designs": designs})
        assert cli._unsafe_only(ratelimit, tmp_path) is alone
    assert not cli._unsafe_only(ratelimit, tmp_path / "nothing")
