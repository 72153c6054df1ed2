"""Warning boxes and the invariants sentence say whether what they show is expected of the run or a problem."""

from __future__ import annotations

from pathlib import Path

from saaslab.history import CheckResult
from saaslab.report import Expected, PatternData, Report, RunData, render_html, render_markdown
from saaslab.report.evidence import checks_sentence


def _live(checks: list[CheckResult]) -> RunData:
    return RunData(source="live", directory=Path("reports/idempotency/live"), rows=[], meta={}, checks=checks)


def test_a_note_says_whether_it_is_expected_or_a_problem() -> None:
    report = Report(pattern="idempotency", question="?", designs={}, workload=[], conclusions=["c."],
                    notes=[Expected("The live plan injects worker crashes on purpose."), "The simulation used 2 seeds."])
    data = PatternData("idempotency", Path("reports/idempotency"), sim=None, live=None)
    page = render_html(report, data, "now")
    assert '<p class="note expected"><b>Expected:</b> The live plan injects worker crashes on purpose.</p>' in page
    assert '<p class="note"><b>Problem:</b> The simulation used 2 seeds.</p>' in page
    md = render_markdown(report, data, "now")
    assert "- **Expected:** The live plan injects worker crashes on purpose." in md
    assert "- **Problem:** The simulation used 2 seeds." in md


def test_the_unsafe_design_caught_is_expected_and_not_caught_is_a_problem() -> None:
    caught = _live([CheckResult("exactly_one_effect[none]", False, 100, 7),
                    CheckResult("exactly_one_effect[postgres]", True, 100)])
    assert checks_sentence(caught, "none") == (
        "On the live history the checker caught the deliberately unsafe none design, as expected: "
        "exactly_one_effect[none] (7 violations) failed. The other 1 invariant checks held (200 items checked in all).")
    missed = _live([CheckResult("exactly_one_effect[none]", True, 100),
                    CheckResult("exactly_one_effect[postgres]", False, 100, 2)])
    said = checks_sentence(missed, "none")
    assert said is not None and "unsafe none design held on the live history, a problem" in said
    assert "1 of 2 invariant checks failed on the live history on designs meant to be safe, a problem: " \
           "exactly_one_effect[postgres] (2 violations)." in said
    assert checks_sentence(_live([CheckResult("isolation", True, 5), CheckResult("lost", True, 5)]), "leaky") == (
        "All 2 invariant checks held on the live history (10 items checked).")
