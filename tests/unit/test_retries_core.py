"""The retry cores: delay bounds and distributions per policy, Retry-After, exact budget math, breaker states."""

from __future__ import annotations

import random
import statistics
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference_impl.retries.core import (
    BROOKER_POLICIES,
    POLICIES,
    RETRY_UNITS,
    US_PER_S,
    BreakerConfig,
    BreakerListener,
    BreakerState,
    CircuitBreaker,
    Closed,
    HalfOpen,
    Open,
    RetryBudget,
    honour_retry_after,
    make_policy,
    parse_retry_after,
)

MS = 1_000
NOW = 1_700_000_000 * US_PER_S

params = st.tuples(st.integers(1, 50 * MS), st.integers(0, 5_000 * MS)).map(lambda bc: (bc[0], bc[0] + bc[1]))


def _expected_bounds(name: str, base: int, cap: int, attempt: int, previous: int) -> tuple[int, int]:
    v = min(cap, base * 2**attempt)
    return {
        "no_backoff": (0, 0),
        "fixed": (base, base),
        "exponential": (v, v),
        "full_jitter": (0, v),
        "equal_jitter": (v // 2, v),
        "decorrelated_jitter": (base, min(cap, 3 * max(base, previous))),
    }[name]


def test_the_registry_holds_the_six_policies_and_brookers_five() -> None:
    assert list(POLICIES) == ["no_backoff", "fixed", "exponential", "full_jitter", "equal_jitter", "decorrelated_jitter"]
    assert set(BROOKER_POLICIES) == set(POLICIES) - {"fixed"}
    assert all(make_policy(n).name == n for n in POLICIES)
    defaults = make_policy("full_jitter")
    assert (defaults.base_us, defaults.cap_us, defaults.max_attempts) == (5 * MS, 2_000 * MS, None)


@pytest.mark.parametrize("name", list(POLICIES))
@given(bc=params, attempt=st.integers(1, 200), previous=st.integers(0, 10_000 * MS), seed=st.integers(0, 2**32))
def test_every_delay_lies_within_its_policys_bounds(name: str, bc: tuple[int, int], attempt: int, previous: int,
                                                    seed: int) -> None:
    base, cap = bc
    policy = make_policy(name, base_us=base, cap_us=cap)
    delay = policy.next_delay_us(attempt, previous, random.Random(seed))
    low, high = _expected_bounds(name, base, cap, attempt, previous)
    assert isinstance(delay, int) and low <= delay <= high <= cap


@pytest.mark.parametrize("name", list(POLICIES))
@given(max_attempts=st.integers(1, 12), seed=st.integers(0, 2**32))
def test_a_policy_gives_up_exactly_when_max_attempts_have_been_made(name: str, max_attempts: int, seed: int) -> None:
    policy = make_policy(name, max_attempts=max_attempts)
    rng = random.Random(seed)
    delays = [policy.next_delay_us(a, 0, rng) for a in range(1, max_attempts + 3)]
    assert all(d is not None for d in delays[: max_attempts - 1])
    assert delays[max_attempts - 1:] == [None, None, None]


def test_the_exponential_term_doubles_from_twice_base_to_the_cap() -> None:
    policy = make_policy("exponential", base_us=5 * MS, cap_us=2_000 * MS)
    rng = random.Random(0)
    delays = [policy.next_delay_us(a, 0, rng) for a in range(1, 10)]
    assert delays == [10 * MS, 20 * MS, 40 * MS, 80 * MS, 160 * MS, 320 * MS, 640 * MS, 1_280 * MS, 2_000 * MS]
    assert policy.next_delay_us(10**9, 0, rng) == 2_000 * MS  # no giant integer built for a huge attempt


@pytest.mark.parametrize(("name", "mean_of_v", "sd_of_v"), [
    ("full_jitter", 0.5, 12**-0.5),      # U(0, v)
    ("equal_jitter", 0.75, 48**-0.5),    # v/2 + U(0, v/2)
])
def test_jittered_delays_are_uniform_over_their_range(name: str, mean_of_v: float, sd_of_v: float) -> None:
    policy = make_policy(name, base_us=5 * MS, cap_us=2_000 * MS)
    rng = random.Random(42)
    v = 160 * MS  # attempt 5
    samples = [policy.next_delay_us(5, 0, rng) for _ in range(20_000)]
    assert statistics.fmean(samples) / v == pytest.approx(mean_of_v, abs=0.01)
    assert statistics.pstdev(samples) / v == pytest.approx(sd_of_v, abs=0.01)
    # Each tenth of the range gets its tenth of the samples.
    low = 0 if name == "full_jitter" else v // 2
    deciles = [0] * 10
    for s in samples:
        deciles[min(9, (s - low) * 10 // (v - low))] += 1
    assert all(abs(d / len(samples) - 0.1) < 0.01 for d in deciles)


def test_decorrelated_jitter_grows_from_base_and_settles_under_the_cap() -> None:
    policy = make_policy("decorrelated_jitter", base_us=5 * MS, cap_us=2_000 * MS)
    rng = random.Random(7)
    first = [policy.next_delay_us(1, 0, rng) for _ in range(20_000)]
    # From previous = base: U(base, 3 base), mean 2 base.
    assert statistics.fmean(first) == pytest.approx(10 * MS, rel=0.01)
    assert min(first) >= 5 * MS and max(first) <= 15 * MS
    walks = []
    for _ in range(2_000):
        previous = 0
        for attempt in range(1, 30):
            previous = policy.next_delay_us(attempt, previous, rng)  # type: ignore[assignment]
        walks.append(previous)
    # After many retries the walk never converges: it reaches the cap yet can fall back near base at
    # any step (U(base, 3 previous)), so clients that collided once stay spread out.
    assert 600 * MS < statistics.fmean(walks) < 1_200 * MS
    assert max(walks) == 2_000 * MS and min(walks) < 100 * MS


def test_a_seeded_rng_reproduces_a_schedule() -> None:
    def schedule(seed: int) -> list[int | None]:
        policy, rng, previous, out = make_policy("decorrelated_jitter", max_attempts=8), random.Random(seed), 0, []
        for attempt in range(1, 9):
            delay = policy.next_delay_us(attempt, previous, rng)
            out.append(delay)
            previous = delay or 0
        return out

    assert schedule(3) == schedule(3) != schedule(4)
    assert schedule(3)[-1] is None


@pytest.mark.parametrize("kwargs", [{"base_us": 0}, {"base_us": 10, "cap_us": 9}, {"max_attempts": 0}])
def test_bad_parameters_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        make_policy("full_jitter", **kwargs)


def test_unknown_policies_and_attempt_zero_are_refused() -> None:
    with pytest.raises(ValueError, match="choose one of no_backoff, fixed"):
        make_policy("linear")
    with pytest.raises(ValueError, match="starts at 1"):
        make_policy("fixed").next_delay_us(0, 0, random.Random(0))


# --- Retry-After --------------------------------------------------------------------------------

def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    assert parse_retry_after("120", NOW) == 120 * US_PER_S
    assert parse_retry_after(" 0 ", NOW) == 0
    later = datetime.fromtimestamp(NOW / US_PER_S, UTC) + timedelta(seconds=30)
    assert parse_retry_after(format_datetime(later, usegmt=True), NOW) == 30 * US_PER_S
    earlier = later - timedelta(seconds=60)
    assert parse_retry_after(format_datetime(earlier, usegmt=True), NOW) == 0
    for bad in (None, "", "soon", "-5", "1.5", "Wed, 99 Foo 2015 07:28:00 GMT"):
        assert parse_retry_after(bad, NOW) is None


@given(delay=st.integers(0, 10**9), retry_after=st.integers(0, 10**9))
def test_retry_after_raises_the_wait_and_never_lowers_it(delay: int, retry_after: int) -> None:
    assert honour_retry_after(delay, retry_after) == max(delay, retry_after)
    assert honour_retry_after(delay, None) == delay
    assert honour_retry_after(None, retry_after) is None  # it buys no attempts the policy ran out of


def test_a_retry_after_longer_than_the_caller_can_wait_gives_up() -> None:
    assert honour_retry_after(10 * MS, 5 * US_PER_S, max_wait_us=5 * US_PER_S) == 5 * US_PER_S
    assert honour_retry_after(10 * MS, 5 * US_PER_S + 1, max_wait_us=5 * US_PER_S) is None
    policy = make_policy("full_jitter")
    delay = policy.next_delay_us(1, 0, random.Random(0))
    assert honour_retry_after(delay, parse_retry_after("2", NOW)) == 2 * US_PER_S


# --- Retry budget -------------------------------------------------------------------------------

def _spend_all(budget: RetryBudget, state: object, now: int) -> tuple[int, object]:
    n = 0
    while True:
        ok, state = budget.try_retry(state, now)  # type: ignore[arg-type]
        if not ok:
            return n, state
        n += 1


def test_a_new_budget_holds_burst_retries_and_successes_refill_it_at_the_ratio() -> None:
    budget = RetryBudget(ratio_pct=10, min_per_s=0, burst=3)
    spent, state = _spend_all(budget, None, NOW)
    assert spent == 3 and budget.available(state, NOW) == 0
    for i in range(9):
        state = budget.on_success(state, NOW + i)
        assert budget.try_retry(state, NOW + i)[0] is False
    state = budget.on_success(state, NOW + 9)  # the tenth success: one whole retry
    ok, state = budget.try_retry(state, NOW + 9)
    assert ok and state.units == 0
    for _ in range(1_000):
        state = budget.on_success(state, NOW + 10)
    assert budget.available(state, NOW + 10) == 3  # banked up to burst, no further


def test_the_floor_refills_min_per_s_retries_per_second_exactly() -> None:
    budget = RetryBudget(ratio_pct=0, min_per_s=2, burst=5)
    _, state = _spend_all(budget, None, NOW)
    assert budget.try_retry(state, NOW + 499_999)[0] is False
    ok, state = budget.try_retry(state, NOW + 500_000)
    assert ok and state.units == 0
    assert budget.available(state, NOW + 500_000 + 10 * US_PER_S) == 5
    # A clock stepping back adds nothing and does not move the state's time back.
    assert budget.try_retry(state, NOW) == (False, state)


@given(ratio=st.integers(0, 100), floor=st.integers(0, 5), burst=st.integers(1, 20),
       events=st.lists(st.tuples(st.booleans(), st.integers(0, 3 * US_PER_S)), max_size=300))
def test_retries_never_exceed_burst_plus_the_ratio_of_successes_plus_the_floor(
        ratio: int, floor: int, burst: int, events: list[tuple[bool, int]]) -> None:
    budget = RetryBudget(ratio_pct=ratio, min_per_s=floor, burst=burst)
    state, now, successes, retries = None, NOW, 0, 0
    for success, gap in events:
        now += gap
        if success:
            state = budget.on_success(state, now)
            successes += 1
        else:
            ok, state = budget.try_retry(state, now)
            retries += ok
    # In units: what was spent is at most the initial bucket plus every deposit.
    assert retries * RETRY_UNITS <= burst * RETRY_UNITS + successes * ratio * US_PER_S + (now - NOW) * floor * 100


def test_bad_budgets_are_refused() -> None:
    for kwargs in ({"ratio_pct": -1}, {"min_per_s": -1}, {"burst": 0}):
        with pytest.raises(ValueError):
            RetryBudget(**kwargs)


# --- Circuit breaker ----------------------------------------------------------------------------

def _breaker(**kwargs: int) -> tuple[CircuitBreaker, list[tuple[str, str, int]]]:
    seen: list[tuple[str, str, int]] = []

    class Transitions(BreakerListener):
        def state_change(self, breaker: CircuitBreaker, old: BreakerState, new: BreakerState, now_us: int) -> None:
            seen.append((old.name, new.name, now_us))

    config = BreakerConfig(**{"fail_max": 3, "reset_timeout_us": 2 * US_PER_S, **kwargs})
    return CircuitBreaker(config, listeners=[Transitions()]), seen


def test_consecutive_failures_open_the_breaker_and_a_success_resets_the_count() -> None:
    b, seen = _breaker()
    for t in range(2):
        assert b.allow(NOW + t)
        b.record_failure(NOW + t)
    b.record_success(NOW + 2)
    assert b.state == Closed(0)
    for t in range(3, 6):
        b.record_failure(NOW + t)
    assert b.state == Open(NOW + 5)
    assert seen == [("closed", "open", NOW + 5)]


def test_an_open_breaker_fails_fast_then_lets_one_trial_through() -> None:
    b, seen = _breaker()
    for _ in range(3):
        b.record_failure(NOW)
    assert not b.allow(NOW + 2 * US_PER_S - 1)
    b.record_success(NOW + 1)  # a late answer to a call sent before opening changes nothing
    assert isinstance(b.state, Open)
    assert b.allow(NOW + 2 * US_PER_S)
    assert b.state == HalfOpen(1, NOW + 2 * US_PER_S)
    assert not b.allow(NOW + 2 * US_PER_S + 1)  # one trial at a time
    b.record_success(NOW + 2 * US_PER_S + 5)
    assert b.state == Closed(0)
    assert seen == [("closed", "open", NOW), ("open", "half_open", NOW + 2 * US_PER_S),
                    ("half_open", "closed", NOW + 2 * US_PER_S + 5)]


def test_a_failed_trial_reopens_for_a_whole_timeout() -> None:
    b, seen = _breaker(half_open_trials=2)
    for _ in range(3):
        b.record_failure(NOW)
    t = NOW + 2 * US_PER_S
    assert b.allow(t) and b.allow(t + 1) and not b.allow(t + 2)
    b.record_failure(t + 10)
    assert b.state == Open(t + 10)
    assert not b.allow(t + 10 + 2 * US_PER_S - 1) and b.allow(t + 10 + 2 * US_PER_S)
    assert [s[:2] for s in seen] == [("closed", "open"), ("open", "half_open"), ("half_open", "open"),
                                     ("open", "half_open")]


def test_a_trial_whose_outcome_never_comes_does_not_wedge_the_breaker() -> None:
    b, _ = _breaker()
    for _ in range(3):
        b.record_failure(NOW)
    t = NOW + 2 * US_PER_S
    assert b.allow(t)  # this trial's caller is cancelled and never reports
    assert not b.allow(t + 2 * US_PER_S - 1)
    assert b.allow(t + 2 * US_PER_S)
    assert b.state == HalfOpen(1, t + 2 * US_PER_S)


def test_bad_breaker_configs_are_refused() -> None:
    for kwargs in ({"fail_max": 0}, {"reset_timeout_us": 0}, {"half_open_trials": 0}):
        with pytest.raises(ValueError):
            BreakerConfig(**kwargs)
