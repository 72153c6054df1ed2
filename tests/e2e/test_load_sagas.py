"""A quick live sagas run against real services: Locust checkouts with crashes for every safe design, the
databases read back, the checker passing (the unsafe design failing the same checks is
tests/integration/test_sagas_designs.py's), and the rows the report reads under the simulation's names."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from reference_impl.sagas.invariants import check_run
from saaslab import patterns
from saaslab.results import ALL_TENANTS, read_rows
from saaslab.settings import Settings
from scenarios.sagas.plan import SETUP, capacity_rps

pytestmark = pytest.mark.e2e
RATE = 15.0


def test_a_quick_live_run_ends_every_saga_and_passes_the_checker(own_settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "sagas"
    csv_path = patterns.get("sagas").module("live").run(own_settings, out, quick=True, duration=4.0, rate=RATE)
    rows = {(r.design, r.metric): r for r in read_rows(csv_path) if r.tenant == ALL_TENANTS}
    params = json.loads((csv_path.parent / "run.json").read_text())["parameters"]
    designs = params["designs"]
    assert set(designs) | set(params["skipped"]) == {"orchestration", "choreography", "twopc"}
    assert set(params["skipped"]) <= {"twopc"}  # only where the server cannot prepare transactions
    assert params["failure_rate"] == 0 and params["crash_rate"] > 0
    for d in designs:
        value = {m: r.value for (design, m), r in rows.items() if design == d}
        assert value["orders"] > 30, d
        assert value["unfinished"] == 0, d
        assert value["anomalies_per_10k"] == 0, d
        assert 0 < value["compensated_share"] + value["failed_share"] < 1, d  # stock ran out, cards declined
        assert value["latency_p50"] <= value["latency_p99"], d
        assert rows[(d, "orders")].load_point == pytest.approx(RATE / capacity_rps(SETUP), abs=1e-3)
    assert rows[("choreography", "events_per_saga")].value >= 1  # every order's first event at least
    if "twopc" in designs:
        hold, doubt = rows[("twopc", "lock_hold_p99")].value, rows[("twopc", "in_doubt_p99")].value
        assert not math.isnan(doubt) and 0 < doubt <= hold
    results = check_run(out)  # what `saaslab check sagas --out OUT` runs, from the files alone
    assert results and all(r.valid for r in results), [r for r in results if not r.valid]
    assert (out / "live" / "check.json").exists()
