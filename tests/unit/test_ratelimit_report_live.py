"""The rate-limiting report's live-run sentences: the same seed, the live race, setups that differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_ratelimit_report import SIM_PARAMETERS, live_rows, report_for, sim_rows, write

LIVE_PARAMETERS: dict[str, Any] = {
    "policy": {"requests": 100, "window_s": 1.0}, "duration_s": 10.0, "workers": 2, "seed": 0,
    "race": {"policy": {"requests": 50, "window_s": 3600.0}, "requests": 200,
             "results": {"gcra": {"admitted": 50, "no_over_admission": True},
                         "sliding_log": {"admitted": 50, "no_over_admission": True},
                         "naive": {"admitted": 187, "no_over_admission": False}}},
}


def test_the_live_seed_the_race_and_a_like_for_like_setup(tmp_path: Path) -> None:
    write(tmp_path, "sim", sim_rows(), SIM_PARAMETERS)
    # The simulated noisy tenant is refused 50% at load 2 and 90% at load 10 in every seed.
    write(tmp_path, "live", live_rows({("gcra", 2.0): (0.5, 20.0), ("gcra", 10.0): (0.89, 30.0)}), LIVE_PARAMETERS)
    report = report_for(tmp_path)
    text = " ".join(report.conclusions)
    assert ("Against the simulation of the very schedule the live run replayed (seed 0), the noisy tenant's measured "
            "429 rate differed by at most 1.0 pp over 2 cells (gcra at load 10: simulated 90.0%, measured 89.0%).") in text
    assert ("Live, 200 requests of one tenant sent at once across 2 service workers at a limit of 50: sliding_log and "
            "gcra admitted exactly 50; naive admitted 187 (no_over_admission failed).") in text
    assert not [n for n in report.notes if "like for like" in n or "lasted" in n]


def test_a_live_run_under_another_policy_or_duration_says_so(tmp_path: Path) -> None:
    write(tmp_path, "sim", sim_rows(), {**SIM_PARAMETERS, "neighbour_policy": {"requests": 100, "window_s": 5.0}})
    write(tmp_path, "live", live_rows({("gcra", 2.0): (0.5, 20.0)}), {**LIVE_PARAMETERS, "duration_s": 30.0})
    notes = report_for(tmp_path).notes
    assert ("The live run's policy (100 per 1 s) differs from the simulated noisy neighbour's (100 per 5 s), so their "
            "429 rates are not like for like.") in notes
    assert any(n.startswith("The live runs lasted 30 s and the simulated noisy neighbour 10 s") for n in notes)
