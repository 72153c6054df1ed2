"""The one service launcher and the one provisioner, on real PostgreSQL and Redis.

`saaslab.launch` starts the service from `Settings` alone (no `SAASLAB_*` of ours leaks in), waits for
/readyz, pins and stops it with every worker; `loadtests.common.provision.Admin` creates tenants whose
keys work and arms and clears lab faults.
"""

from __future__ import annotations

import os
import time

import httpx
import psutil
import pytest

from loadtests.common.provision import Admin, ProvisioningError, create_tenant
from saaslab.launch import launched, settings_env, start_service
from saaslab.services import ServiceError
from saaslab.settings import Settings
from scenarios.kernel.workload import TenantSpec


def _gone(pids: list[int], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_settings_reach_the_workers_and_nothing_else(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stray variable of ours must not decide the service's design: the settings passed in do.
    monkeypatch.setenv("SAASLAB_ISOLATION", "schema")
    lab = settings.model_copy(update={"isolation": "rls", "lab_mode": True})
    assert settings_env(lab)["SAASLAB_ISOLATION"] == "rls"
    with launched(lab, workers=2) as svc:
        supervisor = psutil.Process(svc.pid)
        # uvicorn's workers are multiprocessing's spawned children (beside them runs its resource tracker).
        workers = [c for c in supervisor.children() if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) == 2
        for w in workers:
            env = w.environ()
            assert env["SAASLAB_ISOLATION"] == "rls" and env["SAASLAB_LAB_MODE"] == "True"
            assert env["SAASLAB_ADMIN_TOKEN"] == settings.admin_token
        assert httpx.get(f"{svc.url}/readyz").status_code == 200
        pids = [supervisor.pid, *(c.pid for c in supervisor.children())]
    assert _gone(pids), "a service process outlived its block"


@pytest.mark.skipif((os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"), reason="needs 2 cores")
def test_a_pinned_service_runs_on_its_core(settings: Settings) -> None:
    svc = start_service(settings, cpus={1})
    try:
        assert psutil.Process(svc.pid).cpu_affinity() == [1]
    finally:
        svc.stop()
    assert _gone([svc.pid])


def test_a_service_that_cannot_start_says_why(settings: Settings) -> None:
    broken = settings.model_copy(update={"database_url": "postgresql://nobody@127.0.0.1:1/none"})
    with pytest.raises(ServiceError, match="not ready|exited"):
        start_service(broken).stop()


def test_provisioned_tenants_work_and_faults_arm(settings: Settings) -> None:
    with launched(settings.model_copy(update={"lab_mode": True})) as svc, Admin(svc.url, svc.token) as admin:
        tenants = admin.create_tenants([TenantSpec("a"), TenantSpec("b", plan="enterprise")], tag="t1")
        assert set(tenants) == {"a", "b"} and tenants["a"].tenant_id != tenants["b"].tenant_id
        one = create_tenant(svc.url, svc.token, "solo", limits={"requests": 5, "window_s": 1})
        for t in (*tenants.values(), one):
            r = httpx.post(f"{svc.url}/v1/projects", json={"name": "p"},
                           headers={"Authorization": f"Bearer {t.api_key}"})
            assert r.status_code == 201, r.text
        admin.arm_fault("tenancy.query", "delay", delay_ms=1)
        admin.clear_faults()
        with pytest.raises(ProvisioningError, match="HTTP 4"):
            admin.arm_fault("no.such.point", "delay", delay_ms=1)
        with Admin(svc.url, "wrong-token") as stranger, pytest.raises(ProvisioningError, match="admin token"):
            stranger.create_tenant("x")


def test_a_fault_clear_reaches_every_worker(settings: Settings) -> None:
    """Faults are armed per worker; DELETE /admin/faults on any one worker clears them all (reference_impl/common/faults.py)."""
    config = settings.model_copy(update={"lab_mode": True, "admin_token": "clear-token"})
    admin = {"Authorization": "Bearer clear-token"}
    fault = {"point": "tenancy.query", "mode": "delay", "delay_ms": 1}

    def fresh(method: str, url: str, **kw: object) -> httpx.Response:
        with httpx.Client(timeout=5.0) as c:  # a new connection: any worker may take it
            return c.request(method, url, headers=admin, **kw)

    with launched(config, workers=2) as svc:
        armed: set[int] = set()
        for _ in range(200):  # arm on fresh connections until both workers hold the fault
            assert fresh("POST", f"{svc.url}/admin/faults", json=fault).status_code == 201
            answer = fresh("GET", f"{svc.url}/admin/faults").json()
            if answer["armed"]:
                armed.add(answer["worker"])
            if len(armed) == 2:
                break
        assert len(armed) == 2, "the kernel handed every connection to one worker; nothing to show"
        assert fresh("DELETE", f"{svc.url}/admin/faults").status_code == 204
        time.sleep(0.3)  # the clear travels through Redis
        seen = {}
        for _ in range(60):
            answer = fresh("GET", f"{svc.url}/admin/faults").json()
            seen[answer["worker"]] = answer["armed"]
        assert seen and all(a == [] for a in seen.values()), seen
