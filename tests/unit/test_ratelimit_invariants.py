"""The rate-limit invariants: exact on hand-built histories, agree with brute force, pass the strict
cores (the sliding counter in unaligned windows too, against its derived bound) and catch the naive
design's race."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_impl.ratelimit.core import STRICT_ALGORITHMS, Policy, gcra_interval, sliding_counter
from reference_impl.ratelimit.invariants import (
    F_DECIDE,
    check_history,
    decision_value,
    no_over_admission,
    quiet_never_limited,
    sliding_counter_bound,
)
from saaslab.history import History, Op
from scenarios.kernel.workload import arrivals
from scenarios.ratelimit import heavy_tenant, race_history, replay

EPOCH = 1_700_000_000_000_000


def _history(algorithm: str, policy: Policy, admitted_at: list[int], *, tenant: str = "t",
             refused_at: tuple[int, ...] = (), quiet: bool = False) -> list[Op]:
    h = History(process="test")
    for t, allowed in sorted([(t, True) for t in admitted_at] + [(t, False) for t in refused_at]):
        op = h.invoke(F_DECIDE, decision_value(tenant=tenant, time_us=EPOCH + t, allowed=allowed, policy=policy,
                                               algorithm=algorithm, quiet=quiet), time_us=EPOCH + t)
        h.complete(op, "ok", time_us=EPOCH + t)
    return h.ops


def test_sliding_log_allows_requests_per_any_window() -> None:
    p = Policy(2, 10)
    assert no_over_admission(_history("sliding_log", p, [0, 5, 10, 15])).valid
    bad = no_over_admission(_history("sliding_log", p, [0, 5, 9]))
    assert not bad.valid and bad.violations == 1
    assert bad.examples == [{"tenant": "t", "algorithm": "sliding_log", "requests": 2, "window_us": 10,
                             "window_start_us": EPOCH, "admitted": 3, "bound": 2}]


@pytest.mark.parametrize("algorithm", ["fixed_window", "naive"])
def test_fixed_windows_may_double_at_a_boundary_but_not_within_a_window(algorithm: str) -> None:
    p = Policy(3, 10)
    assert no_over_admission(_history(algorithm, p, [7, 8, 9, 10, 11, 12])).valid  # 6 in 6 µs
    bad = no_over_admission(_history(algorithm, p, [10, 11, 12, 19]))
    assert not bad.valid and bad.examples[0]["window_start_us"] == EPOCH + 10


def test_the_sliding_counter_is_held_to_its_bound_in_unaligned_windows_too() -> None:
    p = Policy(3, 10)
    aligned = no_over_admission(_history("sliding_counter", p, [10, 11, 12, 19]))
    assert not aligned.valid and aligned.examples[0]["window_start_us"] == EPOCH + 10
    # Each aligned window holds 3, but the counter would have refused at 10: the previous window's 3
    # still weigh 3 * (10 - 0) / 10 there. The span (0, 10] holds 4 against a bound of 3 + 3 * 0 // 10.
    doubled = no_over_admission(_history("sliding_counter", p, [7, 8, 9, 10, 11, 12]))
    assert not doubled.valid
    assert doubled.examples[0] == {"tenant": "t", "algorithm": "sliding_counter", "requests": 3, "window_us": 10,
                                   "window_end_us": EPOCH + 10, "admitted": 4, "bound": 3}
    assert no_over_admission(_history("fixed_window", p, [7, 8, 9, 10, 11, 12])).valid


def _sliding_counter_admissions(policy: Policy, times: list[int]) -> list[int]:
    state = None
    admitted = []
    for t in times:
        d = sliding_counter(state, EPOCH + t, policy)
        state = d.state
        if d.allowed:
            admitted.append(t)
    return admitted


def test_the_sliding_counter_bound_is_reached_when_a_window_ends_in_a_burst() -> None:
    p = Policy(3, 10)
    admitted = _sliding_counter_admissions(p, [9, 9, 9, *range(10, 20)])
    assert admitted == [9, 9, 9, 14, 17]  # 5 within (7, 17]: 3 + 3 * 7 // 10, above the limit of 3
    assert sliding_counter_bound(p, previous=3, elapsed_us=7) == 5
    assert no_over_admission(_history("sliding_counter", p, admitted)).valid
    over = no_over_admission(_history("sliding_counter", p, [9, 9, 9, 14, 16]))  # 16: 3 + 3 * 6 // 10 = 4
    assert not over.valid and over.examples[0]["window_end_us"] == EPOCH + 16
    # The most it can ever admit in one span of the window: 2 * requests - 1.
    big = Policy(100, 1_000_000)
    burst = _sliding_counter_admissions(big, [999_999] * 100 + list(range(1_000_000, 1_999_999, 97)))
    end = max(t for t in burst if t < 1_999_999)
    assert sum(1 for t in burst if end - 1_000_000 < t <= end) == 199
    assert no_over_admission(_history("sliding_counter", big, burst)).valid


@settings(max_examples=200, deadline=None)
@given(requests=st.integers(1, 6), window=st.sampled_from([7, 10, 25]),
       gaps=st.lists(st.integers(0, 9), max_size=60))
def test_every_history_of_the_sliding_counter_core_passes_its_checker(requests: int, window: int,
                                                                     gaps: list[int]) -> None:
    """The bound is a theorem about `core.sliding_counter`: no trace of it may break it."""
    p = Policy(requests, window)
    times = [sum(gaps[:i + 1]) for i in range(len(gaps))]
    assert no_over_admission(_history("sliding_counter", p, _sliding_counter_admissions(p, times))).valid


def _brute_force_sliding_counter_valid(policy: Policy, admitted: list[int]) -> bool:
    """Every span [s, s + w), s at any µs: at most r aligned, else r + floor(c * (a - 1) / w), a = s mod w and
    c the admissions of the aligned window s lies in (docs/contract.md)."""
    r, w = policy.requests, policy.window_us
    if not admitted:
        return True
    for s in range(min(admitted) - w, max(admitted) + 1):
        a = s % w
        n = sum(1 for t in admitted if s <= t < s + w)
        c = sum(1 for t in admitted if t // w == s // w)
        if n > (r if a == 0 else r + c * (a - 1) // w):
            return False
    return True


def test_bucket_algorithms_allow_their_refill_on_top_of_a_burst() -> None:
    p = Policy(4, 100)  # refill: one per 25 µs
    burst_then_refill = [0, 0, 0, 0, 25, 50, 75, 100]
    assert no_over_admission(_history("token_bucket", p, burst_then_refill)).valid
    assert no_over_admission(_history("gcra", p, burst_then_refill)).valid
    for algorithm in ("token_bucket", "gcra"):
        bad = no_over_admission(_history(algorithm, p, [0, 0, 0, 0, 24]))
        assert not bad.valid
        assert bad.examples[0] == {"tenant": "t", "algorithm": algorithm, "requests": 4, "window_us": 100,
                                   "span_start_us": EPOCH, "span_us": 24, "admitted": 5, "bound": 4}


def _brute_force_valid(algorithm: str, policy: Policy, admitted: list[int]) -> bool:
    r, w = policy.requests, policy.window_us
    times = sorted(admitted)
    for i, a in enumerate(times):
        for j in range(i, len(times)):
            n, span = j - i + 1, times[j] - a
            if algorithm == "sliding_log" and span < w and n > r:
                return False
            if algorithm == "token_bucket" and n > r + span * r // w:
                return False
            if algorithm == "gcra" and n > r + span // gcra_interval(policy):
                return False
    if algorithm == "fixed_window":
        return all(sum(1 for t in times if t // w == k) <= r for k in {t // w for t in times})
    if algorithm == "sliding_counter":
        return _brute_force_sliding_counter_valid(policy, times)
    return True


@pytest.mark.parametrize("algorithm", ["sliding_log", "token_bucket", "gcra", "fixed_window", "sliding_counter"])
@settings(max_examples=150, deadline=None)
@given(requests=st.integers(1, 5), window=st.sampled_from([8, 10, 25]),
       admitted=st.lists(st.integers(0, 80), max_size=25))
def test_the_one_pass_checks_agree_with_brute_force(algorithm: str, requests: int, window: int,
                                                   admitted: list[int]) -> None:
    p = Policy(requests, window)
    # EPOCH is a multiple of every window here, so aligned windows line up with t // w.
    assert no_over_admission(_history(algorithm, p, admitted)).valid == _brute_force_valid(algorithm, p, admitted)


def test_quiet_tenants_must_never_be_refused() -> None:
    p = Policy(5, 1_000)
    ok = _history("gcra", p, [1, 2, 3], tenant="q", quiet=True) + _history("gcra", p, [1], refused_at=(2,))
    assert quiet_never_limited(ok).valid and quiet_never_limited(ok).checked == 3
    refused = _history("gcra", p, [1], tenant="q", refused_at=(2,))
    assert quiet_never_limited(refused).valid  # not flagged quiet
    result = quiet_never_limited(refused, quiet_tenants={"q"})
    assert not result.valid and result.violations == 1 and result.examples[0]["tenant"] == "q"


def test_ops_other_than_completed_decisions_are_ignored() -> None:
    p = Policy(1, 1_000)
    h = History(process="x")
    for t in (1, 2, 3):
        h.invoke(F_DECIDE, decision_value(tenant="t", time_us=EPOCH + t, allowed=True, policy=p,
                                          algorithm="sliding_log"), time_us=EPOCH + t)
    op = h.invoke(F_DECIDE, decision_value(tenant="t", time_us=EPOCH, allowed=True, policy=p,
                                           algorithm="sliding_log"), time_us=EPOCH)
    h.complete(op, "info", time_us=EPOCH)
    result = no_over_admission(h.ops)
    assert result.valid and result.checked == 0


@pytest.mark.parametrize("algorithm", STRICT_ALGORITHMS)
def test_strict_cores_pass_on_bursty_overload_and_on_the_race(algorithm: str) -> None:
    h = History(process="sim")
    replay(algorithm, arrivals(heavy_tenant(5.0, duration_s=6.0), seed=1), history=h)
    race = race_history(algorithm, 4.0, seed=0)
    assert all(r.valid for r in check_history(h.ops + race.ops))
    assert sum(op.value["allowed"] for op in race.ops if op.type == "ok") == 50


def test_the_naive_design_fails_under_concurrency_and_passes_alone() -> None:
    race = race_history("naive", 4.0, seed=0)  # 200 requests within 2 ms at a limit of 50
    result = no_over_admission(race.ops)
    assert not result.valid
    assert result.examples[0]["admitted"] > 50 and result.examples[0]["bound"] == 50
    # The same decision without concurrency (one at a time) keeps the fixed window's promise.
    h = History(process="sim")
    replay("naive", arrivals(heavy_tenant(5.0, duration_s=6.0), seed=1), history=h)
    assert no_over_admission(h.ops).valid
