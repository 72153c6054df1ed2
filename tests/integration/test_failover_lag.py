"""The lag nemesis: the replica's WAL receiver held before the primary is killed. An async primary
acknowledged writes no replica received, and the checker counts them lost; sync's refusal to acknowledge
without a standby is tests/integration/test_failover_drills.py's promise, under lag too (see the report)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from reference_impl.failover import invariants
from reference_impl.failover.drill import pg_drill
from saaslab.settings import Settings

pytestmark = pytest.mark.timeout(90)


def test_async_loses_the_writes_a_lagging_replica_never_received(server_path: Path, service_urls: Settings) -> None:
    r = asyncio.run(pg_drill(server_path / "async-lag", service_urls.redis_url or "", design="async", fault="kill",
                             seed=11, lag_s=1.5, warmup_s=1.0, settle_s=0.5, writers=2))
    count = r.verdict.count
    assert count.lost > 0 and "no_lost_writes" in r.verdict.failed(), count.line()
    # The lag's writes, not the whole run's: each lost write was acknowledged while the receiver was held.
    first_failure = r.verdict.unavailability.first_failure_us
    assert first_failure is not None
    held = {w.id for w in invariants.writes(r.history) if w.outcome == "ok" and w.complete_us is not None
            and first_failure - 2_500_000 <= w.complete_us <= first_failure}
    assert set(count.lost_ids) <= held, count.line()
    assert r.verdict.split_brain == 0 and r.new_primary == "n1"
