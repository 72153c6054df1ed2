"""Sharding load test: Zipf tenants across the shards, one tenant moved and the hottest isolated while they write.

Run it as plain Locust against a running service whose tenants live on shard servers (lab mode on,
`SAASLAB_ADMIN_TOKEN` set, `SAASLAB_SHARD_URLS` listing one more server than `SAASLAB_SHARDS`, the spare that
the isolation takes). Start shard servers from the embedded binaries, then the service on them:

    python -c "from pathlib import Path; from reference_impl.sharding.servers import ShardServers; \\
        print(','.join(ShardServers(Path('.saaslab/plain'), 4).start()))"      # prints the 4 URLs
    SAASLAB_SHARD_URLS=<those URLs> SAASLAB_SHARDS=3 SAASLAB_LAB_MODE=1 SAASLAB_ADMIN_TOKEN=secret saaslab serve
    SAASLAB_ADMIN_TOKEN=secret locust -f loadtests/sharding.py --host http://127.0.0.1:8000 --headless -u 1 \\
        --run-time 30s ShardedTenants
    python -c "from pathlib import Path; from reference_impl.sharding.servers import ShardServers; \
        ShardServers(Path('.saaslab/plain'), 4).stop()"                  # once the service is stopped

It provisions its own tenants, moves and isolates through the admin routes (docs/contract.md "Sharding") and
arms its own fault; it leaves none armed when it stops, however it stops. `saaslab load sharding` does all
of this itself (saaslab/live/sharding.py): it starts the shard servers and the service, runs this file, then
reads every shard back and runs the checker (reference_impl/sharding/invariants.py) on the history; with
`--host URL` it drives your service instead and reads back the shards its settings name.

The scenario (`ShardedTenants`; every knob is a field of `Plan`): `tenants` tenants whose request rates
follow Zipf (`zipf_s`) send `rate` requests per second in all, open-model (Poisson, the seeded schedule of
`scenarios.kernel.workload.arrivals`), for `duration_s`. A request is a write (`POST /v1/projects` whose name
is a key unique to the write) or, a share `read_share` of them, a read of the tenant's latest acknowledged
write (`GET /v1/projects/{id}`). At `move_at` of the duration the second-hottest tenant moves to the active
shard with the fewest rows (`POST /admin/tenants/{id}/move`); once that job is done and `isolate_at` has come,
the hottest tenant is isolated onto the spare shard (`POST /admin/tenants/{id}/isolate`). Both keep writing
throughout. While a job runs, `sharding.cutover` is armed with a delay of `cutover_delay_ms` (a slow cutover:
the fenced mover holds the tenant's writes that long; the unsafe mover lets them land on the old shard, whose
copy is then cleaned away), re-armed every `rearm_s` on `spread` fresh connections, since a fault is armed in
the service worker that takes the request and the job runs in whichever took the move; one DELETE clears
them in every worker once the job is over. Against a service on one database (no shard URLs) the load runs,
the move is skipped (no other shard; the summary says so) and the isolation is recorded as refused (409).

History (`reference_impl.sharding.invariants`): `write` {tenant, key} then `ok` {id} (201), `fail` {status}
(a 4xx, or the 503 a write gets when it stays fenced past SAASLAB_SHARD_FENCE_WAIT_S: it did not happen), or
`info` (no answer or another 5xx: unknown); `read` {tenant, key} then `ok` {found}; `move` and `isolate`
{tenant, source, target} then `ok` with the job's counts or `fail` with its error. Moves run in the first
Locust process only; with `--processes N` each process sends its share of the schedule and reads the keys it
wrote. The run (`--saaslab-run PATH`): `rate`, `seed`, `design` (the mover), `workload` (fields of `Plan`).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import asdict, dataclass, fields
from typing import Any

import gevent

from loadtests.common.answers import json_object
from loadtests.common.lab import LabUser, worker_index
from loadtests.common.openmodel import OpenModelDriver, Outcome, shard
from loadtests.common.provision import Admin, ProvisioningError
from loadtests.common.runconfig import LoadRun
from saaslab.results import LatencyHistogram
from scenarios.kernel.workload import TenantSpec, Workload, arrivals, zipf_tenants

PROJECTS = "/v1/projects"
SLO_MS = 1000
CUTOVER_POINT = "sharding.cutover"
JOB_POLL_S = 0.05

log = logging.getLogger("saaslab.sharding")


@dataclass(frozen=True)
class Plan:
    rate: float = 80.0
    duration_s: float = 15.0
    tenants: int = 12
    zipf_s: float = 1.0
    read_share: float = 0.3
    move_at: float = 0.25
    isolate_at: float = 0.55
    cutover_delay_ms: int = 200
    rearm_s: float = 0.1
    spread: int = 4
    job_timeout_s: float = 60.0

    @classmethod
    def of(cls, run: LoadRun) -> Plan:
        known = {f.name for f in fields(cls)}
        unknown = set(run.workload) - known
        if unknown:
            raise ValueError(f"unknown sharding workload fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{**run.workload, **({"rate": run.rate} if run.rate is not None else {})})

    def specs(self) -> tuple[TenantSpec, ...]:
        """The tenants by Zipf rank: `t000` is the hottest."""
        return zipf_tenants(self.tenants, self.rate, self.zipf_s, plan="enterprise")


@dataclass
class Counters:
    writes: int = 0
    acknowledged: int = 0
    refused: int = 0
    fenced_503: int = 0
    unknown: int = 0
    reads: int = 0
    found: int = 0
    not_found: int = 0


class ShardedTenants(LabUser):
    """Zipf tenants writing and reading across the shards, open-model; one tenant moved, the hottest isolated."""

    @classmethod
    def tenants_for(cls, run: LoadRun) -> tuple[TenantSpec, ...]:
        return Plan.of(run).specs()

    def on_start(self) -> None:
        self.plan = Plan.of(self.load_run)
        self.counters = Counters()
        self.index = worker_index(self.environment.runner)
        self.rng = random.Random(self.load_run.seed * 1_000 + self.index)
        self.acked: dict[str, list[tuple[str, str]]] = {}
        """tenant name -> (key, id) of its acknowledged writes, in order."""
        self.jobs: list[dict[str, Any]] = []
        self.placements: dict[str, dict[str, Any]] = {}
        self.write_latency: dict[str, LatencyHistogram] = {}
        """The moved and the isolated tenants' acknowledged writes, from the send to the answer."""
        self.driver: OpenModelDriver | None = None

    # -- the scenario --------------------------------------------------------------------------------------
    def drive(self) -> None:
        plan = self.plan
        names = [s.name for s in plan.specs()]
        self.moved, self.isolated = names[1 % len(names)], names[0]
        self.write_latency = {self.moved: LatencyHistogram(), self.isolated: LatencyHistogram()}
        if self.index == 0:
            self.placements["initial"] = self._placements()
        workload = Workload(plan.specs(), duration_s=plan.duration_s)
        schedule = shard(arrivals(workload, self.load_run.seed), self.index, self.lab.workers)
        start = self.start_monotonic()
        self.driver = OpenModelDriver(schedule, self.request, duration_s=plan.duration_s, slo_us=SLO_MS * 1000,
                                      tenants=names)
        admin_work = [gevent.spawn(self._moves, start)] if self.index == 0 else []
        try:
            self.driver.run(start=start)
            gevent.joinall(admin_work, timeout=plan.job_timeout_s)
        finally:  # a run stopped early (--run-time, Ctrl-C) leaves no fault armed either
            gevent.killall(admin_work)
            if self.index == 0:
                self.try_admin(lambda admin: admin.clear_faults())
        if self.index == 0:
            self.placements["final"] = self._placements()

    def request(self, tenant: str) -> Outcome:
        acked = self.acked.get(tenant)
        if acked and self.rng.random() < self.plan.read_share:
            return self.read(tenant, *acked[-1])
        return self.write(tenant)

    def write(self, tenant: str) -> Outcome:
        key = f"{tenant}-w{self.index}-{uuid.uuid4().hex}"
        tid = self.tenants[tenant].tenant_id
        invoked = self.history.invoke("write", {"tenant": tid, "key": key})
        self.counters.writes += 1
        sent = time.monotonic()
        with self.client.post(PROJECTS, json={"name": key}, headers=self.headers(tenant), name=f"POST {PROJECTS}",
                              catch_response=True) as resp:
            status = int(resp.status_code or 0)
            answer = json_object(resp) if status == 201 else {}
        if status == 201:
            self.counters.acknowledged += 1
            self.acked.setdefault(tenant, []).append((key, str(answer.get("id"))))
            self.history.complete(invoked, "ok", {"id": str(answer.get("id"))})
            if tenant in self.write_latency:
                self.write_latency[tenant].record_s(time.monotonic() - sent)
            return "ok"
        if status == 503 or 400 <= status < 500:  # refused: the write did not happen
            self.counters.refused += 1
            self.counters.fenced_503 += status == 503
            self.history.complete(invoked, "fail", {"status": status})
            return "error"
        self.counters.unknown += 1
        self.history.complete(invoked, "info", {"status": status})
        return "timeout" if status == 0 else "error"

    def read(self, tenant: str, key: str, object_id: str) -> Outcome:
        tid = self.tenants[tenant].tenant_id
        invoked = self.history.invoke("read", {"tenant": tid, "key": key})
        self.counters.reads += 1
        with self.client.get(f"{PROJECTS}/{object_id}", headers=self.headers(tenant), name=f"GET {PROJECTS}/{{id}}",
                             catch_response=True) as resp:
            status = int(resp.status_code or 0)
            if status == 404:
                resp.success()  # a read that misses an acknowledged write is the checker's to judge
        if status in (200, 404):
            self.counters.found += status == 200
            self.counters.not_found += status == 404
            self.history.complete(invoked, "ok", {"found": status == 200})
            return "ok"
        self.history.complete(invoked, "fail" if 400 <= status < 500 else "info", {"status": status})
        return "timeout" if status == 0 else "error"

    # -- the moves -----------------------------------------------------------------------------------------
    def _moves(self, start: float) -> None:
        plan = self.plan
        gevent.sleep(max(0.0, start + plan.move_at * plan.duration_s - time.monotonic()))
        self._job("move", self.moved)
        gevent.sleep(max(0.0, start + plan.isolate_at * plan.duration_s - time.monotonic()))
        self._job("isolate", self.isolated)

    def _job(self, kind: str, tenant: str) -> None:
        """One move or isolation through the admin routes, recorded as one op from the request to the job's end."""
        plan = self.plan
        tid = self.tenants[tenant].tenant_id
        record: dict[str, Any] = {"kind": kind, "tenant": tenant, "tenant_id": tid}
        self.jobs.append(record)
        arming = None
        if plan.cutover_delay_ms > 0:  # armed before the job starts, then kept armed in every worker while it runs
            self._arm_cutover()
            arming = gevent.spawn(self._keep_cutover_slow)
        invoked = None
        try:
            with self.admin_client() as admin:
                source = admin.get(f"/admin/tenants/{tid}/placement").json()["shard"]
                body = {"to": self._coolest_shard(admin, source)} if kind == "move" else None
                target = {"target": body["to"]} if body else {}
                invoked = self.history.invoke(kind, {"tenant": tid, "source": source, **target})
                resp = admin.post_raw(f"/admin/tenants/{tid}/{kind}", body)
                if resp.status_code != 202:  # one database, no spare shard, a job already running: said in detail
                    record["refused"] = {"status": resp.status_code, "detail": json_object(resp).get("detail")}
                    log.warning("%s of %s refused: HTTP %s: %s", kind, tenant, resp.status_code,
                                record["refused"]["detail"])
                    self.history.complete(invoked, "fail", record["refused"])
                    return
                job = record["job"] = self._wait_job(admin, resp.json()["job_id"])
        except ProvisioningError as e:
            record["error"] = str(e)
            log.warning("%s of %s not done: %s", kind, tenant, e)
            if invoked is not None:
                self.history.complete(invoked, "info", {"error": str(e)[:300]})
            return
        finally:  # also when the run stops mid-job: no fault outlives it
            if arming is not None:
                gevent.kill(arming)
                self.try_admin(lambda admin: admin.clear_faults())  # the worker that takes it clears them all
        move = (job.get("moves") or [{}])[0]
        done = {k: move[k] for k in ("target", "epoch", "copied_rows", "caught_up_rows", "write_blocked_ms",
                                     "duration_ms", "source_rows", "target_rows") if move.get(k) is not None}
        outcome = {"running": "info", "done": "ok"}.get(job["state"], "fail")  # still running: not known yet
        self.history.complete(invoked, outcome, {**done, "job_id": job["job_id"], "state": job["state"],
                                                 "error": job.get("error")})

    def _coolest_shard(self, admin: Admin, source: int) -> int:
        """The active shard other than `source` with the fewest rows."""
        listed = [s for s in admin.get("/admin/shards").json() if s["state"] == "active" and s["shard"] != source]
        if not listed:
            raise ProvisioningError("no other active shard to move a tenant to: start the service with "
                                    "SAASLAB_SHARD_URLS listing several shards")
        return min(listed, key=lambda s: (s["rows"] if s["rows"] is not None else float("inf"), s["shard"]))["shard"]

    def _wait_job(self, admin: Admin, job_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.plan.job_timeout_s
        while True:
            job = admin.get(f"/admin/jobs/{job_id}").json()
            if job["state"] != "running" or time.monotonic() > deadline:
                return job
            gevent.sleep(JOB_POLL_S)

    def _arm_cutover(self) -> None:
        plan = self.plan
        for _ in range(plan.spread):
            self.try_admin(lambda admin: admin.arm_fault(CUTOVER_POINT, "delay", delay_ms=plan.cutover_delay_ms))

    def _keep_cutover_slow(self) -> None:
        while True:
            gevent.sleep(self.plan.rearm_s)
            self._arm_cutover()

    def _placements(self) -> dict[str, int]:
        """tenant name -> shard, as the service places it now."""
        with self.admin_client() as admin:
            return {name: admin.get(f"/admin/tenants/{t.tenant_id}/placement").json()["shard"]
                    for name, t in self.tenants.items()}

    def summary(self) -> dict[str, Any]:
        return {"plan": asdict(self.plan), "counters": asdict(self.counters), "jobs": self.jobs,
                "placements": self.placements, "moved": getattr(self, "moved", None),
                "isolated": getattr(self, "isolated", None),
                "write_latency": {t: h.encode() for t, h in self.write_latency.items()},
                "open_model": self.driver.result().to_json() if self.driver else None}

