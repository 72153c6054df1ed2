"""Rate-limiting load test: the noisy neighbour (open model) and the race burst, every decision recorded.

Run it as plain Locust against a running service (lab mode on, `SAASLAB_ADMIN_TOKEN` set); it
provisions its own tenants, each with the policy under test as its `limits` override:

    locust -f loadtests/ratelimit.py --host http://127.0.0.1:8000 --headless -u 1 NoisyNeighbour
    locust -f loadtests/ratelimit.py --host http://127.0.0.1:8000 --headless -u 1 RaceBurst

`saaslab load ratelimit` does all of this per algorithm (a service with 2 workers each, load
points 1, 2 and 10, the race, the checker).

Every answer lands in the history as a `decide` op: `ok` with `invariants.decision_value` when
the answer carries `Saaslab-Decided-At` (the limiter's own clock, shown in lab mode only;
allowed = the status is not 429), `info` otherwise (no answer, or the limiter could not decide).
`invariants.no_over_admission` and `quiet_never_limited` judge those ops.

The run (`--saaslab-run PATH`, a `loadtests.common.runconfig.LoadRun`): `load_point` (the noisy
tenant's offered rate over its quota, default 10), `seed` (default 1), `workload` (keyword arguments
of `scenarios.ratelimit.noisy_neighbour`, e.g. `{"duration_s": 10}`; default the simulation's
`DURATIONS_S["neighbour"]`), `design` (the algorithm the service runs, recorded with each decision;
default token_bucket, the service's default), `probe_size` (the race's requests, default
`LIVE_RACE_REQUESTS`), `out_dir` (where each process writes its counters and history).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import gevent
from gevent.event import Event
from gevent.pool import Group

from loadtests.common.lab import CLIENT_TIMEOUT_S, LabUser, worker_index
from loadtests.common.openmodel import OpenModelDriver, Outcome, shard
from loadtests.common.runconfig import LoadRun
from reference_impl.ratelimit.core import Policy
from reference_impl.ratelimit.invariants import DECIDED_AT_HEADER, F_DECIDE, decision_value
from scenarios.kernel.workload import TenantSpec, Workload, arrivals
from scenarios.ratelimit import (
    DURATIONS_S,
    LIVE_RACE_POLICY,
    LIVE_RACE_REQUESTS,
    NEIGHBOUR_POLICY,
    NOISY,
    QUIET,
    noisy_neighbour,
)

PROJECTS = "/v1/projects"
USAGE = "/v1/usage"
RACER = "racer"
DEFAULT_ALGORITHM = "token_bucket"
DEFAULT_LOAD_POINT = 10.0
SLO_MS = 100
"""The driver's within-SLO count; the rate-limit rows do not use it."""
BOUNDARY_GUARD_S = 2.0
"""The race starts at least this far from a window boundary, where an aligned window admits twice."""

log = logging.getLogger("saaslab.ratelimit")


def limits_of(policy: Policy) -> dict[str, Any]:
    """`policy` as the `limits` of POST /admin/tenants."""
    return {"requests": policy.requests, "window_s": policy.window_s}


def workload_of(run: LoadRun) -> tuple[Workload, float]:
    """The noisy neighbour `run` asks for, and its load point."""
    load_point = DEFAULT_LOAD_POINT if run.load_point is None else run.load_point
    kwargs = {"duration_s": DURATIONS_S["neighbour"], **run.workload}
    return noisy_neighbour(load_point, policy=NEIGHBOUR_POLICY, **kwargs), load_point


def _outcome(status: int) -> Outcome:
    # A 429 is an answer like a 200: the limiter decided, and its latency counts.
    if 200 <= status < 300 or status == 429:
        return "ok"
    return "timeout" if status == 0 else "error"


