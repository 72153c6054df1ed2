"""Idempotency load test: "double-click pay" under client timeouts, provider faults, worker crashes and a retry storm.

Run it as plain Locust against a running service (lab mode on, `SAASLAB_ADMIN_TOKEN` set); it
provisions its own tenants and arms its own faults:

    locust -f loadtests/idempotency.py --host http://127.0.0.1:8000 --headless -u 1 DoubleClickPay

`saaslab load idempotency` does all of this per design (`none`, `redis`, `postgres`; a service with
2 workers and a 2 s lock timeout each), measures the service's payment capacity first, and after
each run lets the completer finish abandoned claims, reads the ledger back and runs the checker
(saaslab/live/idempotency.py).

The scenario (`DoubleClickPay`; every knob is a field of `Plan`, whose workload, client and fault
defaults are `scenarios.idempotency.LIVE_PLAN`'s, the plan the simulation replays for the report's
simulated-versus-measured table, so change them there): logical payments arrive
open-model (Poisson, the seeded schedule of `scenarios.kernel.workload.arrivals`) at `load_point`
x `capacity_rps` payments per second, split over `TENANTS`. Each payment has its own
`Idempotency-Key` and the simulation's exact body bytes (`scenarios.idempotency.payment_body`), and
is sent as a double click: 2 or 3 clients send the same key and bytes within `double_click_ms` of
each other, each attempt on a connection of its own. Each client retries with
`reference_impl.retries.core` (full jitter, `Retry-After` honoured, at most `max_attempts`
attempts, a retry budget shared by the process) after a client timeout (`client_timeout_s` for the
whole attempt), a dropped connection, a 409, a 429 or a 5xx (the provider's 504 included), until a
final answer: 201 or 402, fresh or replayed. A 409 or 429 retry is paced by the server's
`Retry-After` and spends no budget; a retry after an unknown outcome spends one. A client that runs
out of attempts or budget gives up. Once the run is over, a payment whose clients all gave up is
tried again by one client until it gets its final answer (`reconcile`, phase "reconcile"), as a
checkout retries a pending payment later: without that a `redis` charge whose client gave up
before recovering its claim would never get its payment row (the simulation shows how often).

Faults (lab mode, `POST /admin/faults`), in phases of the run (fractions of its duration):
`steady` (the provider charges and then times out, answered 504, with probability
`p_timeout_after_effect`), `slow_provider` (`slow_phase`: the provider takes `slow_ms`, longer than
the client timeout, with probability `p_slow`, so clients time out on calls still in flight and
retry into 409s) and `storm` (timeouts after the charge again, while the clients of the slow phase
retry on top of new arrivals). One-shot crashes (`crashes`) kill a service worker between recovery
points: at `idempotency.charged` (after the charge, before the payment row) and at
`idempotency.charge_created` (after the row, before the stored response). Faults live in each
service worker process, and a crashed worker comes back with none, so the phase's standing fault
is re-armed every `rearm_s` on `spread` fresh connections (each lands on whichever worker accepts
it); a one-shot crash is armed once, on one worker.

Every HTTP attempt lands in the history as an `invariants.F_PAY` operation:
`invariants.attempt_value(tenant, key)` (plus design, click, attempt number and phase), completed
`ok` with `invariants.response_value(status, body, replayed)` for 201, 402 and any replay, `fail`
for 409, 422, 400 and 429 (certainly no effect), `info` for a timeout, a dropped connection or a
5xx (unknown outcome; answered ones keep their `response_value`). Latency per answered attempt goes
into an HDR histogram; the open-model driver times each payment from its intended start to its
final answer. The counters (`COUNTERS`, for the run and per phase) go to the process's summary.

The run (`--saaslab-run PATH`, a `loadtests.common.runconfig.LoadRun`): `rate` (logical payments/s;
default `load_point` x `capacity_rps`), `load_point` (default 0.3), `capacity_rps` (the service's
payment capacity, payments/s; default the simulation's `capacity_rps()`, far above a small
machine's: set it), `seed` (default 1), `design` (the service's design, recorded with each attempt;
default postgres), `workload` (fields of `Plan`, e.g. `{"duration_s": 5}`; `{"faults": false}`
injects none; `{"p_double_click": 0.02, "p_timeout_after_effect": 0.01}` comes closer to the
simulation's own clients and provider; an override departs from `LIVE_PLAN`, which the simulation's
`aslive_*` rows replay), `out_dir` (where each process writes its counters and history).
"""
from __future__ import annotations

