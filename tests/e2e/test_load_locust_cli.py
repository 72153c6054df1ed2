"""A locustfile run as plain Locust (CONTRACT.md): defaults without a run file, a `LoadRun` with `--saaslab-run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.common.runconfig import OPTION, LoadRun
from saaslab.history import load
from saaslab.launch import ROOT, launched
from saaslab.settings import Settings

pytestmark = pytest.mark.e2e


def _locust(url: str, token: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SAASLAB_")},
           "SAASLAB_ADMIN_TOKEN": token, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "tenancy.py"), "--host", url, "--headless",
           "-u", "1", "-r", "1", "--run-time", "60s", "--only-summary", "--loglevel", "WARNING", *extra,
           "CrossTenantProbe"]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _a_projects(history: Path) -> int:
    return sum(1 for op in load(history) if op.type == "invoke" and op.f == "create_project"
               and op.value["actor_name"] == "probe_a")


def test_plain_locust_runs_with_defaults_and_with_a_run_file(settings: Settings, tmp_path: Path) -> None:
    with launched(settings.model_copy(update={"lab_mode": True})) as svc:
        # No run file: the locustfile's defaults, its output where Locust was started.
        plain = _locust(svc.url, svc.token, tmp_path)
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
