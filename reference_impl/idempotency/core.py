"""The idempotency decision core: pure code, integer microseconds, the clock passed in (DESIGN.md).

What the middleware does with a POST that carries `Idempotency-Key` (CONTRACT.md, "Idempotency"):

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
from dataclasses import dataclass, replace

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