import itertools
import json
import logging
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import gevent
from gevent.pool import Group
from locust import events

from loadtests.common.answers import received_body, whole
from loadtests.common.lab import LabUser, worker_index
from loadtests.common.openmodel import OpenModelDriver, Outcome, shard
from loadtests.common.provision import Admin, ProvisioningError, admin_token_from_env
from loadtests.common.runconfig import LoadRun
from reference_impl.idempotency.invariants import F_PAY, attempt_value, response_value
from reference_impl.retries.core import (
    US_PER_MS,
    BudgetState,
    RetryBudget,
    honour_retry_after,
    make_policy,
    parse_retry_after,
)
from saaslab.results import LatencyHistogram
from scenarios.idempotency import LIVE_PLAN, capacity_rps, payment_body
from scenarios.kernel.workload import TenantSpec, Workload, arrivals

PAYMENTS = "/v1/payments"
ROUTE = f"POST {PAYMENTS}"
TENANTS = ("acme", "globex", "initech")
PROVIDER = "idempotency.provider"
PROBLEMS = "https://saaslab.dev/problems/"
PROVIDER_TIMEOUT_TYPE = PROBLEMS + "provider-timeout"
DEFAULT_LOAD_POINT = 0.3
DEFAULT_DESIGN = "postgres"

log = logging.getLogger("saaslab.idempotency")


@dataclass(frozen=True)
class Plan:
    """Every knob of the scenario besides rate, seed and design (the module docstring says what each does).
    The workload's, clients' and faults' defaults are `scenarios.idempotency.LIVE_PLAN`'s, which the
    simulation replays (`as_live`) for the simulated-versus-measured table: change them there."""

    duration_s: float = LIVE_PLAN.duration_s
    p_double_click: float = LIVE_PLAN.p_double_click
    """The share of payments sent as a double click; the others have one client (the simulation's own clients: 0.02)."""
    clicks: tuple[int, ...] = LIVE_PLAN.clicks
    """How many clients send a double-clicked payment (drawn uniformly)."""
    double_click_ms: float = LIVE_PLAN.double_click_ms
    """The clicks after the first follow within U(0, this)."""
    client_timeout_s: float = LIVE_PLAN.client_timeout_ms / 1000
    retry_policy: str = LIVE_PLAN.retry_policy
    retry_base_ms: float = LIVE_PLAN.retry_base_ms
    retry_cap_ms: float = LIVE_PLAN.retry_cap_ms
    max_attempts: int = LIVE_PLAN.max_attempts
    budget_ratio_pct: int = LIVE_PLAN.retry_budget[0]
    budget_min_per_s: int = LIVE_PLAN.retry_budget[1]
    budget_burst: int = LIVE_PLAN.retry_budget[2]
    faults: bool = True
    p_timeout_after_effect: float = LIVE_PLAN.p_timeout_after_effect
    p_slow: float = LIVE_PLAN.p_slow
    slow_ms: int = LIVE_PLAN.slow_ms
    slow_phase: tuple[float, float] = LIVE_PLAN.slow_phase
    """The slow provider's phase, as fractions of the duration; `steady` before it, `storm` after."""
    crashes: tuple[tuple[float, str], ...] = tuple((at, f"idempotency.{point}") for at, point in LIVE_PLAN.crashes)
    """One-shot worker crashes: (fraction of the duration, fault point)."""
    rearm_s: float = 0.5
    spread: int = 3
    drain_s: float = 40.0
    """After the last arrival, how long payments still in their retries may take."""
    reconcile: bool = LIVE_PLAN.reconcile
    """After the run, retry each payment whose clients all gave up until it gets a final answer (module docstring)."""
    reconcile_after_s: float = 0.0
    """How long after the run those clients come back (`saaslab load`: past the lock timeout and a completer pass,
    so that the `postgres` completer gets to finish what they abandoned first)."""

    @classmethod
    def of(cls, data: dict[str, Any]) -> Plan:
        """The defaults overridden by `data`'s field values (lists become tuples)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown workload field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")

        def tupled(v: Any) -> Any:
            return tuple(tupled(x) for x in v) if isinstance(v, list) else v

        return cls(**{k: tupled(v) for k, v in data.items()})

    def phase_at(self, t_s: float) -> str:
        lo, hi = self.slow_phase
        if t_s < lo * self.duration_s:
            return "steady"
        return "slow_provider" if t_s < hi * self.duration_s else "storm"

    def standing_fault(self, phase: str) -> dict[str, Any]:
        """The fault kept armed at the provider during `phase` (POST /admin/faults fields)."""
        if phase == "slow_provider":
            return {"point": PROVIDER, "mode": "delay", "delay_ms": self.slow_ms, "probability": self.p_slow}
        return {"point": PROVIDER, "mode": "timeout_after_effect", "probability": self.p_timeout_after_effect}


RECONCILE = "reconcile"
PHASES = ("steady", "slow_provider", "storm", RECONCILE)


@dataclass(frozen=True)
class LoadConfig:
    plan: Plan
    load_point: float
    capacity_rps: float
    rate: float
    seed: int
    design: str

    @classmethod
    def of(cls, run: LoadRun) -> LoadConfig:
        load_point = DEFAULT_LOAD_POINT if run.load_point is None else run.load_point
        capacity = run.capacity_rps or capacity_rps()
        rate = run.rate or load_point * capacity
        return cls(Plan.of(run.workload), load_point, capacity, rate, run.seed, run.design or DEFAULT_DESIGN)

    def workload(self) -> Workload:
        share = self.rate / len(TENANTS)
        return Workload(tenants=tuple(TenantSpec(t, rate=share) for t in TENANTS), process="poisson",
                        duration_s=self.plan.duration_s, params={"load_point": self.load_point, "rate": self.rate})


@dataclass(frozen=True, slots=True)
class Answer:
    """One attempt as the client saw it (status 0: no answer)."""

    status: int
    body: bytes = b""
    replayed: bool = False
    retry_after: str | None = None
    error: str | None = None
    timed_out: bool = False

    @property
    def decisive(self) -> bool:
        """201 or 402, fresh or replayed: the payment's outcome is known."""
        return self.status in (201, 402) or (self.replayed and self.status > 0)

    @property
    def paced(self) -> bool:
        """The server asked the client to come back later (409, 429): a retry honours Retry-After and spends no budget."""
        return self.status in (409, 429)

    @property
    def unknown(self) -> bool:
        """No answer, or a 5xx: the attempt may have had an effect, so it is retried with the same key."""
        return self.status == 0 or self.status >= 500

    @property
    def kind(self) -> str:
        """The history completion: ok (decided), fail (certainly no effect), info (unknown)."""
        if self.decisive:
            return "ok"
        return "info" if self.unknown else "fail"

    @property
    def provider_timeout(self) -> bool:
        if self.status != 504:
            return False
        try:
            return json.loads(self.body).get("type") == PROVIDER_TIMEOUT_TYPE
        except (ValueError, AttributeError):
            return False