class DecisionClient(LabUser):
    """Requests whose answers land in the history as the limiter's decisions."""

    abstract = True
    policy: Policy
    algorithm: str
    _warned = False

    def decide(self, tenant: str, method: str, path: str, *, route: str, quiet: bool,
               json_body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """One request as `tenant`; returns its status and (for a 2xx with a JSON object) its body."""
        tid = self.tenants[tenant].tenant_id
        inv = self.history.invoke(F_DECIDE, {"tenant": tid, "name": tenant, "route": route, "quiet": quiet})
        body: dict[str, Any] = {}
        decided: str | None = None
        with self.client.request(method, path, headers=self.headers(tenant), json=json_body, name=route,
                                 catch_response=True) as resp:
            status = int(resp.status_code or 0)
            if status:
                decided = (resp.headers or {}).get(DECIDED_AT_HEADER)
            if status == 429:
                resp.success()  # the limiter doing its job
            elif 200 <= status < 300 and json_body is not None:
                try:
                    data = resp.json()
                except ValueError:
                    data = None
                body = data if isinstance(data, dict) else {}
        if decided is None:
            if status in (200, 201, 429) and not DecisionClient._warned:
                DecisionClient._warned = True
                log.warning("answers carry no %s header: start the service with SAASLAB_LAB_MODE=1, or the "
                            "checker has no decisions to judge", DECIDED_AT_HEADER)
            self.history.complete(inv, "info", {"status": status})
        else:
            self.history.complete(inv, "ok", {
                **decision_value(tenant=tid, time_us=int(decided), allowed=status != 429, policy=self.policy,
                                 algorithm=self.algorithm, quiet=quiet),
                "status": status})
        return status, body


class NoisyNeighbour(DecisionClient):
    """The main scenario: a noisy tenant offers `load_point` x its quota, quiet tenants stay within theirs, open-model.

    Replays `scenarios.ratelimit.noisy_neighbour(load_point)` under `NEIGHBOUR_POLICY`: each tenant reads
    its own project, and every answer is recorded as a limiter decision.

    The schedule starts on a window boundary of the limiter's clock (Redis TIME, the machine's
    clock), as the simulation's does, so aligned windows cut the run where they cut the simulated one.
    Each tenant's project is created first: one request of its quota, before the schedule starts.
    """

    tenant_limits = limits_of(NEIGHBOUR_POLICY)

    @classmethod
    def tenants_for(cls, run: LoadRun) -> tuple[TenantSpec, ...]:
        return workload_of(run)[0].tenants

    def on_start(self) -> None:
        self.workload, self.load_point = workload_of(self.load_run)
        self.seed = self.load_run.seed
        self.policy = NEIGHBOUR_POLICY
        self.algorithm = self.load_run.design or DEFAULT_ALGORITHM
        self.driver: OpenModelDriver | None = None
        self.projects: dict[str, str] = {}
        self.statuses: dict[str, Counter[int]] = {t.name: Counter() for t in self.workload.tenants}
        self.start_wall: float | None = None

    def drive(self) -> None:
        for spec in self.workload.tenants:
            status, body = self.decide(spec.name, "POST", PROJECTS, route=f"POST {PROJECTS}",
                                       quiet=spec.name in QUIET, json_body={"name": f"rl-{spec.name}"})
            if status != 201 or "id" not in body:
                raise RuntimeError(f"creating {spec.name}'s project answered {status}")
            self.projects[spec.name] = str(body["id"])
        start = self.start_monotonic()
        wall = time.time() + (start - time.monotonic())
        wait = -wall % self.policy.window_s
        self.start_wall = wall + wait
        index = worker_index(self.environment.runner)
        schedule = shard(arrivals(self.workload, self.seed), index, self.lab.workers)
        self.driver = OpenModelDriver(schedule, self.read_own_project, duration_s=self.workload.duration_s,
                                      slo_us=SLO_MS * 1000, drain_s=CLIENT_TIMEOUT_S + 5,
                                      tenants=[t.name for t in self.workload.tenants])
        self.driver.run(start=start + wait)

    def read_own_project(self, tenant: str) -> Outcome:
        status, _ = self.decide(tenant, "GET", f"{PROJECTS}/{self.projects[tenant]}", route=f"GET {PROJECTS}/{{id}}",
                                quiet=tenant in QUIET)
        self.statuses[tenant][status] += 1
        return _outcome(status)

    def summary(self) -> dict[str, Any]:
        return {
            "workload": self.workload.params,
            "duration_s": self.workload.duration_s,
            "load_point": self.load_point,
            "seed": self.seed,
            "algorithm": self.algorithm,
            "policy": limits_of(self.policy),
            "noisy": NOISY,
            "quiet": list(QUIET),
            "start_wall": self.start_wall,
            "statuses": {t: {str(s): n for s, n in c.items()} for t, c in self.statuses.items()},
            "open_model": self.driver.result().to_json() if self.driver else None,
        }


class RaceBurst(DecisionClient):
    """A short probe: one tenant's burst of simultaneous requests over its limit (a strict limiter admits exactly it).

    `LIVE_RACE_REQUESTS` requests at a limit of `LIVE_RACE_POLICY`. Once done, its user stops; a plain
    run goes on.

    The race the unsafe `naive` design loses: every connection is opened first, the requests wait
    at one gate and leave together, and the service's workers decide them side by side. A strict
    algorithm admits exactly the limit.
    """

    tenant_specs = (TenantSpec(RACER),)
    tenant_limits = limits_of(LIVE_RACE_POLICY)

    def on_start(self) -> None:
        self.policy = LIVE_RACE_POLICY
        self.algorithm = self.load_run.design or DEFAULT_ALGORITHM
        self.requests = LIVE_RACE_REQUESTS if self.load_run.probe_size is None else self.load_run.probe_size
        self.statuses: Counter[int] = Counter()
        self.burst_s: float | None = None

    def drive(self) -> None:
        warm = Group()
        for _ in range(self.requests):
            warm.spawn(self.client.request, "GET", "/healthz", name="/healthz (warm-up)")
        warm.join()
        to_boundary = -time.time() % self.policy.window_s
        if to_boundary < BOUNDARY_GUARD_S:
            gevent.sleep(to_boundary + BOUNDARY_GUARD_S)
        gate = Event()
        burst = Group()
        for _ in range(self.requests):
            burst.spawn(self._one, gate)
        gevent.sleep(0)  # every greenlet reaches the gate before it opens
        started = time.monotonic()
        gate.set()
        burst.join()
        self.burst_s = time.monotonic() - started

    def _one(self, gate: Event) -> None:
        gate.wait()
        status, _ = self.decide(RACER, "GET", USAGE, route=f"GET {USAGE} (race)", quiet=False)
        self.statuses[status] += 1

    def summary(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "policy": limits_of(self.policy),
            "requests": self.requests,
            "statuses": {str(s): n for s, n in self.statuses.items()},
            "admitted": sum(n for s, n in self.statuses.items() if 200 <= s < 300),
            "refused": self.statuses.get(429, 0),
            "burst_s": self.burst_s,
        }
