"""The idempotency decision core: pure code, integer microseconds, the clock passed in (docs/design.md).

What the middleware does with a POST that carries `Idempotency-Key` (docs/contract.md, "Idempotency"):

1. `validate_key(header)`: 1 to 255 printable ASCII characters, else `InvalidIdempotencyKey` (400).
2. Validate the request itself (authentication, rate limit, body) BEFORE claiming the key: a
   request refused then never reaches the store, so validation failures are never stored.
3. `fingerprint(method, target, body)`; the store's `claim` runs `decide` on the stored record:

   ============  ====================================================================  ==========
   outcome       when                                                                  answer
   ============  ====================================================================  ==========
   EXECUTE       no live record (none, or past retention): the key is now claimed      run it
   MISMATCH      a live record with another fingerprint                                422
   REPLAY        the record is `finished`                                              stored one
   CONFLICT      unfinished and still locked (the first request is in flight)          409
   RECOVER       unfinished and its lock has run out: the claim was abandoned; the     resume it
                 caller takes it over (a new lock) and resumes from its recovery point
   ============  ====================================================================  ==========

   A differing fingerprint wins over every other state: a client reusing a key for a different
   request learns so at once (422), even while the first is in flight.

4. The store writes what the claim step says (`claim_step`: the decision and the write). A running
   claim is carried to `finished` by the payment machine (`pay_steps`), or by the route's handler
   and `finish_step`; `release_step` unlocks a claim whose outcome is unknown. The completer takes
   abandoned claims over (`abandoned`, `take_over_step`), then resumes them (`pay_steps`) or rolls
   them back (`recovery`, `roll_back_step`). The service's stores (postgres.py, redis_store.py,
   designs.py) and the simulated store (scenarios/idempotency/stores.py) drive these same steps;
   round_trips.py declares what each step costs each store.

Recovery points, after brandur's rocket-rides-atomic: `started -> charge_created -> finished`.
`started` is the claim; `charge_created` means the provider's charge and our payment row are
recorded (in the `postgres` design, in one transaction); `finished` holds the response. Requests without an external effect
go straight from `started` to `finished`.

A record lives `retention_us` (24 h by default) from its claim, and never less than its lock:
taking over a claim extends its life to the new lock's end, so `expires_at_us >= locked_until_us`
always holds and a record that is still locked is never expired (nor reaped).

Fingerprints compare the body byte for byte rather than as canonicalised JSON. A retrying client
resends the very bytes it sent (SDKs serialise once and retry that), so byte equality costs a
legitimate retry nothing; canonicalisation would parse every body before validation and has to
decide whether `1` and `1.0`, duplicate members or different Unicode escapes are "the same" --
and a wrong "same" replays the response of a different request, while a wrong "different" only
answers 422. Byte equality errs on the safe side.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import Any

US_PER_S = 1_000_000
MAX_KEY_LENGTH = 255
DEFAULT_RETENTION_US = 24 * 3600 * US_PER_S
DEFAULT_LOCK_TIMEOUT_US = 90 * US_PER_S
"""brandur's completer treats a request locked this long as abandoned."""
DEFAULT_CONFLICT_RETRY_AFTER_S = 1
"""The first request usually ends within milliseconds, so the smallest whole Retry-After fits."""
MAX_RETENTION_US = 2**52
"""With clocks below 2**52 µs (until the year 2112), every time stays below 2**53: exact in the Lua
twin, which computes in doubles."""


class InvalidIdempotencyKey(ValueError):
    """The Idempotency-Key header is not 1..255 printable ASCII characters (answer 400)."""


class State(enum.StrEnum):
    STARTED = "started"
    CHARGE_CREATED = "charge_created"
    FINISHED = "finished"


RECOVERY_POINTS = (State.STARTED, State.CHARGE_CREATED, State.FINISHED)


class Outcome(enum.StrEnum):
    EXECUTE = "execute"
    REPLAY = "replay"
    CONFLICT = "conflict"
    MISMATCH = "mismatch"
    RECOVER = "recover"


RUNS = frozenset({Outcome.EXECUTE, Outcome.RECOVER})
"""Outcomes after which the caller holds the claim and must carry the request to `finished`."""


