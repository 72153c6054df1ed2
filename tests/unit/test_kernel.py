"""The simulation kernel: the server model on schedules computable by hand, faults, metrics, sweeps."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import simpy

from reference_impl.tenancy.core import make_scheduler
from saaslab.results import Row
from scenarios.kernel.faults import Fault, FaultTarget, inject, schedule
from scenarios.kernel.metrics import Metrics, RunKey
from scenarios.kernel.server import Served, Server, service_time
from scenarios.kernel.sweep import sweep

MS = 1_000


def _serve(design: str, slots: int, arrivals: list[tuple[int, str]], *, service_ms: float = 10.0,
           per_tenant: int = 2, faults: tuple[Fault, ...] = ()) -> list[Served]:
    """Replay arrivals (µs, tenant) on a deterministic server; the outcomes in arrival order."""
    env = simpy.Environment()
    server = Server(env, lambda: make_scheduler(design, slots, per_tenant=per_tenant),
                    service_time(service_ms, 0.0, np.random.default_rng(0)))
    targets: list[FaultTarget] = [server]
    inject(env, faults, targets)
    procs: list[simpy.Process] = []

    def drive() -> Any:
        for t, tenant in arrivals:
            yield env.timeout(t - env.now)
            procs.append(server.request(tenant))

    env.process(drive())
    env.run(until=60_000 * MS)
    return [p.value for p in procs]


def _waits_ms(served: list[Served]) -> list[float | None]:
    return [None if s.wait_us is None else s.wait_us / MS for s in served]


# --- the server drives the service's schedulers -----------------------------------------------


def test_fifo_one_slot_waits_are_the_hand_computed_ones() -> None:
    # Service 10 ms; arrivals at 0, 1, 2, 25 ms start at 0, 10, 20, 30 ms.
    out = _serve("fifo", 1, [(0, "a"), (1 * MS, "b"), (2 * MS, "a"), (25 * MS, "c")])
    assert _waits_ms(out) == [0, 9, 18, 5]
    assert [s.latency_us / MS for s in out] == [10, 19, 28, 15]
    assert all(s.ok for s in out)


def test_fifo_two_slots_waits_are_the_hand_computed_ones() -> None:
    # Three at t=0 on two slots: the third starts when the first two finish (10 ms); the fourth
    # arrives at 5 ms behind it and takes the other slot freed at 10 ms.
    out = _serve("fifo", 2, [(0, "a"), (0, "b"), (0, "c"), (5 * MS, "d"), (12 * MS, "e")])
    assert _waits_ms(out) == [0, 0, 10, 5, 8]


def test_bulkhead_lets_a_newcomer_past_a_capped_tenant() -> None:
    arrivals = [(0, "a"), (0, "a"), (0, "a"), (1 * MS, "b")]
    fifo = _serve("fifo", 2, arrivals)
    bulkhead = _serve("bulkhead", 2, arrivals, per_tenant=1)
    assert _waits_ms(fifo) == [0, 0, 10, 9]
    # a may hold one slot: its jobs run back to back on it; b takes the other slot on arrival.
    assert _waits_ms(bulkhead) == [0, 10, 20, 0]


def test_wfq_serves_a_newcomer_before_a_flooding_tenant_backlog() -> None:
    arrivals = [(0, "a")] * 4 + [(1 * MS, "b")]
    assert _waits_ms(_serve("fifo", 1, arrivals)) == [0, 10, 20, 30, 39]
    assert _waits_ms(_serve("wfq", 1, arrivals)) == [0, 20, 30, 40, 9]


def test_service_time_adds_a_seeded_exponential_overhead() -> None:
    draw = service_time(20.0, 1.0, np.random.default_rng(5))
    again = service_time(20.0, 1.0, np.random.default_rng(5))
    xs = [draw("t") for _ in range(2000)]
    assert xs == [again("t") for _ in range(2000)]
    assert min(xs) >= 20_000
    assert 20_900 < sum(xs) / len(xs) < 21_100


# --- faults ------------------------------------------------------------------------------------


def test_latency_fault_slows_requests_started_while_it_lasts() -> None:
    spike = Fault("slow-disk", at_s=0.5, length_s=1.0, kind="latency", params={"factor": 2, "extra_ms": 5})
    out = _serve("fifo", 1, [(100 * MS, "a"), (600 * MS, "a"), (2000 * MS, "a")], faults=(spike,))
    assert [s.latency_us / MS for s in out] == [10, 25, 10]


def test_pause_stops_progress_until_resumed() -> None:
    stop = Fault("sigstop", at_s=1.0, length_s=0.5, kind="pause")
    out = _serve("fifo", 1, [(995 * MS, "a"), (1200 * MS, "b")], faults=(stop,))
    assert [(s.start_us, s.end_us) for s in out] == [(995 * MS, 1500 * MS), (1500 * MS, 1510 * MS)]
    assert all(s.ok for s in out)


def test_crash_fails_work_in_flight_and_queued_and_refuses_until_restart() -> None:
    crash = Fault("oom", at_s=1.0, length_s=0.5, kind="crash")
    out = _serve("fifo", 1, [(995 * MS, "a"), (996 * MS, "b"), (1200 * MS, "c"), (1600 * MS, "d")],
                 faults=(crash,))
    assert [s.ok for s in out] == [False, False, False, True]
    assert [s.end_us / MS for s in out] == [1000, 1000, 1200, 1610]
    assert out[1].start_us is None and out[3].wait_us == 0


def test_fault_schedule_is_sorted_and_seeded() -> None:
    faults = [Fault("late", 5.0, 1.0, "pause"), Fault("early", 1.0, 1.0, "latency", {"extra_ms": 3})]
    assert [f.name for f in schedule(faults)] == ["early", "late"]
    j1, j2 = schedule(faults, seed=3, jitter_s=0.5), schedule(faults, seed=3, jitter_s=0.5)
    assert j1 == j2 != schedule(faults, seed=4, jitter_s=0.5)
    assert all(f.at_s <= g.at_s <= f.at_s + 0.5 for f, g in zip(schedule(faults), j1, strict=True))


def test_faults_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("x", 1.0, 1.0, "meteor")  # type: ignore[arg-type]
    env = simpy.Environment()
    server = Server(env, lambda: make_scheduler("fifo", 1), lambda _t: 1000, name="api")
    with pytest.raises(ValueError, match="not modelled"):
        inject(env, [Fault("x", 1.0, 1.0, "crash", target="db")], [server])


# --- metrics -----------------------------------------------------------------------------------


def test_metrics_count_goodput_within_the_slo_only() -> None:
    m = Metrics(slo_us=100 * MS, tenants=["b", "a"])
    for _ in range(4):
        m.offer("a")
    m.complete("a", 50 * MS)
    m.complete("a", 100 * MS)
    m.complete("a", 300 * MS)
    assert (m["a"].offered, m["a"].completed, m["a"].within_slo) == (4, 3, 2)
    assert m["a"].normalised_service() == 0.5
    assert m.goodput_rps(["a", "b"], 2.0) == 1.0
    rows = RunKey("r1", "p", "fifo", 3, 0.5).tenant_rows(m, 2.0)
    assert [(r.tenant, r.metric) for r in rows][:5] == [
        ("b", "latency_p50"), ("b", "latency_p99"), ("b", "offered"), ("b", "completed"), ("b", "goodput")]
    by = {(r.tenant, r.metric): r for r in rows}
    assert by[("a", "completed")].value == 3 and by[("a", "goodput")].unit == "rps"
    assert by[("a", "latency_p99")].value == pytest.approx(300, rel=1e-3)
    assert {(r.run_id, r.source, r.design, r.seed, r.load_point) for r in rows} == {("r1", "sim", "fifo", 3, 0.5)}


# --- sweeps ------------------------------------------------------------------------------------


def toy_simulate(design: str, load_point: float, seed: int, params: Mapping[str, Any]) -> list[Row]:
    """A stand-in scenario: seeded numbers, and uneven run times so workers finish out of order."""
    time.sleep(0.03 if seed % 2 == 0 else 0.0)
    rng = np.random.default_rng([seed, int(load_point * 100), len(design)])
    key = RunKey(params["run_id"], "toy", design, seed, load_point)
    return [key.row(f"t{i}", "x", float(rng.normal()), "ms") for i in range(3)]


def test_sweep_rows_do_not_depend_on_the_number_of_jobs() -> None:
    grid: dict[str, Any] = {"designs": ("fifo", "wfq"), "load_points": (0.3, 0.7), "seeds": range(3),
                            "params": {"run_id": "r"}}
    calls: list[tuple[int, int]] = []
    inline = sweep(toy_simulate, **grid, jobs=1)
    pooled = sweep(toy_simulate, **grid, jobs=2, progress=lambda done, total: calls.append((done, total)))
    assert pooled == inline
    assert len(inline) == 2 * 2 * 3 * 3
    assert calls == [(i, 12) for i in range(1, 13)]
    assert [(r.design, r.load_point, r.seed) for r in inline[::3]] == [
        (d, lp, s) for d in ("fifo", "wfq") for lp in (0.3, 0.7) for s in range(3)]
