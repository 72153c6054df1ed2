"""The external charge provider inside the lab: a stand-in for Stripe's charges endpoint.

Charges are rows in the provider's own schema (`provider.sql`), one per (account, token), so the
provider dedupes as real providers do: asking again with a token it has seen returns the first
outcome (the same charge, or the same refusal) instead of charging twice; the same token with a
different amount or currency is refused. Every call runs in a transaction of its own, never inside
the caller's: a charge, once made, stays made whatever the caller does next.

Faults (`ProviderFault`), injected per call:

* `fail`: a token seen for the first time is declined (`ProviderError`, a `failed` charge kept,
  no money moved); a token already charged still gets its charge back.
* `slow`: wait `delay_ms`, then charge.
* `timeout_after_effect`: charge, then raise `ProviderTimeout` as if the answer never came: the
  caller cannot tell this from a timeout before the charge, which is what makes it retry.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from reference_impl.common.db import Pool
from reference_impl.idempotency.payments import FAILED, SUCCEEDED, Charge, FaultMode

SCHEMA = Path(__file__).parent / "provider.sql"


class ProviderError(Exception):
    """The provider refused the charge: no money moved."""


class ProviderTimeout(Exception):
    """No answer in time: the charge may or may not have happened."""


@dataclass(frozen=True, slots=True)
class ProviderFault:
    mode: FaultMode
    delay_ms: int = 0


_COLUMNS = "id, account, token, reference, amount, currency, status"
# DO UPDATE rather than DO NOTHING: RETURNING then yields the first outcome too, in one round trip.
_CHARGE = (f"INSERT INTO lab_provider.charges ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
           f" ON CONFLICT (account, token) DO UPDATE SET token = EXCLUDED.token RETURNING {_COLUMNS}")


def _charge(row: asyncpg.Record) -> Charge:
    return Charge(*row)


async def charge(pool: Pool, tenant_id: str, amount: int, currency: str, token: str,
                 fault: ProviderFault | None = None, *, reference: str | None = None) -> Charge:
    """Charge `amount` (minor units) once per (tenant, token); a repeated token gets the first outcome."""
    if fault is not None and fault.mode == "slow":
        await asyncio.sleep(fault.delay_ms / 1000)
    status = FAILED if fault is not None and fault.mode == "fail" else SUCCEEDED
    async with pool.connection() as conn:
        made = _charge(await conn.fetchrow(_CHARGE, "ch_" + secrets.token_hex(12), tenant_id, token, reference,
                                           amount, currency, status))
    if (made.amount, made.currency) != (amount, currency):
        raise ProviderError(f"token {token!r} was used for another charge")
    if made.status == FAILED:
        raise ProviderError("the provider declined the charge")
    if fault is not None and fault.mode == "timeout_after_effect":
        raise ProviderTimeout("the provider did not answer in time")
    return made


async def charges(pool: Pool, tenant_id: str | None = None) -> list[Charge]:
    """Every charge, declined ones included (of one tenant, if given), oldest first."""
    async with pool.connection() as conn:
        rows = await conn.fetch(f"SELECT {_COLUMNS} FROM lab_provider.charges"
                                " WHERE $1::text IS NULL OR account = $1 ORDER BY created_at, id", tenant_id)
    return [_charge(r) for r in rows]