def validate_key(raw: str | bytes | None) -> str:
    """The key as text, or InvalidIdempotencyKey. Printable ASCII is 0x20..0x7E (space included;
    HTTP strips a header's outer whitespace before we see it)."""
    if raw is None:
        raise InvalidIdempotencyKey("Idempotency-Key is missing")
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    if not 1 <= len(text) <= MAX_KEY_LENGTH:
        raise InvalidIdempotencyKey(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters, got {len(text)}")
    if any(not " " <= c <= "~" for c in text):
        raise InvalidIdempotencyKey("Idempotency-Key must be printable ASCII (0x20 to 0x7E)")
    return text


def fingerprint(method: str, target: str, body: bytes) -> str:
    """SHA-256 (hex) of the request: method, target (the path, plus `?query` if the request had
    one) and the body's exact bytes. Each part is length-prefixed, so no two different requests
    frame into the same bytes."""
    h = hashlib.sha256()
    for part in (method.upper().encode(), target.encode()):
        h.update(b"%d:" % len(part))
        h.update(part)
    h.update(b"%d:" % len(body))
    h.update(body)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Policy:
    """How long a claim stays locked, how long records are kept, and the 409's Retry-After cap."""

    retention_us: int = DEFAULT_RETENTION_US
    lock_timeout_us: int = DEFAULT_LOCK_TIMEOUT_US
    conflict_retry_after_s: int = DEFAULT_CONFLICT_RETRY_AFTER_S

    def __post_init__(self) -> None:
        if not 1 <= self.lock_timeout_us < self.retention_us <= MAX_RETENTION_US:
            raise ValueError(f"need 1 <= lock_timeout_us < retention_us <= 2**52 (a claim must outlive its "
                             f"lock), got lock {self.lock_timeout_us}, retention {self.retention_us}")
        if self.conflict_retry_after_s < 1:
            raise ValueError(f"conflict_retry_after_s must be >= 1, got {self.conflict_retry_after_s}")

    @classmethod
    def from_seconds(cls, retention_s: float, lock_timeout_s: float) -> Policy:
        return cls(round(retention_s * US_PER_S), round(lock_timeout_s * US_PER_S))


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """What a replay sends back, byte for byte."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class Record:
    """What a store keeps per (tenant, key)."""

    fingerprint: str
    state: State
    locked_until_us: int
    """Until then the claim belongs to the request holding it; 0 once finished."""
    expires_at_us: int
    response: StoredResponse | None = None
    """Set exactly when `state` is FINISHED."""


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    record: Record
    """The record as it must be stored after this decision (unchanged unless EXECUTE or RECOVER)."""
    retry_after_s: int = 0
    """CONFLICT only: whole seconds, at least 1."""


def expired(record: Record, now_us: int) -> bool:
    return now_us >= record.expires_at_us


def decide(record: Record | None, request_fingerprint: str, now_us: int, policy: Policy) -> Decision:
    """The decision for a request arriving at `now_us` with the key's stored `record` (or None)."""
    if record is None or expired(record, now_us):
        claim = Record(request_fingerprint, State.STARTED, now_us + policy.lock_timeout_us,
                       now_us + policy.retention_us)
        return Decision(Outcome.EXECUTE, claim)
    if record.fingerprint != request_fingerprint:
        return Decision(Outcome.MISMATCH, record)
    if record.state == State.FINISHED:
        return Decision(Outcome.REPLAY, record)
    if now_us < record.locked_until_us:
        # Never send the client past the moment the claim becomes recoverable.
        wait_s = -(-(record.locked_until_us - now_us) // US_PER_S)
        return Decision(Outcome.CONFLICT, record, min(policy.conflict_retry_after_s, wait_s))
    locked_until = now_us + policy.lock_timeout_us
    return Decision(Outcome.RECOVER, replace(record, locked_until_us=locked_until,
                                             expires_at_us=max(record.expires_at_us, locked_until)))


def advance(record: Record, state: State) -> Record:
    """Move an unfinished record forward to a later recovery point short of `finished`."""
    if state == State.FINISHED or RECOVERY_POINTS.index(state) <= RECOVERY_POINTS.index(record.state):
        raise ValueError(f"cannot go from {record.state} to {state} (use finish() for {State.FINISHED})")
    return replace(record, state=state)


def finish(record: Record, response: StoredResponse) -> Record:
    if record.state == State.FINISHED:
        raise ValueError("the record is already finished")
    return replace(record, state=State.FINISHED, locked_until_us=0, response=response)


def release(record: Record, now_us: int) -> Record:
    """Unlock an unfinished claim now: its holder does not know whether the effect happened (a
    provider timeout), so the next retry must RECOVER it at once rather than meet a 409."""
    if record.state == State.FINISHED:
        raise ValueError("a finished record holds no lock")
    return replace(record, locked_until_us=min(record.locked_until_us, now_us))


@dataclass(frozen=True, slots=True)
class Claim:
    """A store's answer to `claim`: the decision plus what the caller needs to act on it."""

    outcome: Outcome
    tenant_id: str
    key: str
    token: str = ""
    """EXECUTE and RECOVER: this execution's handle, also the token the provider dedupes on."""
    state: State = State.STARTED
    """EXECUTE and RECOVER: the recovery point to resume from."""
    response: StoredResponse | None = None
    """REPLAY: the stored response."""
    retry_after_s: int = 0
    """CONFLICT: the Retry-After header's value."""

    @property
    def runs(self) -> bool:
        return self.outcome in RUNS


# ---------------------------------------------------------------------------------------------
# The protocol as steps: what each store operation decides and writes, and the payment machine.

CHARGED = "charged"
"""Checkpoint: the provider has answered with a charge; nothing of ours is recorded yet."""
RECORDED = "charge_created"
"""Checkpoint: the payment row exists (for `postgres`, in the same transaction as the `charge_created` point)."""
CHECKPOINTS = (CHARGED, RECORDED)
COMPLETER_BATCH = 100
"""Abandoned claims the completer takes per pass."""


@dataclass(frozen=True, slots=True)
class Held:
    """A stored record and the token of the claim it belongs to. Every write after the claim names its
    claim by token, so a holder whose claim was replaced (past retention) or deleted writes nothing."""

    record: Record
    token: str


class Write(enum.StrEnum):
    """What a claim step makes the store write."""

    NOTHING = "nothing"
    CREATE = "create"
    """No record: store the new claim."""
    REPLACE = "replace"
    """The record is past retention: a new claim, with a new token, replaces it."""
    TAKE_OVER = "take_over"
    """RECOVER: the same claim (same token, same recovery point) under a new lock."""


@dataclass(frozen=True, slots=True)
class ClaimStep:
    claim: Claim
    write: Write
    held: Held | None
    """What the store holds after the step."""


def answer(decision: Decision, tenant_id: str, key: str) -> Claim:
    """The claim for a decision that does not run. Only a replay carries the response: a mismatched
    request must never see another request's answer."""
    response = decision.record.response if decision.outcome == Outcome.REPLAY else None
    return Claim(decision.outcome, tenant_id, key, response=response, retry_after_s=decision.retry_after_s)


def claim_step(held: Held | None, tenant_id: str, key: str, request_fingerprint: str, now_us: int, policy: Policy,
               new_token: str) -> ClaimStep:
    """`decide` on the stored record, and what the store writes for it; `new_token` is used only for a new claim."""
    d = decide(None if held is None else held.record, request_fingerprint, now_us, policy)
    if d.outcome == Outcome.EXECUTE:
        return ClaimStep(Claim(Outcome.EXECUTE, tenant_id, key, new_token), Write.CREATE if held is None
                         else Write.REPLACE, Held(d.record, new_token))
    if d.outcome == Outcome.RECOVER:
        assert held is not None
        return ClaimStep(Claim(Outcome.RECOVER, tenant_id, key, held.token, d.record.state), Write.TAKE_OVER,
                         Held(d.record, held.token))
    return ClaimStep(answer(d, tenant_id, key), Write.NOTHING, held)


@dataclass(frozen=True, slots=True)
class FinishStep:
    written: Held | None
    """The record to store; None: nothing is written (the claim is lost, or already finished)."""
    response: StoredResponse
    """What is stored, hence what to send: the first stored response wins."""


def finish_step(held: Held | None, token: str, response: StoredResponse) -> FinishStep:
    """Store a running claim's response. A record finished by another holder of the same claim keeps
    its response (every client of one key gets the same bytes); a lost claim stores nothing."""
    if held is None or held.token != token:
        return FinishStep(None, response)
    if held.record.state == State.FINISHED:
        assert held.record.response is not None
        return FinishStep(None, held.record.response)
    return FinishStep(Held(finish(held.record, response), token), response)


def release_step(held: Held | None, token: str, now_us: int) -> Held | None:
    """Unlock the claim at `now_us` (`release`); None when there is nothing to write."""
    if held is None or held.token != token or held.record.state == State.FINISHED:
        return None
    released = release(held.record, now_us)
    return None if released == held.record else Held(released, token)


def record_charge_step(held: Held | None, token: str) -> Held | None:
    """The `started -> charge_created` compare-and-set of the `postgres` design's phase 2; None when it
    misses (another holder of the claim recorded the charge first, or the claim is gone)."""
    if held is None or held.token != token or held.record.state != State.STARTED:
        return None
    return Held(advance(held.record, State.CHARGE_CREATED), token)


def abandoned(record: Record, now_us: int) -> bool:
    """What the completer looks for: unfinished, its lock run out, not yet expired (an expired claim
    is the reaper's: taking it over would decide EXECUTE, not RECOVER)."""
    return record.state != State.FINISHED and record.locked_until_us <= now_us < record.expires_at_us


def take_over_step(held: Held | None, now_us: int, policy: Policy) -> Held | None:
    """The completer's claim: RECOVER with the record's own fingerprint, else None (a retry recovered
    it first, it finished meanwhile, or it is gone). Unlike a claim, it never creates a record."""
    if held is None:
        return None
    d = decide(held.record, held.record.fingerprint, now_us, policy)
    return Held(d.record, held.token) if d.outcome == Outcome.RECOVER else None


class Recovery(enum.StrEnum):
    """What the completer does with a claim it took over."""

    RESUME = "resume"
    """A payment: its parameters were stored with the claim, so `pay_steps` carries it on from its
    recovery point, asking the provider again with the claim's token."""
    ROLL_BACK = "roll_back"
    """Any other request: it has no recovery point between `started` and `finished` and its body was
    not kept, so it cannot be resumed; the claim is deleted (`roll_back_step`) and the retry executes."""


def recovery(resumable: bool) -> Recovery:
    """`resumable`: the claim's request was stored with it (a payment)."""
    return Recovery.RESUME if resumable else Recovery.ROLL_BACK


def roll_back_step(held: Held | None, token: str) -> bool:
    """Whether the completer deletes a taken-over claim it cannot resume (a request other than a
    payment: no recovery point between `started` and `finished`), so its retry executes afresh."""
    return held is not None and held.token == token and held.record.state == State.STARTED


class Step(enum.StrEnum):
    """What a running payment asks its runtime to do (`pay_steps` yields `(step, argument)`)."""

    CHARGE = "charge"
    """Ask the provider with the claim's token; answer: the charge, DECLINED or TIMED_OUT."""
    CHECKPOINT = "checkpoint"
    """Pass a named point (CHARGED or RECORDED), where a worker may die; answer: None."""
    RECORD = "record"
    """Write the payment row for the charge (for `postgres` with the `started -> charge_created` step,
    one statement); answer: the payment, or None when another holder of the claim recorded it first."""
    PAYMENT_OF = "payment_of"
    """Read the payment the claim recorded; answer: it or None."""
    STORED = "stored"
    """Read the claim's stored response; answer: it or None."""
    PUBLISH = "publish"
    """Hand the payment to the design's Publish hook; answer: None."""
    FINISH = "finish"
    """Store the response for the payment (DECLINED: the refusal); answer: the stored response."""
    RELEASE = "release"
    """Unlock the claim now, its outcome unknown; answer: None."""


class Signal(enum.Enum):
    """Provider answers and endings that are not a charge or a response."""

    DECLINED = "declined"
    """The provider refused the charge."""
    TIMED_OUT = "timed_out"
    """The provider's answer was lost: the outcome is unknown (answer 504, store nothing)."""
    LOST = "lost"
    """The claim has neither a payment nor a response (its record was reaped while it ran)."""


PaySteps = Generator[tuple[Step, Any], Any, Any]


def pay_steps(state: State) -> PaySteps:
    """Carry a running payment claim from its recovery point `state` to `finished`.

    A generator of `(Step, argument)`: the runtime does each step and sends back its answer. It
    returns the stored response, Signal.TIMED_OUT (after releasing the claim) or Signal.LOST. The
    same machine serves every design: `redis` and `none` never leave `started` (their RECORD always
    answers the payment), `postgres` resumes from `charge_created` with the payment it recorded.
    """
    if state == State.STARTED:
        charge = yield Step.CHARGE, None
        if charge is Signal.TIMED_OUT:
            yield Step.RELEASE, None
            return Signal.TIMED_OUT
        if charge is Signal.DECLINED:
            return (yield Step.FINISH, Signal.DECLINED)
        yield Step.CHECKPOINT, CHARGED
        paid = yield Step.RECORD, charge
        yield Step.CHECKPOINT, RECORDED
        if paid is not None:
            yield Step.PUBLISH, paid
            return (yield Step.FINISH, paid)
    # Resuming from charge_created, or another holder of this claim recorded the charge first.
    paid = yield Step.PAYMENT_OF, None
    if paid is not None:
        yield Step.PUBLISH, paid
        return (yield Step.FINISH, paid)
    stored = yield Step.STORED, None
    return Signal.LOST if stored is None else stored
