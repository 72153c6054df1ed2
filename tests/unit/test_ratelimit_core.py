"""The rate-limiting cores: bounds over any window, exact remaining/retry/reset, and the side limiters."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_impl.ratelimit.core import (
    ALGORITHMS,
    DEFAULT_SHARES_PCT,
    ROUTE_CLASSES,
    STRICT_ALGORITHMS,
    GcraState,
    LoadShedder,
    Policy,
    SlidingLogState,
    TokenBucketState,
    acquire,
    decide,
    fixed_window,
    gcra,
    gcra_interval,
    ratelimit_headers,
    release,
    token_bucket,
)

EPOCH = 1_700_000_000_000_000
S = 1_000_000

policies = st.builds(Policy, requests=st.integers(1, 12),
                     window_us=st.sampled_from([12, 100, 1_000, 999_983, S, 60 * S]))
# Gaps in µs: bursts (0, 1), spacing around the window sizes above, and long idle periods.
gaps = st.one_of(st.sampled_from([0, 0, 1, 2]), st.integers(0, 2_000), st.integers(0, 2 * S),
                 st.integers(0, 120 * S))


@st.composite
def traces(draw: st.DrawFn, step_back: bool = False) -> tuple[Policy, list[tuple[int, int]]]:
    """A policy and (now_us, cost) events; with `step_back`, the clock sometimes goes back a little."""
    policy = draw(policies)
    steps = draw(st.lists(st.tuples(gaps, st.integers(0, 2**31)), min_size=1, max_size=40))
    now = EPOCH + draw(st.integers(0, 60 * S))
    events = []
    for gap, noise in steps:
        if step_back and noise % 5 == 0:
            gap = -(noise % (policy.window_us // 2 + 1))
        now += gap
        events.append((now, 1 + noise % policy.requests))
    return policy, events


def _replay(algorithm: str, policy: Policy, events: list[tuple[int, int]]) -> list[tuple[int, int, Any]]:
    """(now, cost, decision) per event, each decided on the state the previous one left."""
    state: Any = None
    out = []
    for now, cost in events:
        d = decide(algorithm, state, now, policy, cost)
        out.append((now, cost, d))
        state = d.state
    return out


def _bound(algorithm: str, policy: Policy, t_first: int, t_last: int) -> int | None:
    """The most units the algorithm may admit between two admissions at t_first <= t_last (None: any)."""
    r, w, span = policy.requests, policy.window_us, t_last - t_first
    if algorithm == "sliding_log":
        return r if span < w else None
    if algorithm in ("fixed_window", "sliding_counter"):
        if t_first // w == t_last // w:
            return r
        return 2 * r if span < w else None
    if algorithm == "token_bucket":
        return r + span * r // w
    if algorithm == "gcra":
        return r + span // gcra_interval(policy)
    raise AssertionError(algorithm)


# --- policy ---------------------------------------------------------------------------------------


def test_policy_comes_from_the_contract_limits_and_refuses_what_lua_cannot_compute() -> None:
    assert Policy.from_limits(100, 60) == Policy(100, 60 * S)
    assert Policy.from_limits(5, 0.5).window_us == 500_000
    for bad in ((0, S), (10, 9), (2**30, 2**30)):
        with pytest.raises(ValueError):
            Policy(*bad)
    with pytest.raises(ValueError, match="cost"):
        fixed_window(None, EPOCH, Policy(3, S), cost=4)
    with pytest.raises(ValueError, match="unknown rate-limit algorithm"):
        decide("leaky_bucket", None, EPOCH, Policy(3, S))
    assert set(ALGORITHMS) == {*STRICT_ALGORITHMS, "naive"}
    assert ALGORITHMS["naive"] is ALGORITHMS["fixed_window"]


# --- properties of every strict algorithm ---------------------------------------------------------


@pytest.mark.parametrize("algorithm", STRICT_ALGORITHMS)
@settings(max_examples=80, deadline=None)
@given(trace=traces())
def test_never_admits_more_than_the_policy_over_any_span(algorithm: str, trace: Any) -> None:
    policy, events = trace
    admitted = [(now, cost) for now, cost, d in _replay(algorithm, policy, events) if d.allowed]
    for i, (t_first, _) in enumerate(admitted):
        units = 0
        for t_last, cost in admitted[i:]:
            units += cost
            bound = _bound(algorithm, policy, t_first, t_last)
            assert bound is None or units <= bound, (t_first, t_last, units, bound)


@pytest.mark.parametrize("algorithm", STRICT_ALGORITHMS)
@settings(max_examples=80, deadline=None)
@given(trace=traces(step_back=True))
def test_remaining_retry_after_and_reset_are_exact(algorithm: str, trace: Any) -> None:
    """From the state a decision leaves, with nothing else arriving:
    `remaining` more unit requests pass at the same instant and the next does not; a refused
    request passes exactly `retry_after_us` later and not 1 µs sooner; after `reset_us` the
    limiter decides as for a tenant never seen. The clock sometimes steps back: the state never does."""
    policy, events = trace
    newest = 0
    for now, cost, d in _replay(algorithm, policy, events):
        if d.state is not None:
            if isinstance(d.state, SlidingLogState):
                assert list(d.state.entries) == sorted(d.state.entries)
            assert _stamp(d.state) >= newest
            newest = _stamp(d.state)
        state = d.state
        for _ in range(d.remaining):
            step = decide(algorithm, state, now, policy)
            assert step.allowed
            state = step.state
        assert not decide(algorithm, state, now, policy).allowed
        if d.allowed:
            assert d.retry_after_us == 0
        else:
            assert d.retry_after_us > 0
            assert decide(algorithm, d.state, now + d.retry_after_us, policy, cost).allowed
            assert not decide(algorithm, d.state, now + d.retry_after_us - 1, policy, cost).allowed
        later = now + d.reset_us
        fresh = decide(algorithm, None, later, policy)
        recovered = decide(algorithm, d.state, later, policy)
        assert (recovered.allowed, recovered.remaining, recovered.reset_us) == (
            fresh.allowed, fresh.remaining, fresh.reset_us)


def _stamp(state: Any) -> int:
    """The newest time a state holds."""
    if isinstance(state, SlidingLogState):
        return state.entries[-1]
    if isinstance(state, TokenBucketState):
        return state.updated_us
    if isinstance(state, GcraState):
        return state.tat_us
    return state.window_start_us


# --- each algorithm by hand -----------------------------------------------------------------------


def test_fixed_window_admits_twice_the_limit_across_a_boundary() -> None:
    policy = Policy(10, S)
    boundary = EPOCH + 7 * S
    state = None
    admitted = 0
    for now in [boundary - 1] * 15 + [boundary] * 15:
        d = fixed_window(state, now, policy)
        state, admitted = d.state, admitted + d.allowed
    assert admitted == 20  # within 1 µs: the 2x boundary burst
    d = fixed_window(state, boundary + 5, policy)
    assert not d.allowed and d.retry_after_us == S - 5 == d.reset_us
    assert [decide(a, None, boundary - 1, policy).allowed for a in STRICT_ALGORITHMS] == [True] * 5


def test_token_bucket_refills_exactly_without_drift() -> None:
    # 3 tokens per 10 µs: one every 3.33 µs. A rounded interval (3 µs) would admit 33 in 100 µs.
    policy = Policy(3, 10)
    state: TokenBucketState | None = None
    admitted = 0
    for now in range(EPOCH, EPOCH + 101):
        d = token_bucket(state, now, policy)
        state, admitted = d.state, admitted + d.allowed
    assert admitted == 3 + 30
    assert state is not None and state.level < policy.window_us
    # Empty bucket: a token takes 10/3 µs, so the wait is ceil(10 - level) / 3 µs.
    d = token_bucket(TokenBucketState(0, EPOCH), EPOCH, policy)
    assert not d.allowed and d.retry_after_us == 4 and d.reset_us == 10
    assert not token_bucket(TokenBucketState(0, EPOCH), EPOCH + 3, policy).allowed
    assert token_bucket(TokenBucketState(0, EPOCH), EPOCH + 4, policy).allowed


def test_gcra_emits_one_request_per_interval_after_its_burst() -> None:
    policy = Policy(10, S)  # T = 100 ms, burst of 10
    state: GcraState | None = None
    for i in range(10):
        d = gcra(state, EPOCH, policy)
        assert d.allowed and d.remaining == 9 - i
        state = d.state
    d = gcra(state, EPOCH, policy)
    assert not d.allowed and d.retry_after_us == 100_000 and d.reset_us == S
    assert not gcra(state, EPOCH + 99_999, policy).allowed
    d = gcra(state, EPOCH + 100_000, policy)
    assert d.allowed and d.remaining == 0
    # Cost 3 after that: three intervals to wait.
    d = gcra(d.state, EPOCH + 100_000, policy, cost=3)
    assert not d.allowed and d.retry_after_us == 300_000


# --- concurrency limiter and load shedder ---------------------------------------------------------


def test_concurrency_limiter_counts_leases_and_reclaims_expired_ones() -> None:
    state = None
    for i in range(3):
        d = acquire(state, EPOCH + i, f"w{i}", limit=3, lease_us=1_000)
        assert d.allowed and d.in_flight == i + 1
        state = d.state
    d = acquire(state, EPOCH + 10, "w3", limit=3, lease_us=1_000)
    assert not d.allowed and d.in_flight == 3 and d.retry_after_us == 990  # w0 expires at +1000
    # Renewing a held lease keeps one slot.
    d = acquire(state, EPOCH + 10, "w1", limit=3, lease_us=1_000)
    assert d.allowed and d.in_flight == 3
    state = release(d.state, "w1")
    d = acquire(state, EPOCH + 11, "w3", limit=3, lease_us=1_000)
    assert d.allowed and d.in_flight == 3
    # A crashed worker never releases: its slot returns when the lease expires.
    assert not acquire(d.state, EPOCH + 999, "w4", limit=3, lease_us=1_000).allowed
    late = acquire(d.state, EPOCH + 1_000, "w4", limit=3, lease_us=1_000)
    assert late.allowed and late.in_flight == 3
    assert late.state.entries == ((EPOCH + 1_002, "w2"), (EPOCH + 1_011, "w3"), (EPOCH + 2_000, "w4"))


def test_load_shedder_sheds_lower_classes_first_and_keeps_capacity_for_critical() -> None:
    shedder = LoadShedder(capacity=10)
    admitted_up_to = {c: max(n for n in range(11) if shedder.admit(n - 1, c)) for c in ROUTE_CLASSES}
    assert admitted_up_to == {"critical": 10, "default": 8, "sheddable": 5}
    assert DEFAULT_SHARES_PCT["critical"] == 100
    # A flood of reads stops at 50%, other writes at 80%; critical traffic still gets the rest.
    in_flight = 0
    for _ in range(50):
        in_flight += shedder.admit(in_flight, "sheddable")
    assert in_flight == 5
    for _ in range(50):
        in_flight += shedder.admit(in_flight, "default")
    assert in_flight == 8
    for _ in range(5):
        in_flight += shedder.admit(in_flight, "critical")
    assert in_flight == 10
    assert not shedder.admit(10, "critical")
    # A tiny capacity still admits one request of every class when idle.
    assert all(LoadShedder(capacity=1).admit(0, c) for c in ROUTE_CLASSES)


@pytest.mark.parametrize("shares", [
    {"critical": 90, "default": 80, "sheddable": 50},  # critical must get everything
    {"critical": 100, "default": 50, "sheddable": 80},  # sheddable above default: not shed first
    {"critical": 100, "default": 80},  # a class missing
    {"critical": 100, "default": 80, "sheddable": 0},
])
def test_load_shedder_refuses_shares_that_would_not_shed_critical_last(shares: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        LoadShedder(capacity=10, shares_pct=shares)


def test_load_shedder_refuses_unknown_classes_and_capacities() -> None:
    with pytest.raises(ValueError, match="unknown route class"):
        LoadShedder(capacity=10).admit(0, "urgent")
    with pytest.raises(ValueError, match="capacity"):
        LoadShedder(capacity=0)


def test_headers_follow_the_contract() -> None:
    policy = Policy(100, 60 * S)
    assert ratelimit_headers(policy, allowed=True, remaining=7, reset_us=1_500_000, retry_after_us=0) == {
        "RateLimit-Limit": "100", "RateLimit-Remaining": "7", "RateLimit-Reset": "2",
        "RateLimit-Policy": "100;w=60"}
    refused = ratelimit_headers(Policy.from_limits(5, 0.5), allowed=False, remaining=0, reset_us=200,
                                retry_after_us=200)
    assert refused["Retry-After"] == "1" and refused["RateLimit-Policy"] == "5;w=0.5"
    assert ratelimit_headers(policy, allowed=False, remaining=0, reset_us=0,
                             retry_after_us=2_000_001)["Retry-After"] == "3"
