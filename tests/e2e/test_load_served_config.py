"""`saaslab load tenancy --host`: the run models the service it measures, or refuses in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from saaslab.launch import launched
from saaslab.live import tenancy
from saaslab.services import ServiceError
from saaslab.settings import Settings
from scenarios import tenancy as scenario

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SAASLAB_")},
           "SAASLAB_DATABASE_URL": settings.database_url or "", "SAASLAB_REDIS_URL": settings.redis_url or "",
           "SAASLAB_ADMIN_TOKEN": settings.admin_token or "", "COLUMNS": "300"}
    return subprocess.run([sys.executable, "-m", "saaslab.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_service_with_other_slots_is_refused_in_one_line(settings: Settings, tmp_path: Path) -> None:
    with launched(settings.model_copy(update={"lab_mode": True, "scheduler_slots": 8}),
                  log_path=tmp_path / "service.log") as svc:
        done = _cli(settings, "load", "tenancy", "--host", svc.url, "--quick", "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stdout + done.stderr
    said = (done.stdout + done.stderr).strip()
    assert said.count("\n") == 0, said
    assert "scheduler_slots=8" in said and "SAASLAB_SCHEDULER_SLOTS=4" in said
    assert not (tmp_path / "out" / "live" / "run.json").exists()


def test_a_service_without_lab_mode_is_refused(settings: Settings, tmp_path: Path) -> None:
    with launched(settings.model_copy(update={"scheduler_slots": scenario.SLOTS}),
                  log_path=tmp_path / "service.log") as svc, \
            pytest.raises(ServiceError, match="SAASLAB_LAB_MODE=1"):
        tenancy.run(settings, tmp_path / "out", quick=True, host=svc.url)


def test_a_modelled_service_runs_its_own_scheduler_and_run_json_records_its_settings(
        settings: Settings, tmp_path: Path) -> None:
    served = {"lab_mode": True, "scheduler_slots": scenario.SLOTS, "scheduler": "wfq",
              "bulkhead_per_tenant": 3}  # the cap only binds the bulkhead design, so it is no reason to refuse
    out = tmp_path / "out"
    # The harness's own settings say fifo: the service's wfq is what runs and what is recorded.
    mine = settings.model_copy(update={"scheduler": "fifo"})
    with launched(settings.model_copy(update=served), log_path=tmp_path / "service.log") as svc:
        tenancy.run(mine, out, quick=True, host=svc.url, duration=3.0)
    parameters = json.loads((out / "live" / "run.json").read_text())["parameters"]
    assert parameters["designs"] == ["wfq"]
    assert {k: parameters["served"][k] for k in served} == served
    assert parameters["slots"] == parameters["served"]["scheduler_slots"]
    assert "admin_token" not in parameters["served"] and "database_url" not in parameters["served"]
