"""Load beyond one process: Locust's distributed mode shares one open-model schedule between workers.

Through the harness (`saaslab load PATTERN --processes N`), and as plain Locust with a master and a worker
started apart, as on two hosts (the README's commands): the worker gets the run from the master, not a file.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from loadtests.common.openmodel import shard
from loadtests.common.runconfig import OPTION, LoadRun
from reference_impl.tenancy.invariants import check
from saaslab.history import load
from saaslab.launch import ROOT, launched
from saaslab.live.harness import run_locust, service
from saaslab.live.tenancy import read_state
from saaslab.settings import Settings
from scenarios import tenancy as scenario
from scenarios.kernel.workload import arrivals

pytestmark = pytest.mark.e2e

WORKLOAD = {"duration_s": 3.0, "burst": False}
"""Three seconds of the noisy neighbour's traffic at load point 0.5, without its burst: short, and within capacity."""


def _schedule() -> list[tuple[int, str]]:
    return arrivals(scenario.noisy_neighbour(0.5, **WORKLOAD), seed=1)


def test_two_processes_share_the_schedule_hold_its_rate_and_both_land_in_the_history(settings: Settings,
                                                                                     tmp_path: Path) -> None:
    token = secrets.token_urlsafe(16)
    with service(settings, token=token, overrides={"scheduler": "fifo", "scheduler_slots": scenario.SLOTS},
                 log_path=tmp_path / "service.log") as svc:
        run = run_locust(svc.url, "tenancy", "NoisyNeighbour", token=token, processes=2, budget_s=15,
                         run=LoadRun(label="dist", load_point=0.5, seed=1, workload=WORKLOAD), logs=tmp_path)
        state = read_state(svc.url, run.api_keys)

    schedule = _schedule()
    merged = run.open_model()
    assert merged.scheduled == len(schedule)
    assert merged.sent == pytest.approx(len(schedule), rel=0.02) and merged.dropped == 0
    assert merged.sent_rate == pytest.approx(merged.target_rate, rel=0.02)
    assert merged.target_rate == pytest.approx(len(schedule) / WORKLOAD["duration_s"])

    # Each worker sent its own share: every other arrival of the one schedule, at half the rate.
    workers = run.open_model_by_worker()
    assert set(workers) == {0, 1}
    for index, result in workers.items():
        share = shard(schedule, index, 2)
        assert result.scheduled == len(share)
        assert dict(Counter(t for _, t in share)) == {t: c.offered for t, c in result.tenants.items() if c.offered}
        assert result.send_lag.count == result.sent

    # The merged history holds both workers' operations, every send of each, and the checker judges it whole.
    reads = Counter(op.process.rsplit("-", 1)[-1] for op in run.history if op.type == "invoke" and op.f == "get_project")
    assert reads == {f"w{i}": workers[i].sent for i in (0, 1)}
    assert all(r.valid for r in check(run.history, state))


def test_a_master_and_a_worker_started_apart_run_the_masters_run(own_settings: Settings, tmp_path: Path) -> None:
    """The README's two commands on one machine: the worker, in a folder of its own where the run file's path
    (relative, as the master was given it) names nothing, runs the master's run (its workload, seed and output
    folder), and the master ends when it is done."""
    master_dir, worker_dir = tmp_path / "here", tmp_path / "there"
    master_dir.mkdir()
    worker_dir.mkdir()
    LoadRun(label="apart", load_point=0.5, seed=1, workload=WORKLOAD, out_dir=Path("out")).write(
        master_dir / "run.json")
    port = 5557 + secrets.randbelow(2000)
    with launched(own_settings.model_copy(update={"lab_mode": True})) as svc:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SAASLAB_")},
               "SAASLAB_ADMIN_TOKEN": svc.token, "PYTHONPATH": str(ROOT)}
        locust = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "tenancy.py")]
        master = subprocess.Popen([*locust, "--master", "--master-bind-port", str(port), "--expect-workers", "1",
                                   "--headless", "-u", "1", "-r", "1", "--run-time", "40s", "--host", svc.url,
                                   OPTION, "run.json", "NoisyNeighbour"],
                                  cwd=master_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        worker = subprocess.Popen([*locust, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
                                  cwd=worker_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            master_out, _ = master.communicate(timeout=60)
            worker_out, _ = worker.communicate(timeout=15)
        finally:
            for proc in (master, worker):
                proc.kill()
    assert master.returncode == 0, master_out[-3000:]
    assert worker.returncode == 0, worker_out[-3000:]
    # The worker wrote under the run's own output folder, relative to where it was started.
    summary = json.loads((worker_dir / "out" / "NoisyNeighbour-w0.json").read_text())
    assert summary["run"] == "apart" and summary["workers"] == 1
    assert summary["summary"]["seed"] == 1 and summary["summary"]["duration_s"] == WORKLOAD["duration_s"]
    assert summary["progress"]["sent"] == summary["progress"]["scheduled"] == len(_schedule())
    history = load(worker_dir / "out" / summary["history"])
    assert {op.process for op in history} == {"apart:NoisyNeighbour-w0"}
    assert not (master_dir / "out").exists()