COUNTERS = ("payments", "chains", "attempts", "answered", "created", "declined", "replays", "conflicts",
            "rate_limited", "mismatches", "timeouts", "dropped_connections", "provider_timeouts", "server_errors",
            "retries", "budget_refused", "attempts_exhausted", "gave_up", "reconciled")


@dataclass
class Counters:
    """What the clients saw, for the run and per phase (of the attempt's send time)."""

    total: Counter[str] = field(default_factory=Counter)
    phases: dict[str, Counter[str]] = field(default_factory=lambda: {p: Counter() for p in PHASES})
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    """Per answered attempt, from send to answer."""

    def add(self, phase: str, name: str, n: int = 1) -> None:
        self.total[name] += n
        self.phases[phase][name] += n

    def to_json(self) -> dict[str, Any]:
        return {"total": {k: self.total[k] for k in COUNTERS},
                "phases": {p: {k: c[k] for k in COUNTERS} for p, c in self.phases.items()},
                "latency": self.latency.encode()}


class FaultKeeper:
    """Keeps the phase's standing fault armed on every service worker and fires the one-shot crashes.

    However the run ends (its schedule done, `--run-time`, the web UI's stop, Ctrl-C), `disarm_all` stops every
    keeper of the process and clears the service's faults: a fault left armed would answer the next run's
    payments with 504s.
    """

    active: ClassVar[set[FaultKeeper]] = set()

    def __init__(self, host: str, token: str, plan: Plan) -> None:
        self.admin = Admin(host, token)
        self.plan = plan
        self.log: list[dict[str, Any]] = []
        """What was armed when (the first arm of each phase, every crash, every failure)."""
        self._greenlets = Group()
        """The keeping loop and every arm in flight: stopped together, so no arm lands after the clear."""
        FaultKeeper.active.add(self)

    def _arm(self, fault: dict[str, Any], t_s: float, *, note: bool) -> None:
        try:
            self.admin.arm_fault(**fault)
        except (ProvisioningError, OSError) as e:
            self.log.append({"t_s": round(t_s, 3), **fault, "error": str(e)[:300]})
            log.warning("arming %s failed: %s", fault, e)
            return
        if note:
            self.log.append({"t_s": round(t_s, 3), **fault})

    def disarm(self) -> None:
        """Stop arming and clear the service's faults, on as many connections as there are arms per tick."""
        self._greenlets.kill(block=True, timeout=5)
        if self not in FaultKeeper.active:
            return
        FaultKeeper.active.discard(self)
        try:
            self.admin.clear_faults(connections=2 * self.plan.spread)
        except (ProvisioningError, OSError) as e:
            log.error("clearing the lab's faults failed (%s): clear them with DELETE /admin/faults", e)
        finally:
            self.admin.close()

    @classmethod
    def disarm_all(cls) -> None:
        for keeper in list(cls.active):
            keeper.disarm()

    def arm_first(self) -> None:
        """Arm the first phase now; a service without lab mode fails here, before any payment is sent."""
        fault = self.plan.standing_fault(self.plan.phase_at(0.0))
        self.admin.arm_fault(**fault)
        self.log.append({"t_s": 0.0, **fault})

    def start(self, start: float) -> None:
        self._greenlets.spawn(self._run, start)

    def stop(self) -> None:
        """Stop arming; what is armed stays armed (reconciling still meets the provider's faults)."""
        self._greenlets.kill(block=True, timeout=5)

    def _run(self, start: float) -> None:
        plan = self.plan
        crashes = Group()
        for at, point in plan.crashes:
            crash = gevent.spawn_later(max(0.0, start + at * plan.duration_s - time.monotonic()), self._arm,
                                       {"point": point, "mode": "crash", "count": 1}, at * plan.duration_s, note=True)
            crashes.add(crash)
            self._greenlets.add(crash)
        phase = plan.phase_at(0.0)
        try:
            while (t := time.monotonic() - start) < plan.duration_s:
                now_phase = plan.phase_at(t)
                fault = plan.standing_fault(now_phase)
                # Side by side, so that a slow arm does not delay the phase's start.
                arms = [self._greenlets.spawn(self._arm, fault, t, note=i == 0 and now_phase != phase)
                        for i in range(plan.spread)]
                phase = now_phase
                gevent.sleep(self._until_next(start, plan.rearm_s))
                gevent.joinall(arms, timeout=plan.rearm_s)
        finally:
            crashes.kill(block=False)

    def _until_next(self, start: float, period: float) -> float:
        """Seconds to the next tick or phase boundary, whichever comes first."""
        t = time.monotonic() - start
        boundaries = [b * self.plan.duration_s for b in self.plan.slow_phase] + [self.plan.duration_s]
        return max(0.01, min([period] + [b - t for b in boundaries if b > t]))


