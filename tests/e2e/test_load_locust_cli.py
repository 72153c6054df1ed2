"""A locustfile run as plain Locust (CONTRACT.md): defaults without a run file, a `LoadRun` with `--saaslab-run`.

A plain run lasts its `--run-time` whatever its short probes do, its main scenario keeps its schedule,
no fault outlives it, and nothing Locust writes holds a secret.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from loadtests.common.runconfig import OPTION, LoadRun
from saaslab.history import load
from saaslab.launch import ROOT, launched
from saaslab.settings import Settings

pytestmark = pytest.mark.e2e


API_KEY = re.compile(r"sk_[A-Za-z0-9_-]{20,}")
"""The service's API keys (`reference_impl/tenancy/core.py`: "sk_" and 43 URL-safe characters)."""
PLAIN_RUN_S = 7
MAIN_SCENARIOS = {"tenancy": "NoisyNeighbour", "ratelimit": "NoisyNeighbour", "failover": "Writes",
                  "idempotency": "DoubleClickPay", "sagas": "Checkout"}
"""Each locustfile's main user class; idempotency and sagas last, since their crash faults kill service workers."""
FAULTY = ("idempotency", "sagas")
"""Scenarios whose faults fail some requests on purpose (Locust then exits with status 1)."""


def _env(token: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("SAASLAB_")},
            "SAASLAB_ADMIN_TOKEN": token, "PYTHONPATH": str(ROOT)}


def _locust(url: str, token: str, cwd: Path, *extra: str, run_time: str = "60s") -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "tenancy.py"), "--host", url, "--headless",
           "-u", "1", "-r", "1", "--run-time", run_time, "--only-summary", "--loglevel", "WARNING", *extra,
           "CrossTenantProbe"]
    return subprocess.run(cmd, cwd=cwd, env=_env(token), capture_output=True, text=True, timeout=120)


def _armed_faults(url: str, token: str, connections: int = 8) -> list[object]:
    """The faults armed on whichever workers `connections` fresh connections reach (faults live per worker)."""
    armed: list[object] = []
    for _ in range(connections):
        resp = httpx.get(f"{url}/admin/faults", headers={"Authorization": f"Bearer {token}", "Connection": "close"})
        resp.raise_for_status()
        armed += resp.json()["armed"]
    return armed


def _a_projects(history: Path) -> int:
    return sum(1 for op in load(history) if op.type == "invoke" and op.f == "create_project"
               and op.value["actor_name"] == "probe_a")


def test_plain_locust_runs_with_defaults_and_with_a_run_file(own_settings: Settings, tmp_path: Path) -> None:
    with launched(own_settings.model_copy(update={"lab_mode": True})) as svc:
        # No run file: the locustfile's defaults, its output where Locust was started; the finished probe does
        # not end the run.
        plain = _locust(svc.url, svc.token, tmp_path, run_time="4s")
        assert plain.returncode == 0, plain.stderr[-2000:]
        out = tmp_path / "reports" / "locust"
        summary = json.loads((out / "CrossTenantProbe-w0.json").read_text())
        assert summary["run"] == "run" and set(summary["tenants"]) == {"probe_a", "probe_b"}
        assert _a_projects(out / summary["history"]) == 6

        # A run file: its label, its probe size, its output folder.
        run = LoadRun(label="small", probe_size=2, out_dir=tmp_path / "small").write(tmp_path / "run.json")
        configured = _locust(svc.url, svc.token, tmp_path, OPTION, str(run))
        assert configured.returncode == 0, configured.stderr[-2000:]
        summary = json.loads((tmp_path / "small" / "CrossTenantProbe-w0.json").read_text())
        assert summary["run"] == "small"
        assert _a_projects(tmp_path / "small" / summary["history"]) == 2

        # Without the admin token, provisioning says what to do and the run fails.
        env_less = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "tenancy.py"), "--host", svc.url,
             "--headless", "-u", "1", "-r", "1", "--run-time", "30s", "CrossTenantProbe"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("SAASLAB_")}, "PYTHONPATH": str(ROOT)})
        assert env_less.returncode != 0 and "SAASLAB_ADMIN_TOKEN is not set" in env_less.stderr


def test_a_run_file_with_an_unknown_field_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"label": "x", "load_pont": 0.5}))
    with pytest.raises(ValueError, match="load_pont"):
        LoadRun.read(path)
    assert LoadRun.read(None) == LoadRun()


def test_each_locustfile_runs_plain_for_its_whole_time_and_leaves_nothing_behind(own_settings: Settings,
                                                                                 tmp_path: Path) -> None:
    with launched(own_settings.model_copy(update={"lab_mode": True}), workers=2) as svc:
        for name, main in MAIN_SCENARIOS.items():
            cwd = tmp_path / name
            cwd.mkdir()
            started = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / f"{name}.py"), "--host", svc.url,
                 "--headless", "-u", "10", "-r", "10", "--run-time", f"{PLAIN_RUN_S}s", "--csv", "stats",
                 "--html", "report.html", "--logfile", "locust.log"],
                cwd=cwd, env=_env(svc.token), capture_output=True, text=True, timeout=PLAIN_RUN_S + 60)
            took = time.monotonic() - started
            log = (cwd / "locust.log").read_text()
            # 1 is Locust's status when any request failed: some faults fail requests on purpose.
            assert proc.returncode in ((0, 1) if name in FAULTY else (0,)), (name, proc.stderr[-2000:])
            assert "--run-time limit reached" in log and took >= PLAIN_RUN_S, (name, took, log[-2000:])

            # The main scenario kept its schedule: it sent (nearly) every request due while the run lasted.
            progress = json.loads((cwd / "reports" / "locust" / f"{main}-w0.json").read_text())["progress"]
            assert progress["due"] > 0 and progress["sent"] >= 0.95 * progress["due"], (name, progress)
            assert f"{main} sent {progress['sent']} of the {progress['due']} requests due" in log, name
            stats = (cwd / "stats_stats.csv").read_text().splitlines()
            assert int(next(row.split(",") for row in stats if ",Aggregated," in row)[2]) > 0, name

            assert _armed_faults(svc.url, svc.token) == [], name

            written = [p for p in cwd.rglob("*") if p.is_file()]
            assert {"stats_stats.csv", "report.html", "locust.log"} <= {p.name for p in written}
            for text in [proc.stdout, proc.stderr, *(p.read_text(errors="replace") for p in written)]:
                assert svc.token not in text, name
                assert not API_KEY.search(text), (name, API_KEY.search(text))
