"""Failover load test: a steady stream of uniquely identified writes through the service, each acknowledged
write sometimes read back (read-your-writes), while a nemesis strikes the PostgreSQL primary.

Run it as plain Locust against a running service (lab mode on, `SAASLAB_ADMIN_TOKEN` set) whose writes go to
a cluster (`SAASLAB_FAILOVER_MEMBERS`, docs/contract.md "Failover"); it provisions its own tenant:

    saaslab serve                 # with SAASLAB_LAB_MODE=1, SAASLAB_ADMIN_TOKEN and SAASLAB_FAILOVER_MEMBERS set
    locust -f loadtests/failover.py --host http://127.0.0.1:8000 --headless -u 1 Writes

and strike the primary yourself meanwhile (kill -9 its postmaster, or SIGSTOP it), with a failover manager
running against it (reference_impl/failover/manager.py). Without members the service writes to its own
database and nothing fails over: a smoke run. `saaslab load failover` does it all per design: it starts the
cluster and its manager, the service pointed at it, runs this file, strikes, reads the survivors back
from the surviving primary and runs the checker (saaslab/live/failover.py).

The scenario (`Writes`; every knob is a field of `Plan`): writes arrive open-model (Poisson, the seeded
schedule of `scenarios.kernel.workload.arrivals`) at `rate` per second for `duration_s`; each is one
`POST /v1/failover/writes {"id"}` with an id unique to the run (`w<process>-<n>`), never retried, so the
history says exactly what each attempt became. Every `probe_every`-th acknowledged write is read back at
once with `GET /v1/failover/writes/{id}` (the read-your-writes probe).

History (reference_impl/failover/invariants.py reads it): `write` ops, invoke `{"id"}`, then `ok` with the
`server` that took it (201, or 200 for an id already there), `fail` (503 `write-refused`, or a 4xx: certainly
not written) or `info` (503 `write-unknown`, another 5xx, no answer: it may have been written); `read` ops,
invoke `{"id"}`, `ok` with `found` (200 or 404) and `server`, `fail` otherwise. The summary counts every
status and every 503 without Retry-After (the contract allows none).

The run (`--saaslab-run PATH`, a `loadtests.common.runconfig.LoadRun`): `rate`, `seed`, `design` (recorded
with each op), `workload` (fields of `Plan`, e.g. `{"duration_s": 10}`), `out_dir`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, fields
from typing import Any

from loadtests.common.lab import CLIENT_TIMEOUT_S, LabUser, worker_index
from loadtests.common.openmodel import OpenModelDriver, Outcome, shard
from loadtests.common.runconfig import LoadRun
from scenarios.kernel.workload import TenantSpec, Workload, arrivals

WRITER = "writer"
WRITES = "/v1/failover/writes"
SLO_MS = 1000
REFUSED = "write-refused"
DEFAULT_RATE = 100.0


@dataclass(frozen=True)
class Plan:
    rate: float = DEFAULT_RATE
    duration_s: float = 30.0
    probe_every: int = 5
    timeout_s: float = 10.0
    """A request unanswered this long is an unknown outcome: the service answers 503 well before during a switch."""

    @classmethod
    def of(cls, run: LoadRun) -> Plan:
        known = {f.name for f in fields(cls)}
        unknown = set(run.workload) - known
        if unknown:
            raise ValueError(f"unknown failover workload fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{**run.workload, **({"rate": run.rate} if run.rate is not None else {})})


class Writes(LabUser):
    """Uniquely identified writes at a steady rate, open-model, each acknowledged write sometimes read back at once."""

    @classmethod
    def configure(cls, run: LoadRun) -> None:
        cls.network_timeout = cls.connection_timeout = min(CLIENT_TIMEOUT_S, Plan.of(run).timeout_s)

    @classmethod
    def tenants_for(cls, run: LoadRun) -> tuple[TenantSpec, ...]:
        return (TenantSpec(WRITER, rate=Plan.of(run).rate),)

    def on_start(self) -> None:
        self.plan = Plan.of(self.load_run)
        self.index = worker_index(self.environment.runner)
        self.seq = 0
        self.acked = 0
        self.statuses: Counter[str] = Counter()
        self.no_retry_after = 0
        self.driver: OpenModelDriver | None = None

    def drive(self) -> None:
        plan = self.plan
        workload = Workload((TenantSpec(WRITER, rate=plan.rate),), duration_s=plan.duration_s)
        schedule = shard(arrivals(workload, self.load_run.seed), self.index, self.lab.workers)
        self.driver = OpenModelDriver(schedule, self.write, duration_s=plan.duration_s, slo_us=SLO_MS * 1000,
                                      drain_s=plan.timeout_s * 2, tenants=[WRITER])
        self.driver.run(start=self.start_monotonic())

    def _request(self, method: str, path: str, name: str, body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        with self.client.request(method, path, json=body, headers=self.headers(WRITER), name=name,
                                 catch_response=True) as resp:
            status = int(resp.status_code or 0)
            self.statuses[str(status)] += 1
            answer = _json(resp) if status else {}
            if status == 503:
                if (resp.headers or {}).get("Retry-After"):
                    resp.success()  # the contract's answer during a switch
                else:
                    self.no_retry_after += 1
                    resp.failure("503 without Retry-After")
            elif status == 404 and method == "GET":
                resp.success()  # a probe that missed: the checker judges it
        return status, answer

    def write(self, tenant: str) -> Outcome:
        self.seq += 1
        write_id = f"w{self.index}-{self.seq}"
        op = self.history.invoke("write", {"id": write_id, "design": self.load_run.design})
        status, answer = self._request("POST", WRITES, f"POST {WRITES}", {"id": write_id})
        if status in (200, 201):
            self.history.complete(op, "ok", {"server": str(answer.get("server", "")), "status": status})
            self.acked += 1
            if self.plan.probe_every and self.acked % self.plan.probe_every == 0:
                self._probe(write_id)
            return "ok"
        refused = (status == 503 and str(answer.get("type", "")).endswith(REFUSED)) or 400 <= status < 500
        self.history.complete(op, "fail" if refused else "info", {"status": status, "type": answer.get("type")})
        return "timeout" if status == 0 else "error"

    def _probe(self, write_id: str) -> None:
        op = self.history.invoke("read", {"id": write_id})
        status, answer = self._request("GET", f"{WRITES}/{write_id}", f"GET {WRITES}/{{id}}", None)
        if status in (200, 404):
            self.history.complete(op, "ok", {"found": status == 200, "server": answer.get("server")})
        else:
            self.history.complete(op, "fail", {"status": status})

    def summary(self) -> dict[str, Any]:
        return {"plan": asdict(self.plan), "statuses": dict(self.statuses), "no_retry_after": self.no_retry_after,
                "writes": self.seq, "acknowledged": self.acked,
                "open_model": self.driver.result().to_json() if self.driver else None}


def _json(resp: Any) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
