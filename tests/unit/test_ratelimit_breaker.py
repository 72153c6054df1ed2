"""The Redis circuit breaker: exact transitions on an injected clock, one probe per window however
many callers race for it, and the failure policy the middleware applies."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_impl.ratelimit.breaker import (
    UNAVAILABLE_STATUS,
    BreakerConfig,
    BreakerListener,
    BreakerState,
    CircuitBreaker,
    FailurePolicy,
    redis_breaker,
)

S = 1_000_000


@dataclass
class Recorder(BreakerListener):
    """Every hook call, in order, as plain tuples."""

    events: list[tuple[Any, ...]] = field(default_factory=list)

    def state_change(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState, now_us: int) -> None:
        self.events.append((now_us, old.name, new.name))

    def success(self, breaker: CircuitBreaker, now_us: int) -> None:
        self.events.append((now_us, "success"))

    def failure(self, breaker: CircuitBreaker, now_us: int) -> None:
        self.events.append((now_us, "failure"))

    def transitions(self) -> list[tuple[Any, ...]]:
        return [e for e in self.events if len(e) == 3]


def breaker(fail_max: int = 3, reset_timeout_us: int = S) -> tuple[CircuitBreaker, Recorder]:
    recorder = Recorder()
    b = redis_breaker(fail_max=fail_max, reset_timeout_us=reset_timeout_us)
    b.add_listener(recorder)
    return b, recorder


# --- transitions ----------------------------------------------------------------------------------


def test_it_opens_after_exactly_fail_max_consecutive_failures() -> None:
    b, rec = breaker(fail_max=3)
    for t in (10, 20):
        assert b.allow(t)
        b.record_failure(t)
    b.record_success(30)  # a success in between resets the count
    for t in (40, 50):
        b.record_failure(t)
    assert b.state.name == "closed" and b.allow(55)
    b.record_failure(60)
    assert b.state.name == "open" and b.state.since_us == 60
    assert rec.transitions() == [(60, "closed", "open")]
    assert [e[1] for e in rec.events if len(e) == 2] == ["failure", "failure", "success"] + ["failure"] * 3


def test_open_refuses_for_the_whole_window_then_lets_one_probe_through() -> None:
    b, rec = breaker(fail_max=1, reset_timeout_us=S)
    b.record_failure(1_000)
    assert not b.allow(1_000) and not b.allow(1_000 + S - 1)
    assert b.retry_after_us(1_000 + S - 1) == 1
    assert b.allow(1_000 + S)  # the probe
    assert b.state.name == "half_open"
    assert [b.allow(1_000 + S + i) for i in range(100)] == [False] * 100
    assert b.retry_after_us(1_000 + S + 10) == S - 10
    b.record_success(1_000 + S + 500)
    assert b.state.name == "closed" and all(b.allow(1_000 + S + 600 + i) for i in range(100))
    assert b.retry_after_us(1_000 + S + 600) == 0
    assert rec.transitions() == [(1_000, "closed", "open"), (1_000 + S, "open", "half_open"),
                                 (1_000 + S + 500, "half_open", "closed")]


def test_a_failed_probe_opens_a_new_whole_window() -> None:
    b, rec = breaker(fail_max=2, reset_timeout_us=S)
    b.record_failure(0)
    b.record_failure(5)
    assert b.allow(S + 5)
    b.record_failure(S + 30_005)  # the probe timed out after 30 ms
    assert b.state.name == "open" and b.state.since_us == S + 30_005
    assert not b.allow(2 * S + 30_004) and b.allow(2 * S + 30_005)
    assert rec.transitions() == [(5, "closed", "open"), (S + 5, "open", "half_open"),
                                 (S + 30_005, "half_open", "open"), (2 * S + 30_005, "open", "half_open")]
    # Closing again starts the failure count from zero: one failure does not reopen it.
    b.record_success(2 * S + 30_100)
    b.record_failure(2 * S + 30_200)
    assert b.state.name == "closed"


def test_outcomes_reported_while_open_neither_close_nor_extend_the_window() -> None:
    b, rec = breaker(fail_max=1, reset_timeout_us=S)
    b.record_failure(0)
    b.record_success(10)  # a call made before it opened, answering late
    b.record_failure(20)
    assert b.state.name == "open" and b.state.since_us == 0
    assert not b.allow(S - 1) and b.allow(S)
    assert rec.transitions() == [(0, "closed", "open"), (S, "open", "half_open")]
    assert [e[1] for e in rec.events if len(e) == 2] == ["failure", "success", "failure"]


def test_a_probe_that_never_reports_is_replaced_after_a_whole_window() -> None:
    b, _ = breaker(fail_max=1, reset_timeout_us=S)
    b.record_failure(0)
    assert b.allow(S)  # the probe's request is then cancelled: no outcome ever arrives
    assert not b.allow(2 * S - 1)
    assert b.allow(2 * S)
    assert b.state.name == "half_open" and not b.allow(2 * S)


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="fail_max"):
        redis_breaker(fail_max=0)
    with pytest.raises(ValueError, match="reset_timeout_us"):
        redis_breaker(reset_timeout_us=0)
    with pytest.raises(ValueError, match="half_open_trials"):
        BreakerConfig(half_open_trials=0)


def test_listeners_added_later_hear_the_next_transition() -> None:
    b = CircuitBreaker(BreakerConfig(fail_max=1, reset_timeout_us=10))
    rec = Recorder()
    b.add_listener(rec)
    b.record_failure(3)
    assert rec.events == [(3, "failure"), (3, "closed", "open")]


def test_the_failure_policy_admits_when_open_and_refuses_with_503_when_closed() -> None:
    assert FailurePolicy("open").admits and not FailurePolicy("closed").admits
    assert FailurePolicy.OPEN == "open" and UNAVAILABLE_STATUS == 503
    with pytest.raises(ValueError):
        FailurePolicy("maybe")


# --- many concurrent callers ----------------------------------------------------------------------


def test_of_many_callers_at_the_end_of_a_window_exactly_one_is_the_probe() -> None:
    b, _ = breaker(fail_max=1, reset_timeout_us=S)
    b.record_failure(0)
    assert sum(b.allow(S) for _ in range(500)) == 1
    assert sum(b.allow(S + i) for i in range(1, 500)) == 0


CALLERS = 20
STAGGER_US = 250
"""Caller i sends at i * 250 µs, then every 20 * 250 µs: one request per 250 µs in all."""
TIMEOUT_US = 30_100
REPLY_US = 600
"""Both off the 250 µs grid, so no completion coincides with a send."""
REDIS_DEAD_UNTIL_US = 3_500_000
HORIZON_US = 4_500_000


def _dead_redis_run() -> dict[str, Any]:
    """20 concurrent callers against a Redis dead from t=0 to 3.5 s, each call timing out after 30.1 ms."""
    env = simpy.Environment()
    b, rec = breaker(fail_max=5, reset_timeout_us=S)
    tried: list[tuple[int, str]] = []  # (send time, the breaker's state before it allowed the call)
    refused: list[int] = []

    def request() -> Generator[simpy.Event, Any, None]:
        before = b.state.name
        if not b.allow(env.now):
            refused.append(env.now)
            return
        tried.append((env.now, before))
        if env.now < REDIS_DEAD_UNTIL_US:
            yield env.timeout(TIMEOUT_US)
            b.record_failure(env.now)
        else:
            yield env.timeout(REPLY_US)
            b.record_success(env.now)

    def caller(i: int) -> Generator[simpy.Event, Any, None]:
        yield env.timeout(i * STAGGER_US)
        while env.now < HORIZON_US:
            env.process(request())
            yield env.timeout(CALLERS * STAGGER_US)

    for i in range(CALLERS):
        env.process(caller(i))
    env.run()
    return {"tried": tried, "refused": refused, "transitions": rec.transitions()}


def test_a_dead_redis_costs_one_timeout_per_window_once_the_breaker_opens() -> None:
    run = _dead_redis_run()
    tried = run["tried"]
    # The 5th failure lands at 1000 + 30100 µs; every call sent before that had already gone to Redis.
    opened = 4 * STAGGER_US + TIMEOUT_US
    assert opened == 31_100
    before_open = [t for t, _ in tried if t < opened]
    assert before_open == list(range(0, opened, STAGGER_US)) and len(before_open) == 125
    # Then one probe per window: the first send at least a window after each opening.
    probes = [t for t, state in tried if state != "closed"]
    assert probes == [1_031_250, 2_061_500, 3_091_750, 4_122_000]
    assert run["transitions"] == [
        (31_100, "closed", "open"),
        (1_031_250, "open", "half_open"), (1_061_350, "half_open", "open"),
        (2_061_500, "open", "half_open"), (2_091_600, "half_open", "open"),
        (3_091_750, "open", "half_open"), (3_121_850, "half_open", "open"),
        (4_122_000, "open", "half_open"), (4_122_600, "half_open", "closed"),
    ]
    timeouts = [t for t, _ in tried if t < REDIS_DEAD_UNTIL_US]
    assert len(timeouts) == 125 + 3
    # Everything between opening and closing except the probes was refused without touching Redis,
    # and every send after the probe's reply went to Redis again.
    sends = set(range(0, HORIZON_US, STAGGER_US))
    assert sorted(run["refused"]) == sorted(t for t in sends if opened <= t < 4_122_600 and t not in probes)
    assert [t for t, _ in tried if t > 4_122_000] == sorted(t for t in sends if t > 4_122_600)


# --- any interleaving -----------------------------------------------------------------------------

# A gap is a number of µs or, to land exactly on window edges, one of "r-1", "r" (the reset timeout).
gaps = st.one_of(st.sampled_from([0, 1, "r-1", "r"]), st.integers(0, 300))
ops = st.lists(st.tuples(gaps, st.sampled_from(["call", "call", "succeed", "fail", "fail", "drop"]),
                         st.integers(0, 1_000)), max_size=200)


@settings(max_examples=300, deadline=None)
@given(fail_max=st.integers(1, 4), reset_timeout_us=st.integers(1, 250), steps=ops)
def test_no_interleaving_lets_two_probes_into_one_window(fail_max: int, reset_timeout_us: int,
                                                         steps: list[tuple[int | str, str, int]]) -> None:
    """Callers ask, then report success or failure or vanish (cancelled), in any order; time only grows.

    Whatever happens: a probe (a call let through while not closed) comes at least a whole window
    after the breaker last opened and after the previous probe; the breaker opens from closed exactly
    at the fail_max-th consecutive failure; and it never refuses a caller once a window has passed
    with no probe let through in it (it cannot wedge).
    """
    b, rec = breaker(fail_max=fail_max, reset_timeout_us=reset_timeout_us)
    now = 0
    in_flight: list[int] = []
    probes: list[tuple[int, int]] = []  # (when the breaker last opened, when the probe went)
    consecutive = 0
    for gap, kind, pick in steps:
        now += {"r-1": reset_timeout_us - 1, "r": reset_timeout_us}.get(gap, gap)  # type: ignore[call-overload]
        state = b.state
        if kind == "call":
            last_opened = max((t for t, _, new in rec.transitions() if new == "open"), default=None)
            allowed = b.allow(now)
            if state.name == "closed":
                assert allowed
            else:
                assert last_opened is not None
                window_passed = now - max(last_opened, probes[-1][1] if probes else last_opened) >= reset_timeout_us
                assert allowed == window_passed
            if allowed:
                in_flight.append(now)
                if state.name != "closed":
                    probes.append((last_opened, now))
        elif kind == "drop":
            if in_flight:
                in_flight.pop(pick % len(in_flight))
        elif in_flight:
            in_flight.pop(pick % len(in_flight))
            transitions_before = len(rec.transitions())
            if kind == "succeed":
                b.record_success(now)
            else:
                b.record_failure(now)
            if state.name == "closed":
                consecutive = consecutive + 1 if kind == "fail" else 0
                opened = len(rec.transitions()) > transitions_before
                assert opened == (consecutive == fail_max)
                if opened:
                    consecutive = 0
            elif state.name == "open":
                assert len(rec.transitions()) == transitions_before
            else:
                assert b.state.name == ("closed" if kind == "succeed" else "open")
                consecutive = 0
    for (_, earlier), (_, later) in zip(probes, probes[1:], strict=False):
        assert later - earlier >= reset_timeout_us
    assert all(probe - opened >= reset_timeout_us for opened, probe in probes)
