"""Retries load test: Brooker's contention experiment and the metastability map, against the real service.

Run it as plain Locust against a running service (lab mode on, `SAASLAB_ADMIN_TOKEN` set, and for
the map's capacity `SAASLAB_SCHEDULER_SLOTS=4`); it provisions its own tenant and arms its own faults:

    locust -f loadtests/retries.py --host http://127.0.0.1:8000 --headless -u 1 RetriesLab

`saaslab load retries` does all of this and writes the rows, the history and the checks. The run
(`--saaslab-run PATH`, a `loadtests.common.runconfig.LoadRun`): `workload` is a
`loadtests.retries_plan.RetriesPlan` (empty: its quick plan), `out_dir` where the process writes its
summary and history.

Every retry decision is made by the policy objects the simulation uses (reference_impl/retries/core.py:
the backoff policies, the retry budget, the circuit breaker); `scenarios.retries.client_design` names
the map's designs for both.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import gevent
import httpx
from gevent.pool import Group

from loadtests.common.lab import LabUser
from loadtests.common.openmodel import OpenModelDriver, Outcome
from loadtests.common.provision import Admin
from loadtests.retries_plan import ContentionPlan, RetriesPlan, SpikePlan
from reference_impl.retries.core import BudgetState, CircuitBreaker, make_policy
from scenarios import retries as scenario
from scenarios.kernel import US_PER_S
from scenarios.kernel.workload import TenantSpec, Workload, arrivals

PROJECTS = "/v1/projects"
TENANT = "retries"
F_PATCH = "patch_project"
HOSTS = [f"host{i}" for i in range(scenario.CLIENT_HOSTS)]
IDLE_GAUGES = ("saaslab_scheduler_queued_requests", "saaslab_scheduler_busy_slots")
IDLE_WAIT_S = 120.0
FAULT_POINT = "tenancy.query"
"""Where a delay holds each read's scheduler slot (reference_impl/tenancy/repository.py): its service time."""


def version_of(tag: str | None) -> int | None:
    """`"7"` -> 7; None for anything else."""
    if tag and len(tag) >= 3 and tag[0] == tag[-1] == '"' and tag[1:-1].isdigit():
        return int(tag[1:-1])
    return None


