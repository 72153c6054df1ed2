"""A quick live sharding run on real shard servers: Locust writers and readers on Zipf tenants while one tenant
moves and the hottest is isolated; every shard read back; the checker passes for the fenced mover and catches
the unsafe one in the same harness."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_impl.sharding.invariants import check_run
from saaslab import patterns
from saaslab.results import ALL_TENANTS, read_rows
from saaslab.settings import Settings

pytestmark = pytest.mark.e2e


def test_a_quick_live_run_moves_and_isolates_without_loss_and_the_unsafe_mover_is_caught(
        own_settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "sharding"
    settings = own_settings.model_copy(update={"state_dir": tmp_path / "state"})
    csv_path = patterns.get("sharding").module("live").run(settings, out, quick=True, duration=4.0, rate=60.0,
                                                           unsafe=True)
    rows = {(r.design, r.metric): r.value for r in read_rows(csv_path) if r.tenant == ALL_TENANTS}
    assert rows[("fenced", "requests")] > 150
    assert rows[("fenced", "lost_writes")] == 0 and rows[("fenced", "anomalies")] == 0
    assert rows[("fenced", "write_blocked_ms")] > 0 and rows[("fenced", "moved_rows")] > 0
    assert rows[("fenced", "isolate_write_blocked_ms")] > 0
    assert rows[("directory", "load_max_over_mean")] > 1
    results = check_run(out)  # what `saaslab check sharding --out OUT` runs, from the files alone
    assert results and all(r.valid for r in results), [r for r in results if not r.valid]

    unsafe = {r.name: r for r in check_run(out / "unsafe")}
    assert not unsafe["acknowledged_writes_once"].valid, unsafe["acknowledged_writes_once"]
    unsafe_rows = {r.metric: r.value for r in read_rows(out / "unsafe" / "live" / "results.csv")
                   if r.design == "unsafe"}
    assert unsafe_rows["write_blocked_ms"] == 0 and unsafe_rows["anomalies"] > 0
