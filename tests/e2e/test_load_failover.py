"""A quick live failover run: the service pointed at a real cluster, Locust writing through it while the primary
is killed. Every answer is a success or a 503 with Retry-After, writes succeed again after the switch without a
service restart, the sync design loses nothing, and the rows carry the report's names and conditions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saaslab import patterns
from saaslab.results import ALL_TENANTS, read_rows
from saaslab.settings import Settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_a_quick_live_run_rides_through_a_kill(own_settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "failover"
    csv_path = patterns.get("failover").module("live").run(own_settings, out, quick=True, duration=8.0, rate=60.0)
    live = csv_path.parent
    rows = {r.metric: r.value for r in read_rows(csv_path) if r.tenant == ALL_TENANTS and r.design == "sync"}
    value = {m.split("@")[0]: v for m, v in rows.items()}
    assert all(m.endswith("@kill/lab") for m in rows), sorted(rows)
    assert value["writes_acknowledged"] > 100
    assert value["writes_lost"] == 0 and value["split_brain_writes"] == 0
    assert value["errors"] == 0 and value["timeouts"] == 0  # 2xx, a probe's 404, or 503 with Retry-After
    assert value["responses_503"] > 0  # the switch was seen...
    assert value["recovered"] == 1  # ...and writes sent after the fault were acknowledged by the same service
    assert 1.0 <= value["failover_s"] <= 8.0 and 0 < value["unavailability"] < 10.0
    assert value["stale_reads"] == 0
    checks = json.loads((live / "check.json").read_text())
    assert checks and all(c["valid"] for c in checks), [c for c in checks if not c["valid"]]
    again = patterns.get("failover").module("live").check_run(out)  # `saaslab check failover`, from the files
    assert [(c.name, c.valid, c.checked) for c in again] == [(c["name"], c["valid"], c["checked"]) for c in checks]
    drill = json.loads((live / "drills.json").read_text())[0]
    assert set(drill["statuses"]) <= {"200", "201", "404", "503"}, drill["statuses"]
    before, after = drill["topology"]["before"]["postgres"], drill["topology"]["after"]["postgres"]
    assert (before["primary"], before["timeline"]) == ("n0", 1)
    assert after["primary"] == drill["new_primary"] == "n1" and after["timeline"] == 2
    params = json.loads((live / "run.json").read_text())["parameters"]
    assert params["fault"] == "kill" and params["timers"] == "lab"
