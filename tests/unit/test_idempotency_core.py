"""The idempotency core: key validation, fingerprints, the state machine over request sequences, and the
protocol's steps every store drives (claim, finish, release, phase 2, the completer's, the payment machine)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from reference_impl.idempotency.core import (
    CHARGED,
    MAX_KEY_LENGTH,
    RECORDED,
    RUNS,
    Claim,
    FinishStep,
    Held,
    InvalidIdempotencyKey,
    Outcome,
    Policy,
    Record,
    Recovery,
    Signal,
    State,
    Step,
    StoredResponse,
    Write,
    abandoned,
    advance,
    claim_step,
    decide,
    expired,
    fingerprint,
    finish,
    finish_step,
    pay_steps,
    record_charge_step,
    recovery,
    release,
    release_step,
    roll_back_step,
    take_over_step,
    validate_key,
)

EPOCH = 1_700_000_000_000_000
S = 1_000_000
POLICY = Policy(retention_us=60 * S, lock_timeout_us=5 * S, conflict_retry_after_s=2)
OK = StoredResponse(201, (("content-type", "application/json"),), b'{"id":"p1"}')
FP_A = fingerprint("POST", "/v1/payments", b'{"amount":100,"currency":"EUR"}')
FP_B = fingerprint("POST", "/v1/payments", b'{"amount":101,"currency":"EUR"}')


# --- keys and fingerprints -----------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["a", "k" * MAX_KEY_LENGTH, "order 42/attempt~1", " ", "~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}"])
def test_printable_ascii_keys_of_1_to_255_characters_are_valid(key: str) -> None:
    assert validate_key(key) == key
    assert validate_key(key.encode()) == key


@pytest.mark.parametrize("key", [None, "", b"", "k" * (MAX_KEY_LENGTH + 1), "caf\u00e9", "\u20ac", "tab\there", "nul\x00",
                                 "del\x7f", b"\xff\xfe", "line\nbreak"])
def test_other_keys_are_refused_with_a_value_error(key: str | bytes | None) -> None:
    with pytest.raises(InvalidIdempotencyKey):
        validate_key(key)
    assert issubclass(InvalidIdempotencyKey, ValueError)


def test_a_fingerprint_covers_method_target_and_exact_body_bytes() -> None:
    body = b'{"amount":100,"currency":"EUR"}'
    base = fingerprint("POST", "/v1/payments", body)
    assert base == fingerprint("post", "/v1/payments", body)
    assert len(base) == 64
    variants = [fingerprint("PUT", "/v1/payments", body), fingerprint("POST", "/v1/projects", body),
                fingerprint("POST", "/v1/payments?x=1", body),
                fingerprint("POST", "/v1/payments", b'{"currency":"EUR","amount":100}'),  # same JSON, other bytes
                fingerprint("POST", "/v1/payments", body + b" ")]
    assert base not in variants and len(set(variants)) == len(variants)
    # Length prefixes: moving bytes from the target into the body makes another fingerprint.
    assert fingerprint("POST", "/a", b"b") != fingerprint("POST", "/ab", b"")


@pytest.mark.parametrize("kwargs", [{"lock_timeout_us": 0}, {"lock_timeout_us": 10, "retention_us": 10},
                                    {"retention_us": 2**52 + 1}, {"conflict_retry_after_s": 0}])
def test_policies_that_would_break_the_state_machine_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Policy(**kwargs)


def test_policy_defaults_follow_the_contract_and_brandur() -> None:
    assert Policy() == Policy.from_seconds(24 * 3600, 90)


# --- decisions, one by one -----------------------------------------------------------------------------

def test_the_first_request_executes_and_claims_the_key() -> None:
    d = decide(None, FP_A, EPOCH, POLICY)
    assert d.outcome == Outcome.EXECUTE
    assert d.record == Record(FP_A, State.STARTED, EPOCH + 5 * S, EPOCH + 60 * S)


def test_in_flight_requests_conflict_with_a_retry_after_capped_by_the_lock() -> None:
    claimed = decide(None, FP_A, EPOCH, POLICY).record
    d = decide(claimed, FP_A, EPOCH + 1, POLICY)
    assert (d.outcome, d.record, d.retry_after_s) == (Outcome.CONFLICT, claimed, 2)  # policy cap
    assert decide(claimed, FP_A, EPOCH + 5 * S - 1, POLICY).retry_after_s == 1  # 1 µs left rounds up to 1 s
    assert decide(claimed, FP_A, EPOCH + 4 * S - 1, POLICY).retry_after_s == 2


def test_a_different_request_with_the_key_is_a_mismatch_in_every_state() -> None:
    claimed = decide(None, FP_A, EPOCH, POLICY).record
    for record in (claimed, advance(claimed, State.CHARGE_CREATED), finish(claimed, OK)):
        for now in (EPOCH, EPOCH + 10 * S):
            d = decide(record, FP_B, now, POLICY)
            assert (d.outcome, d.record) == (Outcome.MISMATCH, record)


def test_a_finished_request_replays_its_response_until_it_expires() -> None:
    done = finish(decide(None, FP_A, EPOCH, POLICY).record, OK)
    d = decide(done, FP_A, EPOCH + 60 * S - 1, POLICY)
    assert (d.outcome, d.record.response) == (Outcome.REPLAY, OK)
    after = decide(done, FP_B, EPOCH + 60 * S, POLICY)
    assert after.outcome == Outcome.EXECUTE and after.record.fingerprint == FP_B


def test_an_abandoned_claim_is_recovered_exactly_at_its_lock_timeout_from_its_recovery_point() -> None:
    charged = advance(decide(None, FP_A, EPOCH, POLICY).record, State.CHARGE_CREATED)
    assert decide(charged, FP_A, EPOCH + 5 * S - 1, POLICY).outcome == Outcome.CONFLICT
    d = decide(charged, FP_A, EPOCH + 5 * S, POLICY)
    assert d.outcome == Outcome.RECOVER
    assert d.record == Record(FP_A, State.CHARGE_CREATED, EPOCH + 10 * S, EPOCH + 60 * S)


def test_recovering_late_extends_the_record_to_the_end_of_its_new_lock() -> None:
    claimed = decide(None, FP_A, EPOCH, POLICY).record
    d = decide(claimed, FP_A, EPOCH + 58 * S, POLICY)
    assert d.outcome == Outcome.RECOVER
    assert d.record.locked_until_us == d.record.expires_at_us == EPOCH + 63 * S
    assert not expired(d.record, EPOCH + 60 * S)


def test_a_released_claim_is_recoverable_at_once() -> None:
    claimed = decide(None, FP_A, EPOCH, POLICY).record
    released = release(claimed, EPOCH + S)
    assert released.locked_until_us == EPOCH + S
    assert decide(released, FP_A, EPOCH + S, POLICY).outcome == Outcome.RECOVER
    assert release(released, EPOCH + 2 * S) == released  # never extends a lock


def test_recovery_points_only_move_forward() -> None:
    claimed = decide(None, FP_A, EPOCH, POLICY).record
    charged = advance(claimed, State.CHARGE_CREATED)
    with pytest.raises(ValueError):
        advance(charged, State.STARTED)
    with pytest.raises(ValueError):
        advance(charged, State.CHARGE_CREATED)
    with pytest.raises(ValueError):
        advance(claimed, State.FINISHED)
    done = finish(charged, OK)
    assert (done.state, done.locked_until_us, done.response) == (State.FINISHED, 0, OK)
    with pytest.raises(ValueError):
        finish(done, OK)
    with pytest.raises(ValueError):
        release(done, EPOCH)


# --- request sequences ---------------------------------------------------------------------------------

@dataclass
class Model:
    """What the contract says should have happened to one key, kept independently of the record."""

    fingerprint: str | None = None
    claimed_at: int = 0
    held_until: int = 0
    """The current holder's exclusive lease: until then nobody else may run the request."""
    kept_until: int = 0
    response: StoredResponse | None = None


