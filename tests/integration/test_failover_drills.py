"""One PostgreSQL failover drill per design, the faults rotated so each is covered (partition needs root) (each under 20 s with
the lab's short timers): what each design promises, checked Jepsen's way on real servers."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from reference_impl.failover import network
from reference_impl.failover.drill import pg_drill
from saaslab.settings import Settings

pytestmark = pytest.mark.timeout(90)


def _drill(server_path: Path, redis_url: str, design: str, fault: str):  # type: ignore[no-untyped-def]
    return asyncio.run(pg_drill(server_path / f"{design}-{fault}", redis_url, design=design, fault=fault, seed=7))


def _nothing_left(server_path: Path) -> None:
    running = subprocess.run(["pgrep", "-f", f"postgres -D {server_path}"], capture_output=True, text=True).stdout
    assert running.strip() == "", "a drill left a server running"
    if network.available() is None:
        spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not [n for n in spaces.split() if n.startswith("sl7")], spaces  # seed 7's namespaces


def test_sync_with_fencing_loses_nothing_when_the_primary_pauses(server_path: Path, service_urls: Settings) -> None:
    r = _drill(server_path, service_urls.redis_url or "", "sync", "pause")
    assert r.verdict.count.acknowledged > 100
    assert r.verdict.count.lost == 0 and r.verdict.split_brain == 0, r.verdict.count.line()
    assert r.verdict.valid, r.verdict.failed()
    assert r.failover_s is not None and 2.0 <= r.failover_s <= 8.0  # ttl 3 s, loop_wait 1 s
    assert r.new_primary == "n1"
    _nothing_left(server_path)


def test_async_with_fencing_fails_over_after_a_crash_and_measures_the_window(server_path: Path,
                                                                             service_urls: Settings) -> None:
    r = _drill(server_path, service_urls.redis_url or "", "async", "kill")
    assert r.verdict.split_brain == 0
    assert r.failover_s is not None and r.failover_s <= 8.0
    window = r.verdict.unavailability.window_us
    assert window is not None and 0 < window < 10_000_000
    # async: only the writes of the last moments may be lost
    assert r.verdict.count.lost <= r.verdict.count.acknowledged * 0.05, r.verdict.count.line()
    _nothing_left(server_path)


def test_the_checker_catches_the_unsafe_design_cut_off(server_path: Path, service_urls: Settings) -> None:
    """A partition when the machine allows namespaces (the old primary's own clients keep writing to it:
    split brain); otherwise a pause, after which a client pinned to the old primary writes to it."""
    fault = "pause" if network.available() else "partition"
    r = _drill(server_path, service_urls.redis_url or "", "unsafe", fault)
    assert r.verdict.count.lost > 0, r.verdict.count.line()
    assert "no_lost_writes" in r.verdict.failed()
    if fault == "partition":
        assert r.verdict.split_brain > 0 and "no_split_brain" in r.verdict.failed()
    _nothing_left(server_path)
