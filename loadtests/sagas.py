"""Sagas load test: checkouts of hot SKUs whose stock runs out, with worker crashes in the middle of sagas.

Run it as plain Locust against a running service (lab mode on, `SAASLAB_ADMIN_TOKEN` set; give the
service 2 workers, so a crash fault kills one and the other serves while it restarts); it provisions
its own tenant and stock and arms its own faults:

    locust -f loadtests/sagas.py --host http://127.0.0.1:8000 --headless -u 1 Checkout

`saaslab load sagas` does this per design, then reads the three participant databases back and
runs the checker (saaslab/live/sagas.py).

The scenario (`Checkout`; every knob is a field of `Plan`) is the simulation's workload
(scenarios/sagas/plan.py, `SETUP`): checkouts arrive open-model (Poisson, the seeded schedule of
`scenarios.kernel.workload.arrivals`) at `rate` per second for `duration_s`, `rate` defaulting to the run's
`load_point` x `capacity_rps(SETUP)` as in the simulation (`LIVE_LOAD_POINT` without one). Each buys one
unit of one SKU drawn with Zipf skew `zipf_s` from `skus` SKUs, and with probability `p_two_items` one unit of a
second SKU, so the hot SKUs contend and run out: each SKU starts with `stock_cover` of its expected demand
(`plan.stock_levels`; `stock` sets every SKU's instead), so orders are refused (and earlier steps compensated)
for honest reasons. SKUs are per Locust process (`w<index>-sku-<n>`, stocked for that process's share of
the orders), so several processes never share a SKU's stock. Each checkout is one
`POST /v1/orders` with its own Idempotency-Key, retried with the same key after a timeout, a dropped
connection, a 409 or a 5xx (at most `max_attempts`), so a crash between the log and the answer never
makes two orders. The provider declines a share `p_decline` of charges (a lab fault standing for a
card declined), so sagas also compensate a done reservation. One-shot crashes (`crashes`: fraction
of the duration, fault point) kill a service worker in the middle of a saga.

Once the schedule is done, the user waits (at most `settle_s`) until the tenant has no pending
order: every saga must end, completed, compensated or failed, once faults stop.

History: one `checkout` op per order, invoke `{"tenant_id", "key", "items": {sku: qty}, "amount"}`, then
`ok` with its `order_id` (202), `fail` (a 4xx other than 409: nothing happened) or `info` (no answer
after every attempt: unknown, never counted as failed). The run (`--saaslab-run PATH`, a
`loadtests.common.runconfig.LoadRun`): `rate` or `load_point`, `seed`, `design` (recorded with each op), `workload`
(fields of `Plan`, e.g. `{"duration_s": 5, "crashes": []}`), `out_dir`.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import gevent

from loadtests.common.answers import json_object
from loadtests.common.lab import CLIENT_TIMEOUT_S, LabUser, worker_index
from loadtests.common.openmodel import OpenModelDriver, Outcome, shard
from loadtests.common.runconfig import LoadRun
from reference_impl.sagas.core import PROVIDER_POINT
from scenarios.kernel.workload import TenantSpec, Workload, arrivals, zipf_weights
from scenarios.sagas.plan import LIVE_LOAD_POINT, SETUP, capacity_rps, stock_levels

SHOP = "shop"
ORDERS = "/v1/orders"
SLO_MS = 1000
RETRY_STATUSES = frozenset({0, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Plan:
    rate: float = LIVE_LOAD_POINT * capacity_rps(SETUP)
    duration_s: float = 15.0
    skus: int = SETUP.skus
    zipf_s: float = SETUP.zipf_s
    p_two_items: float = SETUP.p_two_items
    stock_cover: float = SETUP.stock_cover
    stock: int | None = None
    """Every SKU's units at the start; None: `stock_cover` of its expected demand, as the simulation stocks."""
    amount: int = 2500
    max_attempts: int = 4
    retry_wait_s: float = 0.2
    settle_s: float = 40.0
    crashes: tuple[tuple[float, str], ...] = ((0.3, "sagas.charge.after"), (0.6, "sagas.reserve.undo.before"))
    p_decline: float = SETUP.p_decline
    """Share of charges the provider declines (`sagas.charge.provider`, mode error): the saga then releases
    its reservation, a compensation for a business reason."""
    rearm_s: float = 1.0
    """The standing decline fault is re-armed this often on `spread` connections: faults live in each service
    worker, and a crashed worker comes back with none."""
    spread: int = 3

    @classmethod
    def of(cls, run: LoadRun) -> Plan:
        known = {f.name for f in fields(cls)}
        unknown = set(run.workload) - known
        if unknown:
            raise ValueError(f"unknown sagas workload fields {sorted(unknown)}; known: {sorted(known)}")
        extra = dict(run.workload)
        if "crashes" in extra:
            extra["crashes"] = tuple((float(at), str(point)) for at, point in extra["crashes"])
        if run.rate is not None:
            extra["rate"] = run.rate
        elif run.load_point is not None:
            extra["rate"] = run.load_point * capacity_rps(SETUP)
        return cls(**extra)

    def stock_levels(self, workers: int) -> list[int]:
        """Each of this process's SKUs' units: `stock`, or `stock_cover` of its share of the expected demand."""
        if self.stock is not None:
            return [self.stock] * self.skus
        setup = replace(SETUP, duration_s=self.duration_s / workers, skus=self.skus, zipf_s=self.zipf_s,
                        p_two_items=self.p_two_items, stock_cover=self.stock_cover)
        return list(stock_levels(self.rate / capacity_rps(SETUP), setup).values())


