"""A quick live sagas run against real services: Locust checkouts with crashes, the databases read back, the
checker passing (the unsafe design failing the same checks is tests/integration/test_sagas_designs.py's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_impl.sagas.invariants import check_run
from saaslab import patterns
from saaslab.results import ALL_TENANTS, read_rows
from saaslab.settings import Settings

pytestmark = pytest.mark.e2e


def test_a_quick_live_run_ends_every_saga_and_passes_the_checker(own_settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "sagas"
    csv_path = patterns.get("sagas").module("live").run(own_settings, out, quick=True, duration=4.0, rate=15.0)
    rows = {(r.design, r.metric): r.value for r in read_rows(csv_path) if r.tenant == ALL_TENANTS}
    assert rows[("orchestration", "orders")] > 30
    assert rows[("orchestration", "pending_after")] == 0
    assert rows[("orchestration", "anomalies_per_10k")] == 0
    assert 0 < rows[("orchestration", "share_compensated")] < 1
    results = check_run(out)  # what `saaslab check sagas --out OUT` runs, from the files alone
    assert results and all(r.valid for r in results), [r for r in results if not r.valid]
    assert (out / "live" / "check.json").exists()
