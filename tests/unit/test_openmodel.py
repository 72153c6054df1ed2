"""The open-model driver: schedule split across workers, latency from the intended send time, drops."""

from __future__ import annotations

import time

import gevent
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtests.common.openmodel import OpenModelDriver, OpenModelResult, Outcome, shard
from scenarios.kernel.workload import arrivals
from scenarios.tenancy import noisy_neighbour

MS = 1000


@given(st.lists(st.tuples(st.integers(0, 10**8), st.sampled_from("abc"))).map(sorted), st.integers(1, 7))
def test_shards_partition_the_schedule(schedule: list[tuple[int, str]], workers: int) -> None:
    parts = [shard(schedule, i, workers) for i in range(workers)]
    assert sum(len(p) for p in parts) == len(schedule)
    assert sorted(x for p in parts for x in p) == sorted(schedule)
    # Each arrival goes to exactly one worker: position i to worker i % workers.
    for i, arrival in enumerate(schedule):
        assert parts[i % workers][i // workers] == arrival


def test_shards_of_the_real_workload_keep_each_tenants_share() -> None:
    schedule = arrivals(noisy_neighbour(0.5), seed=1)
    a, b = shard(schedule, 0, 2), shard(schedule, 1, 2)
    assert len(a) + len(b) == len(schedule) and abs(len(a) - len(b)) <= 1
    for tenant in ("noisy", "quiet1"):
        n = sum(1 for _, t in schedule if t == tenant)
        assert abs(sum(1 for _, t in a if t == tenant) - n / 2) < 0.1 * n


@pytest.mark.parametrize("workers", [1, 2, 3, 4])
def test_the_split_of_a_seeded_schedule_sums_to_the_target_and_is_the_same_for_the_same_seed(workers: int) -> None:
    """`saaslab load --processes N`: each worker sends its share of one seeded arrival process, so together
    they offer exactly the simulation's schedule at its rate, each at 1/N of it, and a rerun splits alike."""
    workload = noisy_neighbour(0.5)
    schedule = arrivals(workload, seed=3)
    parts = [shard(arrivals(workload, seed=3), i, workers) for i in range(workers)]
    assert sorted(a for p in parts for a in p) == schedule
    target_rps = len(schedule) / workload.duration_s
    assert sum(len(p) for p in parts) / workload.duration_s == target_rps
    for p in parts:
        assert len(p) / workload.duration_s == pytest.approx(target_rps / workers, rel=0.01)
        assert p == sorted(p)  # each worker's own schedule is in time order, as its driver sends it
    assert parts == [shard(arrivals(workload, seed=3), i, workers) for i in range(workers)]
    assert parts != [shard(arrivals(workload, seed=4), i, workers) for i in range(workers)]


def test_merged_workers_send_at_the_target_rate_and_each_keeps_its_own_send_lag() -> None:
    """Two drivers side by side on one schedule: the merged result is the schedule's, and each worker's lag is its own."""
    schedule = [(i * 2 * MS, "t") for i in range(40)]
    results = []
    start = time.monotonic() + 0.02
    for w in range(2):
        drv = OpenModelDriver(shard(schedule, w, 2), lambda _t: "ok", duration_s=0.08, slo_us=10**6)
        results.append(drv.run(start))
    merged = OpenModelResult.merge(results)
    assert merged.scheduled == merged.sent == len(schedule)
    assert merged.target_rate == pytest.approx(len(schedule) / 0.08)
    assert merged.send_lag.count == sum(r.send_lag.count for r in results) == len(schedule)
    # Run one after the other, the second worker started late: its lag is its own, not spread over the run.
    assert results[1].send_lag.percentile_ms(50) > results[0].send_lag.percentile_ms(50)


def test_shard_rejects_an_index_outside_the_worker_count() -> None:
    with pytest.raises(ValueError):
        shard([(0, "a")], 2, 2)


def test_a_stalled_request_counts_its_stall_and_never_delays_later_sends() -> None:
    # Ten arrivals 10 ms apart; the first one stalls 500 ms on the "server".
    schedule = [(i * 10 * MS, "t") for i in range(10)]
    sent_at: list[float] = []

    def send(_tenant: str) -> Outcome:
        sent_at.append(time.monotonic())
        gevent.sleep(0.5 if len(sent_at) == 1 else 0.0)
        return "ok"

    driver = OpenModelDriver(schedule, send, duration_s=0.1, slo_us=100 * MS)
    start = time.monotonic()
    result = driver.run(start)
    c = result.tenants["t"]
    assert (c.offered, c.sent, c.completed, c.within_slo, c.dropped) == (10, 10, 10, 9, 0)
    assert c.latency.percentile_ms(100) >= 500  # the stall counts in full
    assert c.latency.percentile_ms(90) < 200  # the others were not held up behind it
    # Later sends went out on schedule while the first request stalled.
    assert all(abs(t - (start + i * 0.01)) < 0.1 for i, t in enumerate(sent_at))


def test_latency_is_measured_from_the_intended_time_even_when_the_generator_is_late() -> None:
    # The generator starts 200 ms behind its schedule: the server answers at once, yet every
    # request's latency includes the 200 ms it was sent late (no coordinated omission).
    schedule = [(i * MS, "t") for i in range(5)]
    driver = OpenModelDriver(schedule, lambda _t: "ok", duration_s=0.005, slo_us=100 * MS)
    result = driver.run(time.monotonic() - 0.2)
    c = result.tenants["t"]
    assert c.completed == 5 and c.within_slo == 0
    assert c.latency.percentile_ms(0) >= 190
    assert result.send_lag.percentile_ms(0) >= 190


def test_requests_over_the_in_flight_cap_are_dropped_and_counted() -> None:
    schedule = [(0, "a"), (0, "b"), (0, "a"), (0, "b"), (0, "a")]
    driver = OpenModelDriver(schedule, lambda _t: (gevent.sleep(0.05), "ok")[1], duration_s=1.0, slo_us=10**6,
                             max_in_flight=2)
    result = driver.run()
    assert (result.scheduled, result.sent, result.dropped) == (5, 2, 3)
    assert (result.tenants["a"].sent, result.tenants["a"].dropped) == (1, 2)
    assert (result.tenants["b"].sent, result.tenants["b"].dropped) == (1, 1)
    assert result.tenants["a"].offered + result.tenants["b"].offered == 5


def test_errors_and_unanswered_requests_are_counted_apart_from_completions() -> None:
    outcomes: dict[str, Outcome] = {"ok": "ok", "err": "error", "lost": "timeout"}

    def send(tenant: str) -> Outcome:
        if tenant == "hang":
            gevent.sleep(10)
        return outcomes[tenant]

    schedule = [(0, "ok"), (0, "err"), (0, "lost"), (0, "hang")]
    result = OpenModelDriver(schedule, send, duration_s=0.01, slo_us=10**6, drain_s=0.1).run()
    got = {t: (c.completed, c.errors, c.timeouts, c.latency.count) for t, c in result.tenants.items()}
    # Only completions enter the latency histogram, as in the simulation; a request still
    # unanswered at the drain deadline is a timeout.
    assert got == {"ok": (1, 0, 0, 1), "err": (0, 1, 0, 0), "lost": (0, 0, 1, 0), "hang": (0, 0, 1, 0)}


def test_results_survive_json_and_merge_across_workers() -> None:
    schedule = [(i * MS, t) for i, t in enumerate("ababa")]
    parts = []
    for w in range(2):
        drv = OpenModelDriver(shard(schedule, w, 2), lambda _t: "ok", duration_s=0.01, slo_us=10**6)
        parts.append(OpenModelResult.from_json(drv.run().to_json()))
    merged = OpenModelResult.merge(parts)
    assert (merged.scheduled, merged.sent, merged.dropped) == (5, 5, 0)
    assert {t: c.completed for t, c in merged.tenants.items()} == {"a": 3, "b": 2}
    assert merged.tenants["a"].latency.count == 3
    assert merged.target_rate == pytest.approx(500.0)
    assert merged.sent_rate == pytest.approx(5 / merged.send_window_s)


def test_no_request_leaves_before_its_intended_time() -> None:
    # Sends wait on a timerfd where there is one (saaslab.timerfd), on gevent's timers otherwise:
    # either way a request may leave late (and the lag is counted), never early.
    schedule = [(i * 2 * MS, "t") for i in range(50)]
    early: list[float] = []
    start = time.monotonic() + 0.01

    def send(_tenant: str) -> Outcome:
        return "ok"

    driver = OpenModelDriver(schedule, send, duration_s=0.1, slo_us=10**6)
    original = driver._one

    def one(tenant: str, intended: float, c) -> None:  # noqa: ANN001 - the driver's own counters
        if time.monotonic() < intended:
            early.append(intended - time.monotonic())
        original(tenant, intended, c)

    driver._one = one  # type: ignore[method-assign]
    result = driver.run(start)
    assert result.sent == 50 and not early


def test_send_lag_rows_give_the_generators_lateness_per_run() -> None:
    from saaslab.live.harness import send_lag_rows
    from scenarios.kernel.metrics import RunKey

    result = OpenModelResult(duration_s=1.0, scheduled=3, sent=3, dropped=0, send_window_s=1.0, tenants={})
    for late_ms in (1, 2, 50):
        result.send_lag.record_s(late_ms / 1000)
    key = RunKey(run_id="r", pattern="tenancy", design="fifo", seed=1, load_point=0.5, source="live")
    rows = send_lag_rows(key, result, prefix="solo_")
    assert {(r.tenant, r.unit) for r in rows} == {("*", "ms")}
    lag = {r.metric: r.value for r in rows}
    assert set(lag) == {"solo_send_lag_p50", "solo_send_lag_p99", "solo_send_lag_max"}
    assert lag["solo_send_lag_p50"] == pytest.approx(2, rel=0.01)
    assert lag["solo_send_lag_p99"] == lag["solo_send_lag_max"] == pytest.approx(50, rel=0.01)


def test_worker_rows_give_each_processes_share_and_send_lag_beside_the_merged_run() -> None:
    from saaslab.live.harness import LocustRun, worker_rows
    from scenarios.kernel.metrics import RunKey

    outputs = []
    for index, (sent, late_ms) in enumerate(((10, 1), (9, 40))):
        result = OpenModelResult(duration_s=1.0, scheduled=10, sent=sent, dropped=10 - sent, send_window_s=1.0,
                                 tenants={})
        for _ in range(sent):
            result.send_lag.record_s(late_ms / 1000)
        outputs.append({"worker_index": index, "summary": {"open_model": result.to_json()}})
    run = LocustRun("r", list(reversed(outputs)), [], 1.0)
    assert run.open_model().sent == 19 and run.open_model().scheduled == 20
    key = RunKey(run_id="r", pattern="tenancy", design="fifo", seed=1, load_point=0.5, source="live")
    rows = {(r.tenant, r.metric): r.value for r in worker_rows(key, run, prefix="solo_")}
    assert {t for t, _ in rows} == {"worker-0", "worker-1"}
    assert rows[("worker-0", "solo_sent_rate")] == 10 and rows[("worker-1", "solo_sent_rate")] == 9
    assert rows[("worker-1", "solo_target_rate")] == 10 and rows[("worker-1", "solo_scheduled")] == 10
    assert rows[("worker-0", "solo_send_lag_p99")] == pytest.approx(1, rel=0.01)
    assert rows[("worker-1", "solo_send_lag_p99")] == pytest.approx(40, rel=0.01)
