"""The tenancy decision core: identity checks and the three schedulers, driven by hand."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_impl.common.identity import reject_smuggled_tenant, same_secret
from reference_impl.tenancy.core import (
    API_KEY_PREFIX,
    PLAN_WEIGHTS,
    PLANS,
    SCHEDULER_DESIGNS,
    Job,
    Scheduler,
    hash_api_key,
    make_scheduler,
    new_api_key,
)

TENANTS = ("a", "b", "c", "d")


def _job(tenant: str, n: int = 0, cost_us: int = 1000) -> Job:
    return Job(tenant=tenant, token=(tenant, n), arrival_us=n, cost_us=cost_us)


def _pump(s: Scheduler) -> list[Job]:
    """What a driver does when a slot frees or a job arrives: dispatch until None."""
    out = []
    while (job := s.dispatch()) is not None:
        out.append(job)
    return out


# --- identity --------------------------------------------------------------------------------


def test_api_keys_are_unique_prefixed_and_hashed_stably() -> None:
    keys = {new_api_key() for _ in range(50)}
    assert len(keys) == 50
    assert all(k.startswith(API_KEY_PREFIX) for k in keys)
    k = next(iter(keys))
    assert hash_api_key(k) == hash_api_key(k) != k
    assert len(hash_api_key(k)) == 64
    assert same_secret(k, k) and not same_secret(k, k + "x")


def test_a_tenant_named_anywhere_is_reported() -> None:
    assert reject_smuggled_tenant({"name": "x"}, None, ["limit"]) is None
    assert reject_smuggled_tenant({"name": "x"}, {"Tenant_ID": "t1"}) == "Tenant_ID"
    assert reject_smuggled_tenant(["cursor", "tenant"]) == "tenant"


# --- schedulers: invariants under any sequence of submits, dispatches and releases -----------

ops = st.lists(st.tuples(st.sampled_from(("submit", "pump", "release")), st.sampled_from(TENANTS)),
               max_size=120)


@pytest.mark.parametrize("design", SCHEDULER_DESIGNS)
@given(ops=ops, slots=st.integers(1, 5), per_tenant=st.integers(1, 3))
@settings(max_examples=150, deadline=None)
def test_scheduler_invariants(design: str, ops: list[tuple[str, str]], slots: int, per_tenant: int) -> None:
    s = make_scheduler(design, slots, per_tenant=per_tenant, weights={"a": 1, "b": 2, "c": 4})
    in_flight: Counter[str] = Counter()
    submitted: list[Job] = []
    dispatched: list[Job] = []
    for i, (op, tenant) in enumerate(ops):
        if op == "submit":
            job = _job(tenant, i)
            submitted.append(job)
            s.submit(job)
        elif op == "pump":
            started = _pump(s)
            dispatched += started
            in_flight.update(j.tenant for j in started)
            # Work conserving within the design's rule: a slot stays free only when nobody may take it.
            if s.busy < slots:
                waiting = Counter(j.tenant for j in submitted) - Counter(j.tenant for j in dispatched)
                may_start = [t for t in waiting if design != "bulkhead" or in_flight[t] < per_tenant]
                assert may_start == []
        elif in_flight[tenant] > 0:
            s.release(tenant)
            in_flight[tenant] -= 1
        else:
            with pytest.raises(ValueError):
                s.release(tenant)
        assert s.busy == sum(in_flight.values()) <= slots
        assert s.queued() == len(submitted) - len(dispatched)
        if design == "bulkhead":
            assert max(in_flight.values(), default=0) <= per_tenant
    if design == "fifo":
        assert [j.token for j in dispatched] == [j.token for j in submitted[: len(dispatched)]]


@pytest.mark.parametrize("design", SCHEDULER_DESIGNS)
def test_release_without_a_started_job_raises(design: str) -> None:
    s = make_scheduler(design, 2)
    with pytest.raises(ValueError):
        s.release("a")
    s.submit(_job("a"))
    with pytest.raises(ValueError):  # queued is not started
        s.release("a")
    assert s.dispatch() is not None
    s.release("a")
    with pytest.raises(ValueError):
        s.release("a")
    assert s.busy == 0


@pytest.mark.parametrize("design", SCHEDULER_DESIGNS)
def test_queued_counts_waiting_jobs_only(design: str) -> None:
    s = make_scheduler(design, 2, per_tenant=2)
    for n in range(5):
        s.submit(_job("a", n))
    s.submit(_job("b", 5))
    assert s.queued() == 6
    assert len(_pump(s)) == 2
    assert s.queued() == 4
    assert s.busy == 2


def test_make_scheduler_rejects_unknown_designs() -> None:
    with pytest.raises(ValueError, match="fifo, bulkhead, wfq"):
        make_scheduler("lifo", 1)


def test_bulkhead_lets_another_tenant_past_a_capped_one() -> None:
    s = make_scheduler("bulkhead", 4, per_tenant=2)
    for n in range(5):
        s.submit(_job("noisy", n))
    s.submit(_job("quiet", 9))
    started = _pump(s)
    assert [j.tenant for j in started] == ["noisy", "noisy", "quiet"]
    assert s.busy == 3  # the fourth slot stays free: noisy is at its cap
    s.release("noisy")
    assert [j.tenant for j in _pump(s)] == ["noisy"]


# --- weighted fair queuing ---------------------------------------------------------------------


def _backlogged_shares(weights: dict[str, int], dispatches: int, slots: int = 1) -> Counter[str]:
    """Both tenants keep a long backlog; count who gets each of `dispatches` slot grants."""
    s = make_scheduler("wfq", slots, weights=weights)
    for n in range(dispatches + 10):
        for t in weights:
            s.submit(_job(t, n))
    got: Counter[str] = Counter()
    running: list[str] = []
    while sum(got.values()) < dispatches:
        for job in _pump(s):
            got[job.tenant] += 1
            running.append(job.tenant)
        s.release(running.pop(0))
    return got


def test_wfq_serves_weights_1_to_2_in_proportion() -> None:
    got = _backlogged_shares({"a": 1, "b": 2}, 3000)
    assert got["a"] + got["b"] == 3000
    assert abs(got["b"] - 2 * got["a"]) <= 2


@given(wa=st.integers(1, 8), wb=st.integers(1, 8), slots=st.integers(1, 4), n=st.integers(50, 400))
@settings(max_examples=60, deadline=None)
def test_wfq_share_is_proportional_for_any_weights(wa: int, wb: int, slots: int, n: int) -> None:
    got = _backlogged_shares({"a": wa, "b": wb}, n, slots)
    # Start-time fair queuing's bound: normalised service differs by at most one request's worth
    # of each tenant (plus rounding of the integer tags).
    assert abs(got["a"] / wa - got["b"] / wb) <= 1 / wa + 1 / wb + 1e-3


def test_wfq_gives_an_idle_tenant_no_credit_for_its_idle_time() -> None:
    s = make_scheduler("wfq", 1, weights={"a": 1, "b": 1})
    for n in range(100):
        s.submit(_job("a", n))
    for _ in range(50):
        assert s.dispatch() is not None
        s.release("a")
    for n in range(10):
        s.submit(_job("b", 100 + n))
    order = []
    for _ in range(10):
        job = s.dispatch()
        assert job is not None
        order.append(job.tenant)
        s.release(job.tenant)
    # b arrives at the current virtual time, so it alternates with a instead of taking 10 in a row.
    assert order.count("a") == 5 and order.count("b") == 5


def test_wfq_flooding_tenant_does_not_delay_a_newcomer() -> None:
    s = make_scheduler("wfq", 1, weights={"noisy": 1, "quiet": 1})
    for n in range(1000):
        s.submit(_job("noisy", n))
    assert s.dispatch() is not None
    s.submit(_job("quiet", 1000))
    s.release("noisy")
    nxt = s.dispatch()
    assert nxt is not None and nxt.tenant == "quiet"


def test_plan_weights_grow_with_the_plan() -> None:
    assert [PLAN_WEIGHTS[p] for p in PLANS] == sorted(PLAN_WEIGHTS[p] for p in PLANS)
    assert len(set(PLAN_WEIGHTS.values())) == len(PLANS)


def test_if_match_reads_strong_version_tags_and_star() -> None:
    from reference_impl.tenancy.core import etag, if_match_versions

    assert etag(7) == '"7"' and if_match_versions(etag(7)) == frozenset({7})
    assert if_match_versions("*") is None and if_match_versions(" * ") is None
    assert if_match_versions('"1", "3" ,W/"4"') == frozenset({1, 3})
    for nothing in ('W/"2"', '"x"', "2", '""', '"-1"', '"0"', f'"{2**63}"', "", '"٣"'):
        assert if_match_versions(nothing) == frozenset(), nothing