class DoubleClickPay(LabUser):
    """The scenario: payments sent as double clicks with client retries, under provider faults and worker crashes.

    Open-model, with the plan's faults (module docstring), armed by this user and cleared when its
    scenario ends or the run stops.
    """

    tenant_specs = tuple(TenantSpec(t) for t in TENANTS)
    # An attempt cut off by the client's timeout keeps its slot of the connection pool: room for every one.
    concurrency = 100_000

    @classmethod
    def configure(cls, run: LoadRun) -> None:
        # The client timeout is per attempt: the plan's, not the lab's 30 s.
        cls.network_timeout = cls.connection_timeout = Plan.of(run.workload).client_timeout_s

    def on_start(self) -> None:
        self.config = LoadConfig.of(self.load_run)
        plan = self.config.plan
        self.index = worker_index(self.environment.runner)
        self.rng = random.Random(f"idempotency:live:{self.config.seed}:{self.index}")
        self.backoff = make_policy(plan.retry_policy, base_us=round(plan.retry_base_ms * US_PER_MS),
                                   cap_us=round(plan.retry_cap_ms * US_PER_MS), max_attempts=plan.max_attempts)
        self.budget = RetryBudget(plan.budget_ratio_pct, plan.budget_min_per_s, plan.budget_burst)
        self.budget_state: BudgetState | None = None
        self.counters = Counters()
        self.numbers = itertools.count()
        self.driver: OpenModelDriver | None = None
        self.keeper: FaultKeeper | None = None
        self.pending: list[tuple[str, str, bytes]] = []
        """Payments whose clients all gave up: (tenant, key, body), for the reconcile pass."""
        self.start = time.monotonic()

    def drive(self) -> None:
        cfg, plan = self.config, self.config.plan
        schedule = shard(arrivals(cfg.workload(), cfg.seed), self.index, self.lab.workers)
        if plan.faults and self.index == 0:
            self.keeper = FaultKeeper(self.environment.host or "", admin_token_from_env(), plan)
            self.keeper.arm_first()
        # The schedule's clock starts once the first fault is armed: arming it while the clock ran would
        # make the first payments late (the generator's send lag), not the service.
        start = self.start_monotonic()
        if self.keeper is not None:
            self.keeper.start(start)
        self.start = start
        self.driver = OpenModelDriver(schedule, self.pay, duration_s=plan.duration_s,
                                      slo_us=round(plan.client_timeout_s * 1e6), drain_s=plan.drain_s,
                                      tenants=TENANTS)
        try:
            self.driver.run(start=start)
        finally:
            if self.keeper is not None:
                self.keeper.stop()
        if plan.reconcile:
            self._reconcile()
        if self.keeper is not None:
            self.keeper.disarm()  # the scenario is over, though a plain run may go on

    def _phase(self) -> str:
        return self.config.plan.phase_at(time.monotonic() - self.start)

    # -- one logical payment ---------------------------------------------------------------------

    def pay(self, tenant: str) -> Outcome:
        """Send one payment as a double click; its outcome is the best any click got."""
        n = next(self.numbers)
        key = f"pay-{self.index}-{n:07d}"
        _, body = payment_body(n)
        phase = self._phase()
        self.counters.add(phase, "payments")
        double = self.rng.random() < self.config.plan.p_double_click
        clicks = self.rng.choice(self.config.plan.clicks) if double else 1
        gap_s = self.config.plan.double_click_ms / 1000
        group = Group()
        chains = [group.spawn(self._client, tenant, key, body, click, 0.0 if click == 0 else self.rng.uniform(0, gap_s))
                  for click in range(clicks)]
        group.join()
        finals = [g.value for g in chains if g.value is not None]
        if any(a.decisive for a in finals):
            return "ok"
        self.counters.add(phase, "gave_up")
        self.pending.append((tenant, key, body))
        return "error" if any(a.status for a in finals) else "timeout"

    def _reconcile(self) -> None:
        """Once the run is over, one client per payment whose clients all gave up tries it again with its key."""
        if not self.pending:
            return
        gevent.sleep(self.config.plan.reconcile_after_s)
        group = Group()
        chains = [group.spawn(self._client, tenant, key, body, 0, 0.0, reconciling=True)
                  for tenant, key, body in self.pending]
        group.join(timeout=self.config.plan.drain_s)
        group.kill(block=True, timeout=5)
        self.counters.add(RECONCILE, "reconciled", sum(1 for g in chains if g.value is not None and g.value.decisive))

    def _client(self, tenant: str, key: str, body: bytes, click: int, delay_s: float, *,
                reconciling: bool = False) -> Answer | None:
        """One client of a payment: attempts until a final answer or until it gives up; returns the last answer.

        Reconciling (after the run), it spends no retry budget: the storm is over.
        """
        if delay_s:
            gevent.sleep(delay_s)
        phase = RECONCILE if reconciling else self._phase()
        self.counters.add(phase, "chains")
        tries = previous = 0
        answer: Answer | None = None
        while True:
            tries += 1
            answer = self._attempt(tenant, key, body, click, tries, phase)
            now_us = time.time_ns() // 1000
            if answer.decisive:
                self.budget_state = self.budget.on_success(self.budget_state, now_us)
                return answer
            if not (answer.paced or answer.unknown):
                return answer  # 400 or 422: the same request can only get the same refusal
            phase = RECONCILE if reconciling else self._phase()
            retry_after = parse_retry_after(answer.retry_after, now_us)
            wait = honour_retry_after(self.backoff.next_delay_us(tries, previous, self.rng), retry_after)
            if wait is None:
                self.counters.add(phase, "attempts_exhausted")
                return answer
            if answer.unknown and not reconciling:
                allowed, self.budget_state = self.budget.try_retry(self.budget_state, now_us)
                if not allowed:
                    self.counters.add(phase, "budget_refused")
                    return answer
            self.counters.add(phase, "retries")
            previous = wait
            gevent.sleep(wait / 1e6)

    def _attempt(self, tenant: str, key: str, body: bytes, click: int, tries: int, phase: str) -> Answer:
        """One HTTP attempt, recorded in the history and the counters."""
        c = self.counters
        tid = self.tenants[tenant].tenant_id
        inv = self.history.invoke(F_PAY, {**attempt_value(tid, key), "design": self.config.design,
                                          "tenant_name": tenant, "click": click, "attempt": tries, "phase": phase})
        # A connection per attempt, as separate clicks and retries would open: each lands on whichever
        # service worker accepts it, so both workers see payments (and a one-shot crash fault fires soon).
        headers = {**self.headers(tenant), "Idempotency-Key": key, "Content-Type": "application/json",
                   "Accept-Encoding": "identity", "Connection": "close"}
        timeout_s = self.config.plan.client_timeout_s
        sent, sent_wall = time.monotonic(), time.time()
        # The client's timeout bounds the whole attempt, connecting included (Locust's own timeouts are per
        # socket operation); nothing below yields to the hub once the answer is in, so it cannot fire late.
        deadline = gevent.Timeout(timeout_s)
        deadline.start()
        try:
            with self.client.request("POST", PAYMENTS, name=ROUTE, data=body, headers=headers,
                                     catch_response=True) as resp:
                elapsed = time.monotonic() - sent
                status = int(resp.status_code or 0)
                h = resp.headers or {}
                content = received_body(resp) if status else b""
                timed_out = elapsed >= 0.95 * timeout_s
                if not status:
                    answer = Answer(0, error=repr(resp.error)[:200], timed_out=timed_out)
                elif whole(h.get("Content-Length"), content):
                    answer = Answer(status, content, h.get("Idempotent-Replayed") == "true", h.get("Retry-After"))
                else:
                    # The head came in but the body was cut short (the client's own timeout or a dropped
                    # connection while reading it): the answer was not received, so its outcome is unknown.
                    status = 0
                    answer = Answer(0, error=f"body cut short: {len(content)} of {h.get('Content-Length')} bytes",
                                    timed_out=timed_out)
                if answer.decisive or answer.paced:
                    resp.success()  # a 402 or a 409 is the service doing its job
                elif answer.unknown:
                    resp.failure(answer.error or f"HTTP {status}")
        except gevent.Timeout as t:
            if t is not deadline:
                raise
            elapsed, status = time.monotonic() - sent, 0
            answer = Answer(0, error=f"no answer within {timeout_s:g} s", timed_out=True)
            self.environment.events.request.fire(request_type="POST", name=ROUTE, response_time=elapsed * 1000,
                                                 response_length=0, response=None, context={},
                                                 exception=TimeoutError(answer.error), start_time=sent_wall,
                                                 url=PAYMENTS)
        finally:
            deadline.cancel()
        c.add(phase, "attempts")
        if status:
            c.add(phase, "answered")
            c.latency.record_s(elapsed)
            value = response_value(status, answer.body, answer.replayed)
        else:
            value = {"status": 0, "error": answer.error}
        for name, hit in (("created", status == 201 and not answer.replayed),
                          ("declined", status == 402 and not answer.replayed), ("replays", answer.replayed),
                          ("conflicts", status == 409), ("rate_limited", status == 429),
                          ("mismatches", status == 422), ("timeouts", answer.timed_out),
                          ("dropped_connections", status == 0 and not answer.timed_out),
                          ("provider_timeouts", answer.provider_timeout),
                          ("server_errors", status >= 500 and not answer.provider_timeout)):
            if hit:
                c.add(phase, name)
        self.history.complete(inv, answer.kind, value)
        return answer

    def summary(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "design": cfg.design,
            "load_point": cfg.load_point,
            "capacity_rps": cfg.capacity_rps,
            "rate": cfg.rate,
            "seed": cfg.seed,
            "plan": asdict(cfg.plan),
            "tenants": list(TENANTS),
            "counters": self.counters.to_json(),
            "faults": self.keeper.log if self.keeper else [],
            "open_model": self.driver.result().to_json() if self.driver else None,
        }


@events.test_stop.add_listener
def _clear_faults_at_stop(**_kw: Any) -> None:
    """The run stopped (its end, `--run-time`, the web UI's stop): the next run starts on a service without faults."""
    FaultKeeper.disarm_all()


@events.quitting.add_listener
def _clear_faults_at_quit(**_kw: Any) -> None:
    """Locust is exiting (Ctrl-C, SIGTERM, a failed start), possibly before `test_stop`: clear the faults first."""
    FaultKeeper.disarm_all()