class RetriesLab(LabUser):
    """Brooker's contention experiment (clients read a shared project, PATCH it with If-Match and back off on 412
    until their write lands), then the metastability map (reads at a share of capacity through a lab-mode latency
    spike, clients retrying by each design): the plan in `loadtests/retries_plan.py`.
    """

    tenant_specs = (TenantSpec(TENANT),)

    def on_start(self) -> None:
        self.plan = RetriesPlan.of(self.load_run.workload)
        self.contention: list[dict[str, Any]] = []
        self.spikes: list[dict[str, Any]] = []
        self.admin: Admin | None = None

    # -- the scenario --------------------------------------------------------------------------
    def drive(self) -> None:
        self.admin = self.admin_client()
        try:
            self.admin.clear_faults()
            if self.plan.contention is not None:
                self._contention(self.plan.contention)
            if self.plan.metastability is not None:
                self._spikes(self.plan.metastability)
        finally:
            self.admin.clear_faults()
            self.admin.close()

    def on_stop(self) -> None:
        # However the run stops, no delay is left armed on the service.
        if self.admin is not None:
            with self.admin_client() as admin:
                admin.clear_faults()

    def summary(self) -> dict[str, Any]:
        return {"contention": self.contention, "metastability": self.spikes}

    # -- Brooker: contention on one row -----------------------------------------------------------
    def _contention(self, plan: ContentionPlan) -> None:
        for clients in plan.clients:
            for policy in plan.policies:
                for trial in range(plan.trials):
                    batches = [plan.seeds] if plan.parallel_seeds else [(s,) for s in plan.seeds]
                    for seeds in batches:
                        group = Group()
                        jobs = [group.spawn(self._trial, policy, clients, seed, trial, plan.blind) for seed in seeds]
                        group.join()
                        self.contention += [j.value for j in jobs if j.value is not None]

    def _trial(self, policy_name: str, clients: int, seed: int, trial: int, blind: bool) -> dict[str, Any]:
        headers = self.headers(TENANT)
        resp = self.client.post(PROJECTS, json={"name": "brooker"}, headers=headers, name=f"POST {PROJECTS}")
        if resp.status_code != 201:
            raise RuntimeError(f"creating the contended project answered {resp.status_code}")
        pid = str(resp.json()["id"])
        path, policy = f"{PROJECTS}/{pid}", make_policy(policy_name)
        stats = {"calls": 0, "reads": 0, "write_s": 0.0, "read_s": 0.0, "statuses": {}}
        done_at: list[float] = []
        start = time.monotonic()

        def client(index: int) -> None:
            rng = random.Random(f"live-contention:{seed}:{clients}:{trial}:{index}")
            tag = f"c{index}-{uuid.uuid4().hex[:6]}"
            attempt = previous = 0
            while True:
                sent = time.monotonic()
                read = self.client.get(path, headers=headers, name=f"GET {PROJECTS}/{{id}}")
                stats["reads"] += 1
                stats["read_s"] += time.monotonic() - sent
                read_version = version_of(read.headers.get("ETag") if read.headers else None)
                if read.status_code == 200 and read_version is not None:
                    if self._write(path, pid, tag, read_version, blind, stats, policy_name, clients, seed):
                        done_at.append(time.monotonic())
                        return
                attempt += 1
                delay = policy.next_delay_us(attempt, previous, rng)
                assert delay is not None, "contention clients never give up"
                previous = delay
                gevent.sleep(delay / US_PER_S)

        group = Group()
        for i in range(clients):
            group.spawn(client, i)
        group.join()
        final = self.client.get(path, headers=headers, name=f"GET {PROJECTS}/{{id}}")
        return {"policy": policy_name, "clients": clients, "seed": seed, "trial": trial, "project": pid,
                "calls": stats["calls"], "reads": stats["reads"],
                "write_ms": 1000 * stats["write_s"] / max(1, stats["calls"]),
                "read_ms": 1000 * stats["read_s"] / max(1, stats["reads"]),
                "completion_ms": 1000 * (max(done_at) - start) if done_at else float("nan"),
                "statuses": stats["statuses"], "final_version": version_of(final.headers.get("ETag")),
                "final_name": final.json().get("name") if final.status_code == 200 else None}

    def _write(self, path: str, pid: str, tag: str, read_version: int, blind: bool, stats: dict[str, Any],
               policy: str, clients: int, seed: int) -> bool:
        """One conditional PATCH, recorded in the history; True when it landed."""
        inv = self.history.invoke(F_PATCH, {"project": pid, "tag": tag, "read_version": read_version, "blind": blind,
                                            "policy": policy, "clients": clients, "seed": seed})
        sent = time.monotonic()
        with self.client.request("PATCH", path, json={"name": tag}, name=f"PATCH {PROJECTS}/{{id}}",
                                 headers={**self.headers(TENANT), "If-Match": "*" if blind else f'"{read_version}"'},
                                 catch_response=True) as resp:
            status = int(resp.status_code or 0)
            if status == 412:
                resp.success()  # the service doing its job: another write came first
            written = version_of(resp.headers.get("ETag") if resp.headers else None) if status == 200 else None
        stats["calls"] += 1
        stats["write_s"] += time.monotonic() - sent
        stats["statuses"][str(status)] = stats["statuses"].get(str(status), 0) + 1
        kind = "ok" if status == 200 else "fail" if 400 <= status < 500 else "info"
        self.history.complete(inv, kind, {"status": status, "written_version": written})
        return status == 200

    # -- the metastability map ------------------------------------------------------------------------
    def _spikes(self, plan: SpikePlan) -> None:
        resp = self.client.post(PROJECTS, json={"name": "spike"}, headers=self.headers(TENANT), name=f"POST {PROJECTS}")
        if resp.status_code != 201:
            raise RuntimeError(f"creating the read project answered {resp.status_code}")
        self.read_path = f"{PROJECTS}/{resp.json()['id']}"
        for design in plan.designs:
            for load in plan.loads:
                for trigger_s in plan.triggers_s:
                    self.spikes.append(self._cell(plan, design, load, trigger_s))

    def _arm(self, delay_ms: int) -> None:
        assert self.admin is not None
        self.admin.arm_fault(FAULT_POINT, "delay", delay_ms=delay_ms)

    def _cell(self, plan: SpikePlan, design: str, load: float, trigger_s: int) -> dict[str, Any]:
        timeline = plan.timeline_of()
        spec = scenario.client_design(design)
        end_s = timeline.trigger_at_s + trigger_s + timeline.recovery_s + timeline.hold_s
        lifetime_s = scenario.request_lifetime_us(spec) / US_PER_S
        offered, served = [0] * end_s, [0] * end_s
        attempts = [0] * (end_s + 2 + int(lifetime_s))
        rng = random.Random(f"live-meta:{plan.seed}:{design}:{load}:{trigger_s}")
        budgets: dict[str, BudgetState | None] = dict.fromkeys(HOSTS)
        breakers = {h: CircuitBreaker(spec.breaker) for h in HOSTS}
        timeout_s = scenario.TIMEOUT_MS / 1000
        headers = self.headers(TENANT)
        wl = Workload(tenants=(TenantSpec(scenario.CLIENT_TENANT, rate=load * scenario.CAPACITY_RPS),),
                      process="poisson", duration_s=end_s)
        host_rng = random.Random(f"live-meta-hosts:{plan.seed}:{load}")
        schedule = [(t_us, HOSTS[host_rng.randrange(len(HOSTS))]) for t_us, _ in arrivals(wl, plan.seed)]
        origin = time.monotonic() + 0.2

        def now_us() -> int:
            return int((time.monotonic() - origin) * US_PER_S)

        def attempt_once() -> bool:
            deadline = gevent.Timeout(timeout_s)
            deadline.start()
            try:
                with self.client.request("GET", self.read_path, headers=headers, name="GET spike read",
                                         catch_response=True) as resp:
                    ok = resp.status_code == 200
                    if not ok:
                        resp.failure(f"HTTP {resp.status_code}")
                return ok
            except gevent.Timeout as t:
                if t is not deadline:
                    raise
                return False
            finally:
                deadline.cancel()

        def request(host: str) -> Outcome:
            arrival_bin = min(end_s - 1, max(0, now_us() // US_PER_S))
            offered[arrival_bin] += 1
            breaker = breakers[host] if spec.breaker else None
            attempt = previous = 0
            while True:
                if breaker is not None and not breaker.allow(now_us()):
                    return "error"  # failed fast: the breaker is open
                attempt += 1
                attempts[min(len(attempts) - 1, max(0, now_us() // US_PER_S))] += 1
                ok = attempt_once()
                now = now_us()
                if ok:
                    served[arrival_bin] += 1
                    if breaker is not None:
                        breaker.record_success(now)
                    if spec.budget is not None:
                        budgets[host] = spec.budget.on_success(budgets[host], now)
                    return "ok"
                if breaker is not None:
                    breaker.record_failure(now)
                delay = spec.policy.next_delay_us(attempt, previous, rng)
                if delay is None:
                    return "timeout"
                if spec.budget is not None:
                    allowed, budgets[host] = spec.budget.try_retry(budgets[host], now)
                    if not allowed:
                        return "timeout"
                previous = delay
                if delay:
                    gevent.sleep(delay / US_PER_S)

        self._arm(plan.base_delay_ms)
        spike_on = gevent.spawn_later(max(0.0, origin + timeline.trigger_at_s - time.monotonic()),
                                      self._arm, plan.spike_delay_ms)
        spike_off = gevent.spawn_later(max(0.0, origin + timeline.trigger_at_s + trigger_s - time.monotonic()),
                                       self._arm, plan.base_delay_ms)
        driver = OpenModelDriver(schedule, request, duration_s=end_s, slo_us=scenario.TIMEOUT_MS * 1000,
                                 drain_s=lifetime_s + 1, tenants=HOSTS)
        result = driver.run(start=origin)
        gevent.joinall([spike_on, spike_off])
        idle_s = self._drain()
        return {"design": design, "load": load, "trigger_s": trigger_s, "seed": plan.seed,
                "timeline": dict(plan.timeline), "offered": offered, "served": served, "attempts": attempts,
                "sent": result.sent, "dropped": result.dropped, "send_lag": result.send_lag.encode(),
                "drained_s": round(idle_s, 2)}

    def _drain(self) -> float:
        """Clear the delay and wait until the service has no request queued or running: a collapsed cell leaves
        a backlog of abandoned requests the service still works through, which the next cell must not inherit.
        Returns how long that took."""
        assert self.admin is not None
        self.admin.clear_faults()
        started = time.monotonic()
        while time.monotonic() - started < IDLE_WAIT_S:
            text = httpx.get(f"{self.admin.base_url}/metrics", timeout=10).text
            values = {line.split()[0]: float(line.split()[-1]) for line in text.splitlines()
                      if line.split() and line.split()[0] in IDLE_GAUGES}
            if values and all(v == 0 for v in values.values()):
                break
            gevent.sleep(0.1)
        return time.monotonic() - started