policies = st.builds(Policy, retention_us=st.integers(11 * S, 100 * S), lock_timeout_us=st.integers(1, 10 * S),
                     conflict_retry_after_s=st.integers(1, 5))
events = st.lists(st.tuples(
    st.one_of(st.just(0), st.integers(0, 3), st.sampled_from([S - 1, S, 5 * S, 10 * S, 50 * S]),
              st.integers(0, 120 * S)),
    st.sampled_from(["request", "request", "request", "finish", "advance", "release"]),
    st.integers(0, 2)), max_size=60)


@settings(max_examples=400, deadline=None)
@given(policy=policies, steps=events)
def test_any_request_sequence_obeys_the_contract(policy: Policy, steps: list[tuple[int, str, int]]) -> None:
    fingerprints = [fingerprint("POST", f"/v1/payments/{i}", b"{}") for i in range(3)]
    now = EPOCH
    record: Record | None = None
    model = Model()
    for gap, kind, which in steps:
        now += gap
        live = record is not None and now < model.kept_until
        running = live and model.response is None
        if kind == "request":
            fp = fingerprints[which]
            d = decide(record, fp, now, policy)
            event(d.outcome)
            if not live:
                assert d.outcome == Outcome.EXECUTE
            elif fp != model.fingerprint:
                assert d.outcome == Outcome.MISMATCH
            elif model.response is not None:
                assert (d.outcome, d.record.response) == (Outcome.REPLAY, model.response)
            elif now < model.held_until:
                assert d.outcome == Outcome.CONFLICT
                assert 1 <= d.retry_after_s <= policy.conflict_retry_after_s
                assert now + (d.retry_after_s - 1) * S < model.held_until  # never past the recovery point
            else:
                assert d.outcome == Outcome.RECOVER
            if d.outcome in RUNS:
                # At most one holder at a time: nobody else held an unexpired lease.
                assert not (running and now < model.held_until)
                if d.outcome == Outcome.EXECUTE:
                    model = Model(fp, now, now + policy.lock_timeout_us, now + policy.retention_us)
                else:
                    model.held_until = now + policy.lock_timeout_us
                    model.kept_until = max(model.kept_until, model.held_until)
                assert d.record.state == (State.STARTED if d.outcome == Outcome.EXECUTE else record.state)
            else:
                assert d.record is record
            record = d.record
        elif kind == "finish" and running:
            assert record is not None
            record = finish(record, StoredResponse(201, (), f"response of the claim at {model.claimed_at}".encode()))
            model.response, model.held_until = record.response, 0
        elif kind == "advance" and running and record is not None and record.state == State.STARTED:
            record = advance(record, State.CHARGE_CREATED)
        elif kind == "release" and running:
            assert record is not None
            record = release(record, now)
            model.held_until = min(model.held_until, now)
        if record is not None:
            assert record.expires_at_us >= record.locked_until_us  # a locked record never expires
            assert (record.state == State.FINISHED) == (record.response is not None)