@dataclass
class Counters:
    accepted: int = 0
    refused: int = 0
    unknown: int = 0
    retries: int = 0
    crashes_armed: int = 0
    final: dict[str, int] = field(default_factory=dict)
    settled_s: float | None = None


class Checkout(LabUser):
    """Checkouts of Zipf-chosen SKUs whose stock runs out, open-model, with worker crashes mid-saga."""

    @classmethod
    def tenants_for(cls, run: LoadRun) -> tuple[TenantSpec, ...]:
        return (TenantSpec(SHOP, rate=Plan.of(run).rate),)

    def on_start(self) -> None:
        self.plan = Plan.of(self.load_run)
        self.counters = Counters()
        self.index = worker_index(self.environment.runner)
        self.rng = random.Random(self.load_run.seed * 1_000 + self.index)
        self.skus = [f"w{self.index}-sku-{n}" for n in range(self.plan.skus)]
        self.weights = zipf_weights(self.plan.skus, self.plan.zipf_s)
        self.driver: OpenModelDriver | None = None

    def drive(self) -> None:
        plan = self.plan
        for sku, units in zip(self.skus, plan.stock_levels(self.lab.workers), strict=True):
            with self.client.put(f"/v1/inventory/{sku}", json={"on_hand": units}, headers=self.headers(SHOP),
                                 name="PUT /v1/inventory/{sku}", catch_response=True) as resp:
                if resp.status_code != 200:
                    raise RuntimeError(f"stocking {sku} answered {resp.status_code}")
        workload = Workload((TenantSpec(SHOP, rate=plan.rate),), duration_s=plan.duration_s)
        schedule = shard(arrivals(workload, self.load_run.seed), self.index, self.lab.workers)
        start = self.start_monotonic()
        crashes = [gevent.spawn_later(max(0.0, start + at * plan.duration_s - time.monotonic()), self._crash, point)
                   for at, point in (plan.crashes if self.index == 0 else ())]
        self.driver = OpenModelDriver(schedule, self.checkout, duration_s=plan.duration_s, slo_us=SLO_MS * 1000,
                                      drain_s=CLIENT_TIMEOUT_S * plan.max_attempts, tenants=[SHOP])
        if self.index == 0 and plan.p_decline > 0:
            crashes.append(gevent.spawn(self._keep_declining))
        try:
            self.driver.run(start=start)
        finally:  # a run stopped early (--run-time) leaves no fault armed either
            gevent.killall(crashes)
            if self.index == 0:
                self.try_admin(lambda admin: admin.clear_faults())  # every worker follows a clear
        self._settle()

    def _keep_declining(self) -> None:
        plan = self.plan
        while True:
            for _ in range(plan.spread):
                self.try_admin(lambda admin: admin.arm_fault(PROVIDER_POINT, "error", probability=plan.p_decline))
            gevent.sleep(plan.rearm_s)

    def _crash(self, point: str) -> None:
        if self.try_admin(lambda admin: admin.arm_fault(point, "crash", count=1)):
            self.counters.crashes_armed += 1

    def checkout(self, tenant: str) -> Outcome:
        plan = self.plan
        skus = self._pick()
        key = uuid.uuid4().hex
        tid = self.tenants[tenant].tenant_id
        body = {"items": [{"sku": sku, "qty": 1} for sku in skus], "amount": plan.amount * len(skus),
                "currency": "EUR"}
        invoked = self.history.invoke("checkout", {"tenant_id": tid, "key": key, "items": dict.fromkeys(skus, 1),
                                                   "amount": body["amount"], "design": self.load_run.design})
        status = 0
        for attempt in range(1, plan.max_attempts + 1):
            if attempt > 1:
                self.counters.retries += 1
                gevent.sleep(plan.retry_wait_s * attempt)
            with self.client.post(ORDERS, json=body, headers={**self.headers(tenant), "Idempotency-Key": key},
                                  name=f"POST {ORDERS}", catch_response=True) as resp:
                status = int(resp.status_code or 0)
                answer = json_object(resp) if status else {}
                if status in RETRY_STATUSES and attempt < plan.max_attempts:
                    resp.success()  # a retry follows; the final attempt is what counts
            if status == 202:
                self.counters.accepted += 1
                self.history.complete(invoked, "ok", {"order_id": str(answer.get("id")), "status": status})
                return "ok"
            if status not in RETRY_STATUSES:
                self.counters.refused += 1
                self.history.complete(invoked, "fail", {"status": status})
                return "error"
        self.counters.unknown += 1
        self.history.complete(invoked, "info", {"status": status})
        return "timeout" if status == 0 else "error"

    def _pick(self) -> list[str]:
        """One Zipf-chosen SKU, and with probability `p_two_items` a second, different one (as plan.Orders)."""
        first = self.rng.choices(self.skus, self.weights)[0]
        skus = [first]
        if len(self.skus) > 1 and self.rng.random() < self.plan.p_two_items:
            while (second := self.rng.choices(self.skus, self.weights)[0]) == first:
                pass
            skus.append(second)
        return skus

    def _settle(self) -> None:
        """Wait until the tenant has no pending order, then count the final statuses."""
        started = time.monotonic()
        while time.monotonic() - started < self.plan.settle_s:
            page = self._get(ORDERS, {"status": "pending", "limit": 1})
            if page is not None and not page.get("items"):
                self.counters.settled_s = round(time.monotonic() - started, 2)
                break
            gevent.sleep(0.5)
        for status in ("completed", "compensated", "failed", "pending"):
            self.counters.final[status] = self._count(status)

    def _count(self, status: str) -> int:
        n, cursor = 0, None
        for _ in range(10_000):
            page = self._get(ORDERS, {"status": status, "limit": 100, **({"cursor": cursor} if cursor else {})})
            if page is None:
                return -1
            n += len(page.get("items", []))
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return n

    def _get(self, path: str, params: dict[str, Any]) -> dict[str, Any] | None:
        with self.client.get(path, params=params, headers=self.headers(SHOP), name=f"GET {path}",
                             catch_response=True) as resp:
            if resp.status_code != 200:
                resp.success()  # a worker restarting: asked again
                return None
            return json_object(resp)

    def summary(self) -> dict[str, Any]:
        return {"plan": asdict(self.plan), "counters": asdict(self.counters), "skus": self.skus,
                "open_model": self.driver.result().to_json() if self.driver else None}

