"""The checkout saga's step machine (reference_impl/sagas/core.py): pure, clock passed in."""

from __future__ import annotations

from itertools import groupby

from hypothesis import given, settings
from hypothesis import strategies as st

from reference_impl.retries.core import ExponentialBackoff, FullJitter
from reference_impl.sagas.core import (
    CHECKOUT,
    FAULT_POINTS,
    Do,
    Finished,
    SagaPolicy,
    SagaState,
    Undo,
    Wait,
    apply,
    fault_point,
    next_command,
    start,
)

POLICY = SagaPolicy(action_backoff=ExponentialBackoff(1_000, 8_000, 3), compensation_backoff=ExponentialBackoff(1_000, 8_000))


def run(outcomes: list[str], policy: SagaPolicy = POLICY) -> tuple[SagaState, list[str]]:
    """Drive a saga, answering each command with the next outcome ("ok" once they run out)."""
    state, now, trace, answers = start("s1", 0), 0, [], iter(outcomes)
    for _ in range(10_000):
        command = next_command(state, now)
        if isinstance(command, Finished):
            return state, trace
        if isinstance(command, Wait):
            assert command.until_us > now
            now = command.until_us
            continue
        trace.append(("do " if isinstance(command, Do) else "undo ") + command.step.name)
        outcome = next(answers, "ok")
        if isinstance(command, Undo) and outcome == "refused":  # a compensation is never refused
            outcome = "error"
        state = apply(state, outcome, now, policy)  # type: ignore[arg-type]
        now += 10
    raise AssertionError("the saga never ended")


def states(state: SagaState) -> list[str]:
    return [s.state for s in state.steps]


def test_every_step_done_is_completed() -> None:
    state, trace = run([])
    assert state.status == "completed" and states(state) == ["done"] * 4
    assert trace == ["do reserve", "do charge", "do schedule", "do commit"]


def test_refused_at_the_first_step_is_failed_with_nothing_to_undo() -> None:
    state, trace = run(["refused"])
    assert state.status == "failed" and trace == ["do reserve"]
    assert states(state) == ["failed", "pending", "pending", "pending"] and state.reason == "reserve refused"


def test_refused_later_compensates_the_done_steps_in_reverse_order() -> None:
    state, trace = run(["ok", "ok", "refused"])
    assert state.status == "compensated"
    assert trace == ["do reserve", "do charge", "do schedule", "undo charge", "undo reserve"]
    assert states(state) == ["compensated", "compensated", "failed", "pending"]


def test_an_action_that_keeps_timing_out_is_compensated_itself_it_may_have_happened() -> None:
    state, trace = run(["ok", "timeout", "error", "timeout"])
    assert trace == ["do reserve", "do charge", "do charge", "do charge", "undo charge", "undo reserve"]
    assert state.status == "compensated" and "gave up after 3 attempts" in (state.reason or "")


def test_a_compensation_is_retried_until_it_succeeds_with_capped_waits() -> None:
    state, trace = run(["ok", "refused", *["error"] * 20])
    assert trace.count("undo reserve") == 21 and state.status == "compensated"


def test_the_retriable_step_after_the_pivot_never_gives_up() -> None:
    state, trace = run(["ok", "ok", "ok", *["refused"] * 10])
    assert state.status == "completed" and trace.count("do commit") == 11


def test_waits_are_reproducible_per_saga_and_attempt() -> None:
    jitter = SagaPolicy(action_backoff=FullJitter(1_000, 1_000_000, 5))
    waits = [apply(start(saga, 0), "error", 0, jitter).retry_at_us for saga in ("a", "a", "b", "c", "d")]
    assert waits[0] == waits[1] and len(set(waits[1:])) > 1  # the same saga waits the same; others differ


def test_the_state_round_trips_through_the_log() -> None:
    state = apply(apply(start("s1", 5), "ok", 7, POLICY), "error", 9, POLICY)
    assert SagaState.from_dict(state.to_dict()) == state


def test_every_boundary_has_a_fault_point() -> None:
    for step in CHECKOUT:
        assert {fault_point(step, "before"), fault_point(step, "after")} <= set(FAULT_POINTS)
        if not step.retriable:
            assert fault_point(step, "before", undo=True) == f"sagas.{step.name}.undo.before" in FAULT_POINTS


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["ok", "refused", "error", "timeout"]), max_size=40))
def test_any_outcomes_end_all_done_or_all_undone(outcomes: list[str]) -> None:
    state, trace = run(outcomes)
    assert state.terminal
    begun = {t.split()[1] for t in trace if t.startswith("do ")}
    if state.status == "completed":
        assert states(state) == ["done"] * 4
    else:  # every begun step that could have had an effect was undone, in reverse order
        undone = [name for name, _ in groupby(t.split()[1] for t in trace if t.startswith("undo "))]  # retries once
        assert all(s.state != "done" for s in state.steps)
        order = [s.name for s in CHECKOUT]
        assert undone == sorted(set(undone), key=order.index, reverse=True)
        assert {s.name for s, p in zip(CHECKOUT, state.steps, strict=True) if p.state == "compensated"} <= begun
        assert (state.status == "failed") == (not undone)


def test_commands_carry_the_step_key_and_the_attempt() -> None:
    state = start("s9", 0)
    assert next_command(state, 0) == Do(CHECKOUT[0], "s9:reserve", 1)
    state = apply(apply(state, "ok", 0, POLICY), "refused", 0, POLICY)
    assert next_command(state, 0) == Undo(CHECKOUT[0], "s9:reserve", 1)