@settings(max_examples=200, deadline=None)
@given(policy=policies, n=st.integers(2, 50), gaps=st.lists(st.integers(0, 3), min_size=49, max_size=49))
def test_a_burst_of_identical_requests_executes_exactly_once(policy: Policy, n: int, gaps: list[int]) -> None:
    record: Record | None = None
    now = EPOCH
    outcomes = []
    for gap in gaps[: n - 1]:
        d = decide(record, FP_A, now, policy)
        outcomes.append(d.outcome)
        record = d.record
        now += gap
    d = decide(record, FP_A, now, policy)
    outcomes.append(d.outcome)
    assert outcomes[0] == Outcome.EXECUTE
    if now - EPOCH < policy.lock_timeout_us:
        assert outcomes.count(Outcome.EXECUTE) == 1 and Outcome.RECOVER not in outcomes
        assert set(outcomes[1:]) <= {Outcome.CONFLICT}


# --- the protocol's steps ------------------------------------------------------------------------------

def test_a_claim_step_says_what_to_write() -> None:
    first = claim_step(None, "t", "k", FP_A, EPOCH, POLICY, "tok-1")
    assert (first.claim, first.write) == (Claim(Outcome.EXECUTE, "t", "k", "tok-1"), Write.CREATE)
    assert first.held == Held(decide(None, FP_A, EPOCH, POLICY).record, "tok-1")
    held = first.held
    for fp, now, outcome in ((FP_A, EPOCH + 1, Outcome.CONFLICT), (FP_B, EPOCH + 1, Outcome.MISMATCH)):
        step = claim_step(held, "t", "k", fp, now, POLICY, "unused")
        assert (step.claim.outcome, step.write, step.held, step.claim.token) == (outcome, Write.NOTHING, held, "")
    assert claim_step(held, "t", "k", FP_A, EPOCH + 1, POLICY, "x").claim.retry_after_s == 2
    # Past the lock: the same claim (token, recovery point) under a new lock.
    charged = Held(advance(held.record, State.CHARGE_CREATED), "tok-1")
    recover = claim_step(charged, "t", "k", FP_A, EPOCH + 5 * S, POLICY, "unused")
    assert recover.write == Write.TAKE_OVER and recover.claim == Claim(Outcome.RECOVER, "t", "k", "tok-1",
                                                                       State.CHARGE_CREATED)
    assert recover.held == Held(decide(charged.record, FP_A, EPOCH + 5 * S, POLICY).record, "tok-1")
    # Finished: a replay carries the response, a mismatch never does; past retention a new claim replaces it.
    done = Held(finish(held.record, OK), "tok-1")
    assert claim_step(done, "t", "k", FP_A, EPOCH + S, POLICY, "x").claim.response == OK
    assert claim_step(done, "t", "k", FP_B, EPOCH + S, POLICY, "x").claim.response is None
    replaced = claim_step(done, "t", "k", FP_B, EPOCH + 60 * S, POLICY, "tok-2")
    assert (replaced.write, replaced.claim.token, replaced.held.token) == (Write.REPLACE, "tok-2", "tok-2")


