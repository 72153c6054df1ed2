"""What each store operation of each design costs, in round trips to its server, declared once.

The service's stores (postgres.py, redis_store.py, designs.py) make exactly these round trips per
operation, which tests/integration/test_idempotency_round_trips.py counts on the real servers; the
simulated store (scenarios/idempotency/stores.py) charges them, each at its server's round-trip time.
The operations are the steps of core.py: `claim` (then, for the designs in `LOCKED_CLAIM`, the
row-locked transaction its write needs: `lock.<core.Write>`), the payment machine's `core.Step`s
that touch a store, and the completer's `scan`, `take_over` and `roll_back`. `<operation>.<variant>`
is an outcome that costs other round trips than the operation's usual ones.

Not in the table: the provider call (its own latency in the model), and `publish`, the tenancy
store's write of the payments resource (its cost depends on the isolation design, not on this
pattern's; the model leaves it out).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

REDIS = "redis"
POSTGRES = "postgres"


@dataclass(frozen=True, slots=True)
class Cost:
    server: str
    trips: int


_PG1 = Cost(POSTGRES, 1)
ROUND_TRIPS: Mapping[str, Mapping[str, Cost]] = {
    "none": {
        "record": _PG1,  # ledger.record_payment: one INSERT ... ON CONFLICT ... RETURNING
    },
    "redis": {
        "claim": Cost(REDIS, 1),  # claim.lua: decide and write in one script
        "finish": Cost(REDIS, 1),  # finish.lua
        "release": Cost(REDIS, 1),  # release.lua
        "record": _PG1,  # ledger.record_payment
    },
    "postgres": {
        "claim": _PG1,  # postgres._CLAIM: inserts a new claim, or reads the row it ran into
        "reread": _PG1,  # the row committed after that statement's snapshot: read it again
        # A decision that writes over an existing row is made again under the row lock, in one
        # transaction: BEGIN, SELECT ... FOR UPDATE, the writes, COMMIT.
        "lock.take_over": Cost(POSTGRES, 4),
        "lock.replace": Cost(POSTGRES, 5),  # DELETE the expired row, INSERT the new claim
        "lock.nothing": Cost(POSTGRES, 3),  # re-decided under the lock: another request got there first
        "record": _PG1,  # phase 2: the compare-and-set and the payment row, one statement
        "payment_of": _PG1,
        "stored": _PG1,
        "finish": _PG1,  # UPDATE ... WHERE token AND not finished
        "finish.missed": Cost(POSTGRES, 2),  # the update missed: read what is stored
        "release": _PG1,
        "scan": _PG1,  # the completer's query for abandoned claims
        "take_over": Cost(POSTGRES, 4),  # BEGIN, SELECT ... FOR UPDATE, UPDATE, COMMIT
        "take_over.missed": Cost(POSTGRES, 3),  # BEGIN, SELECT ... FOR UPDATE, COMMIT
        "roll_back": _PG1,
    },
}
"""Per design, per operation: the server and the round trips. An operation a design lacks costs nothing."""

LOCKED_CLAIM = frozenset({"postgres"})
"""Designs whose claim statement only creates a record or reads it (postgres._CLAIM): a claim step that
writes over an existing record is made again, and written, in a row-locked transaction (`lock.<write>`).
The others write whatever the step says in the claim's own round trip (claim.lua)."""

FREE = Cost(POSTGRES, 0)


def cost(design: str, operation: str, variant: str | None = None) -> Cost:
    """The round trips of `operation` (of its `variant`, when the design declares one)."""
    trips = ROUND_TRIPS[design]
    if variant is not None and f"{operation}.{variant}" in trips:
        return trips[f"{operation}.{variant}"]
    return trips.get(operation, FREE)
