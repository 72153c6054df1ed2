"""Tenancy load test: the noisy neighbour (open model) and the cross-tenant probe.

Run it as plain Locust against a running service (lab mode on, `SAASLAB_ADMIN_TOKEN` set); it
provisions its own tenants:

    locust -f loadtests/tenancy.py --host http://127.0.0.1:8000 --headless -u 1 NoisyNeighbour
    locust -f loadtests/tenancy.py --host http://127.0.0.1:8000 --headless -u 1 CrossTenantProbe

With `--processes N`, pass `-u N` so each process gets its driver. `saaslab load tenancy` does all
of this (service per scheduler design, the delay fault, the solo baseline, the checker).

The run (`--saaslab-run PATH`, a `loadtests.common.runconfig.LoadRun`): `load_point` (default 0.5),
`seed` (default 1), `workload` (keyword arguments of `scenarios.tenancy.noisy_neighbour`; empty,
the simulation's canonical workload; `{"duration_s": 6, "burst": false}` is its solo baseline),
`probe_size` (the probe's objects per kind, default 6), `out_dir` (where each process writes its
counters and history).
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlencode

from loadtests.common.answers import json_object
from loadtests.common.lab import CLIENT_TIMEOUT_S, LabUser, worker_index
from loadtests.common.openmodel import OpenModelDriver, Outcome, shard
from loadtests.common.runconfig import LoadRun
from scenarios.kernel import US_PER_MS
from scenarios.kernel.workload import TenantSpec, Workload, arrivals
from scenarios.tenancy import NOISY, QUIET, SLO_MS, noisy_neighbour

PROJECTS = "/v1/projects"
PAYMENTS = "/v1/payments"
LIST_LIMIT = 2
"""Small pages, so a handful of objects exercises the cursors."""
MAX_PAGES = 100


DEFAULT_LOAD_POINT = 0.5
DEFAULT_PROBE_OBJECTS = 6


def workload_of(run: LoadRun) -> tuple[Workload, float]:
    """The noisy neighbour `run` asks for, and its load point."""
    load_point = DEFAULT_LOAD_POINT if run.load_point is None else run.load_point
    return noisy_neighbour(load_point, **run.workload), load_point


def _outcome(status: int) -> Outcome:
    if 200 <= status < 300:
        return "ok"
    return "timeout" if status == 0 else "error"


class TenantClient(LabUser):
    """Tenant-scoped calls that land in the history as invoke, then ok/fail/info."""

    abstract = True

    def call(self, f: str, method: str, path: str, actor: str, *, route: str, value: dict[str, Any] | None = None,
             json_body: dict[str, Any] | None = None, refused: tuple[int, ...] = (),
             success_is_leak: bool = False) -> tuple[int, dict[str, Any]]:
        """One request as `actor`. History: 2xx is `ok` (it happened), 4xx `fail` (refused, nothing
        happened), 5xx or no answer `info` (unknown outcome).

        The completion also records what the answer revealed: a created object's id and owner,
        the id a read returned, the ids and next cursor of a list page. `refused` lists statuses
        that are the right answer (Locust's statistics count them as successes); with
        `success_is_leak` a 2xx counts as a failure there, so a leak shows in Locust's report too.
        """
        tid = self.tenants[actor].tenant_id
        inv = self.history.invoke(f, {"actor": tid, "actor_name": actor, "route": route, **(value or {})})
        with self.client.request(method, path, headers=self.headers(actor), json=json_body, name=route,
                                 catch_response=True) as resp:
            status = int(resp.status_code or 0)
            body = json_object(resp) if status else {}
            if status in refused:
                resp.success()
            elif success_is_leak and 200 <= status < 300:
                resp.failure(f"{route} as {actor} answered {status}: another tenant's object")
        seen: dict[str, Any] = {"status": status}
        if 200 <= status < 300:
            if isinstance(body.get("items"), list):
                seen["ids"] = [str(i["id"]) for i in body["items"] if isinstance(i, dict) and "id" in i]
                seen["next_cursor"] = body.get("next_cursor")
            elif "id" in body and f.startswith("create_"):
                seen.update(object_id=str(body["id"]), owner=tid)
            elif "id" in body:
                seen["returned_id"] = str(body["id"])
        kind = "ok" if 200 <= status < 300 else "fail" if 400 <= status < 500 else "info"
        self.history.complete(inv, kind, seen)
        return status, body


class NoisyNeighbour(TenantClient):
    """The main scenario: a noisy tenant bursts while quiet tenants read their own projects, open-model.

    Replays `scenarios.tenancy.noisy_neighbour(load_point)` (the simulation's schedule); each tenant reads
    its own project.
    """

    @classmethod
    def tenants_for(cls, run: LoadRun) -> tuple[TenantSpec, ...]:
        return workload_of(run)[0].tenants

    def on_start(self) -> None:
        self.workload, self.load_point = workload_of(self.load_run)
        self.seed = self.load_run.seed
        self.driver: OpenModelDriver | None = None
        self.projects: dict[str, str] = {}

    def drive(self) -> None:
        for spec in self.workload.tenants:
            status, body = self.call("create_project", "POST", PROJECTS, spec.name, route=f"POST {PROJECTS}",
                                     json_body={"name": f"nn-{spec.name}"})
            if status != 201 or "id" not in body:
                raise RuntimeError(f"creating {spec.name}'s project answered {status}")
            self.projects[spec.name] = str(body["id"])
        index = worker_index(self.environment.runner)
        schedule = shard(arrivals(self.workload, self.seed), index, self.lab.workers)
        self.driver = OpenModelDriver(schedule, self.read_own_project, duration_s=self.workload.duration_s,
                                      slo_us=round(SLO_MS * US_PER_MS), drain_s=CLIENT_TIMEOUT_S + 5,
                                      tenants=[t.name for t in self.workload.tenants])
        self.driver.run(start=self.start_monotonic())

    def read_own_project(self, tenant: str) -> Outcome:
        pid = self.projects[tenant]
        status, _ = self.call("get_project", "GET", f"{PROJECTS}/{pid}", tenant, route=f"GET {PROJECTS}/{{id}}",
                              value={"object_id": pid, "owner": self.tenants[tenant].tenant_id})
        return _outcome(status)

    def summary(self) -> dict[str, Any]:
        return {
            "workload": self.workload.params,
            "duration_s": self.workload.duration_s,
            "load_point": self.load_point,
            "seed": self.seed,
            "noisy": NOISY,
            "quiet": list(QUIET),
            "open_model": self.driver.result().to_json() if self.driver else None,
        }


PROBE_A, PROBE_B = "probe_a", "probe_b"
KINDS = {"project": PROJECTS, "payment": PAYMENTS}


class CrossTenantProbe(TenantClient):
    """A short probe: tenant B replays tenant A's object ids and cursors on every route (a safe service says 404).

    Tenant A reads its own objects as control. Once done, its user stops; a plain run goes on. Expected of a safe service: every B attempt on A's objects is 404, and every list shows B
    only its own ids. Every attempt lands in the history with the actor, the route, the object
    and its owner (the harness created it, so it knows), the status and, for lists, the ids.
    """

    tenant_specs = (TenantSpec(PROBE_A), TenantSpec(PROBE_B))

    def on_start(self) -> None:
        self.objects = DEFAULT_PROBE_OBJECTS if self.load_run.probe_size is None else self.load_run.probe_size

    def drive(self) -> None:
        a_projects = [self._create(PROBE_A, "project", i) for i in range(self.objects)]
        a_payments = [self._create(PROBE_A, "payment", i) for i in range(self.objects)]
        # B owns a few objects too, so its lists paginate and a leak would hide among real items.
        for i in range(3):
            self._create(PROBE_B, "project", i)
            self._create(PROBE_B, "payment", i)
        a_objects = {"project": a_projects, "payment": a_payments}

        for kind, ids in a_objects.items():
            for oid in ids:
                self._get(PROBE_A, kind, oid, owner=PROBE_A)
        a_cursors = {kind: self._traverse(PROBE_A, kind) for kind in KINDS}

        for kind, ids in a_objects.items():
            for oid in ids:
                self._get(PROBE_B, kind, oid, owner=PROBE_A)
        for kind in KINDS:
            self._list(PROBE_B, kind, limit=None, cursor=None)
            self._traverse(PROBE_B, kind)
            for cursor in a_cursors[kind]:
                # A cursor is no capability: replayed by B it must give B's items or a 4xx.
                self._list(PROBE_B, kind, limit=LIST_LIMIT, cursor=cursor, replayed=True)
        for oid in a_projects:
            self._delete(PROBE_B, oid, owner=PROBE_A)

        # Control after B's attempts: A still reads and lists everything it owns ...
        for kind, ids in a_objects.items():
            for oid in ids:
                self._get(PROBE_A, kind, oid, owner=PROBE_A)
        for kind in KINDS:
            self._traverse(PROBE_A, kind)
        # ... and an owner's delete works, after which the object is gone.
        if a_projects:
            self._delete(PROBE_A, a_projects[-1], owner=PROBE_A)
            self._get(PROBE_A, "project", a_projects[-1], owner=PROBE_A, gone=True)

    def _create(self, actor: str, kind: str, i: int) -> str:
        body = {"name": f"{actor}-{i}"} if kind == "project" else {"amount": 100 + i, "currency": "EUR"}
        status, answer = self.call(f"create_{kind}", "POST", KINDS[kind], actor, route=f"POST {KINDS[kind]}",
                                   json_body=body)
        if status != 201 or "id" not in answer:
            raise RuntimeError(f"{actor} creating a {kind} answered {status}")
        return str(answer["id"])

    def _get(self, actor: str, kind: str, oid: str, *, owner: str, gone: bool = False) -> None:
        foreign = actor != owner
        self.call(f"get_{kind}", "GET", f"{KINDS[kind]}/{oid}", actor, route=f"GET {KINDS[kind]}/{{id}}",
                  value={"object_id": oid, "owner": self.tenants[owner].tenant_id},
                  refused=(404,) if foreign or gone else (), success_is_leak=foreign or gone)

    def _delete(self, actor: str, oid: str, *, owner: str) -> None:
        foreign = actor != owner
        self.call("delete_project", "DELETE", f"{PROJECTS}/{oid}", actor, route=f"DELETE {PROJECTS}/{{id}}",
                  value={"object_id": oid, "owner": self.tenants[owner].tenant_id},
                  refused=(404,) if foreign else (), success_is_leak=foreign)

    def _list(self, actor: str, kind: str, *, limit: int | None, cursor: str | None, traversal: str | None = None,
              replayed: bool = False) -> str | None:
        """One page; returns its next cursor (None on the last page or an error)."""
        query = {k: v for k, v in (("limit", limit), ("cursor", cursor)) if v is not None}
        path = KINDS[kind] + (f"?{urlencode(query)}" if query else "")
        route = f"GET {KINDS[kind]}" + ("?cursor" if cursor is not None else "")
        value: dict[str, Any] = {"limit": limit, "cursor": cursor, "traversal": traversal, "replayed_cursor": replayed}
        status, body = self.call(f"list_{kind}s", "GET", path, actor, route=route, value=value,
                                 refused=(400, 404, 422) if replayed else ())
        nxt = body.get("next_cursor") if 200 <= status < 300 else None
        return str(nxt) if nxt else None

    def _traverse(self, actor: str, kind: str) -> list[str]:
        """Every page, following next_cursor (at most MAX_PAGES); returns the cursors used."""
        traversal = uuid.uuid4().hex[:12]
        cursors: list[str] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            cursor = self._list(actor, kind, limit=LIST_LIMIT, cursor=cursor, traversal=traversal)
            if cursor is None:
                break
            cursors.append(cursor)
        return cursors