def test_writes_after_the_claim_are_guarded_by_its_token() -> None:
    held = Held(decide(None, FP_A, EPOCH, POLICY).record, "tok-1")
    # finish: the first stored response wins; a lost claim stores nothing and sends its own.
    stored = finish_step(held, "tok-1", OK)
    assert stored == FinishStep(Held(finish(held.record, OK), "tok-1"), OK)
    late = StoredResponse(500, (), b"late")
    assert finish_step(stored.written, "tok-1", late) == FinishStep(None, OK)
    assert finish_step(held, "tok-0", late) == finish_step(None, "tok-1", late) == FinishStep(None, late)
    # release: only the holder's unfinished claim, and never a later lock.
    assert release_step(held, "tok-1", EPOCH + S) == Held(release(held.record, EPOCH + S), "tok-1")
    assert release_step(held, "tok-0", EPOCH + S) is None and release_step(stored.written, "tok-1", EPOCH) is None
    assert release_step(Held(release(held.record, EPOCH), "tok-1"), "tok-1", EPOCH + S) is None
    # phase 2's compare-and-set: from `started` only, by the holder only.
    charged = record_charge_step(held, "tok-1")
    assert charged == Held(advance(held.record, State.CHARGE_CREATED), "tok-1")
    assert record_charge_step(charged, "tok-1") is None and record_charge_step(held, "tok-0") is None
    assert record_charge_step(None, "tok-1") is None


def test_the_completer_takes_over_abandoned_claims_only() -> None:
    held = Held(decide(None, FP_A, EPOCH, POLICY).record, "tok-1")
    lock_end = held.record.locked_until_us
    assert not abandoned(held.record, lock_end - 1) and abandoned(held.record, lock_end)
    assert not abandoned(held.record, held.record.expires_at_us)  # expired: the reaper's
    assert take_over_step(held, lock_end - 1, POLICY) is None and take_over_step(None, lock_end, POLICY) is None
    taken = take_over_step(held, lock_end, POLICY)
    assert taken == Held(decide(held.record, FP_A, lock_end, POLICY).record, "tok-1")
    assert take_over_step(Held(finish(held.record, OK), "tok-1"), lock_end, POLICY) is None
    assert (recovery(True), recovery(False)) == (Recovery.RESUME, Recovery.ROLL_BACK)  # a payment, anything else
    assert roll_back_step(taken, "tok-1") and not roll_back_step(taken, "tok-0")
    assert not roll_back_step(Held(advance(held.record, State.CHARGE_CREATED), "tok-1"), "tok-1")


def run_machine(state: State, answers: dict[Step, list[object]]) -> tuple[list[tuple[Step, object]], object]:
    """Drive pay_steps, answering each step from `answers` (None when none is scripted)."""
    machine, trace, answer = pay_steps(state), [], None
    while True:
        try:
            step, arg = machine.send(answer)
        except StopIteration as done:
            return trace, done.value
        trace.append((step, arg))
        answer = answers.get(step, [None]).pop(0) if answers.get(step) else None


def test_the_payment_machine_from_each_recovery_point() -> None:
    trace, end = run_machine(State.STARTED, {Step.CHARGE: ["ch"], Step.RECORD: ["paid"], Step.FINISH: [OK]})
    assert trace == [(Step.CHARGE, None), (Step.CHECKPOINT, CHARGED), (Step.RECORD, "ch"), (Step.CHECKPOINT, RECORDED),
                     (Step.PUBLISH, "paid"), (Step.FINISH, "paid")] and end == OK
    trace, end = run_machine(State.STARTED, {Step.CHARGE: [Signal.TIMED_OUT]})
    assert trace == [(Step.CHARGE, None), (Step.RELEASE, None)] and end is Signal.TIMED_OUT
    trace, end = run_machine(State.STARTED, {Step.CHARGE: [Signal.DECLINED], Step.FINISH: [OK]})
    assert trace == [(Step.CHARGE, None), (Step.FINISH, Signal.DECLINED)] and end == OK
    # Another holder recorded the charge first: finish with the payment it recorded.
    trace, end = run_machine(State.STARTED, {Step.CHARGE: ["ch"], Step.RECORD: [None], Step.PAYMENT_OF: ["paid"],
                                             Step.FINISH: [OK]})
    assert trace[-3:] == [(Step.PAYMENT_OF, None), (Step.PUBLISH, "paid"), (Step.FINISH, "paid")] and end == OK
    trace, end = run_machine(State.CHARGE_CREATED, {Step.PAYMENT_OF: ["paid"], Step.FINISH: [OK]})
    assert trace == [(Step.PAYMENT_OF, None), (Step.PUBLISH, "paid"), (Step.FINISH, "paid")] and end == OK
    # Neither a payment nor a response: only a finished claim's response, or the claim is lost.
    assert run_machine(State.CHARGE_CREATED, {Step.STORED: [OK]}) == ([(Step.PAYMENT_OF, None), (Step.STORED, None)], OK)
    assert run_machine(State.CHARGE_CREATED, {})[1] is Signal.LOST
