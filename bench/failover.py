"""Failover benchmark: what synchronous replication costs a write, and how long a failover takes, per design.

Two figures, measured in one run on one machine:

1. Write throughput and p99 under `sync` against `async`: a primary and one streaming replica
   (reference_impl/failover/drill.py `Rig`, the drills' cluster and manager), `WRITERS` closed-loop writers
   inserting uniquely identified rows through the drills' `PrimaryPool` for `seconds`, in ABBA order so
   background drift hits both designs alike. The ratio is sync over async: a `sync` commit waits for the
   standby's flush (`synchronous_commit = on`), so it pays a round trip to the replica and its fsync.
   The unsafe design replicates as `async` does and is not measured apart.
2. Failover time over `drills` drills per design (`saaslab failover drill`'s `pg_drill`, fault `kill`, the
   lab's timers: ttl 3 s, loop_wait 1 s): from the fault to the replica's promotion, median and max,
   and the window in which clients' writes were refused (the checker's `unavailability`). The bounds
   the timers promise are `Timers.failover_bounds_us`: ttl - loop_wait to ttl + loop_wait.

`python -m bench failover` runs both with 10 drills per design (several minutes: a drill is ~10 s);
`python -m bench.failover --drills N --seconds S` sets the count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from reference_impl.failover import core
from reference_impl.failover.drill import Rig, pg_drill
from reference_impl.failover.pgcluster import TABLE
from reference_impl.failover.pool import PrimaryPool, PrimaryUnavailable
from saaslab.results import LatencyHistogram
from saaslab.services import services_for
from saaslab.settings import Settings

WRITERS = 8
ROUNDS = 2
"""ABBA: each design measured ROUNDS times, alternating."""
DRILLS = 10
DESIGNS = ("sync", "async", "unsafe")
WARM_S = 1.0


async def _writes(rig: Rig, seconds: float) -> dict[str, float]:
    pool = PrimaryPool(rig.members(), timeout_s=5.0, size=WRITERS)
    latency = LatencyHistogram()
    done = errors = 0
    tag = uuid.uuid4().hex[:8]
    stop_at = time.monotonic() + seconds

    async def writer(i: int) -> None:
        nonlocal done, errors
        seq = 0
        while time.monotonic() < stop_at:
            seq += 1
            started = time.perf_counter_ns()
            try:
                await pool.fetch(f"INSERT INTO {TABLE} (id) VALUES ($1)", f"{tag}-{i}-{seq}")
            except PrimaryUnavailable:
                errors += 1
                continue
            latency.record_us(max(1, (time.perf_counter_ns() - started) // 1000))
            done += 1

    began = time.monotonic()
    await asyncio.gather(*(writer(i) for i in range(WRITERS)))
    elapsed = time.monotonic() - began
    await pool.close()
    return {"writes_per_s": done / elapsed, "p50_ms": latency.percentile_ms(50.0),
            "p99_ms": latency.percentile_ms(99.0), "errors": errors}


async def _throughput(state: Path, redis_url: str, seconds: float) -> dict[str, Any]:
    rigs = {d: Rig(state / f"bench-{d}", redis_url, design=d, seed=90 + i, use_network=False)
            for i, d in enumerate(("sync", "async"))}
    rounds: dict[str, list[dict[str, float]]] = {d: [] for d in rigs}
    try:
        for rig in rigs.values():
            await rig.start()
            await _writes(rig, WARM_S)
        order = [d for r in range(ROUNDS) for d in (("sync", "async") if r % 2 == 0 else ("async", "sync"))]
        for d in order:
            rounds[d].append(await _writes(rigs[d], seconds))
    finally:
        for rig in rigs.values():
            await rig.close()
    med = {d: {k: statistics.median(r[k] for r in rs) for k in ("writes_per_s", "p50_ms", "p99_ms")}
           for d, rs in rounds.items()}
    return {"rounds": rounds, "median": med,
            "throughput_ratio": med["sync"]["writes_per_s"] / med["async"]["writes_per_s"],
            "p99_ratio": med["sync"]["p99_ms"] / med["async"]["p99_ms"]}


async def _failovers(state: Path, redis_url: str, drills: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in DESIGNS:
        times, windows, lost = [], [], []
        for i in range(drills):
            r = await pg_drill(state / f"bench-drill-{d}", redis_url, design=d, fault="kill", seed=100 + i,
                               writers=2, warmup_s=1.0, settle_s=0.5, use_network=False)
            if r.failover_s is not None:
                times.append(r.failover_s)
            u = r.verdict.unavailability.window_us
            if u is not None:
                windows.append(u / 1e6)
            lost.append(r.verdict.count.lost)
        out[d] = {"drills": drills, "failover_s": times, "unavailability_s": windows, "lost": lost,
                  "failover_median_s": statistics.median(times) if times else None,
                  "failover_max_s": max(times, default=None),
                  "unavailability_median_s": statistics.median(windows) if windows else None,
                  "unavailability_max_s": max(windows, default=None)}
    return out


def _markdown(tp: dict[str, Any], fo: dict[str, Any], seconds: float, drills: int) -> list[str]:
    m = tp["median"]
    lo, hi = (b / core.US_PER_S for b in core.PRESETS["lab"].failover_bounds_us())
    lines = [f"Writes: {WRITERS} closed-loop writers on a primary and one replica, {ROUNDS} rounds of {seconds:g} s "
             f"per design (ABBA), medians.", "",
             "| design | writes/s | p50 ms | p99 ms |", "| --- | --- | --- | --- |"]
    lines += [f"| {d} | {m[d]['writes_per_s']:.0f} | {m[d]['p50_ms']:.2f} | {m[d]['p99_ms']:.2f} |" for d in m]
    lines += ["", f"sync/async: throughput x{tp['throughput_ratio']:.2f}, p99 x{tp['p99_ratio']:.2f}.", "",
              f"Failover after a kill, {drills} drills per design, the lab's timers (promotion expected between "
              f"{lo:g} and {hi:g} s after the fault):", "",
              "| design | failover median s | max s | writes refused median s | max s | lost (all drills) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for d, f in fo.items():
        cells = [f.get(k) for k in ("failover_median_s", "failover_max_s", "unavailability_median_s",
                                    "unavailability_max_s")]
        lines.append(f"| {d} | " + " | ".join("n/a" if c is None else f"{c:.2f}" for c in cells)
                     + f" | {sum(f['lost'])} |")
    return lines


def run(out: Path, *, seconds: float = 4.0, drills: int = DRILLS) -> dict:
    with services_for(Settings()) as settings:
        state = settings.state_dir.resolve() / "failover"
        redis_url = settings.redis_url or ""
        tp = asyncio.run(_throughput(state, redis_url, seconds))
        fo = asyncio.run(_failovers(state, redis_url, drills))
    result = {"benchmark": "failover", "seconds": seconds, "writers": WRITERS, "throughput": tp, "failover": fo,
              "markdown": _markdown(tp, fo, seconds, drills)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "failover.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per write round")
    parser.add_argument("--drills", type=int, default=DRILLS, help="failover drills per design")
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    args = parser.parse_args()
    if args.drills < 1 or args.seconds <= 0:
        parser.error("--drills must be at least 1 and --seconds positive")
    print("\n".join(run(args.out, seconds=args.seconds, drills=args.drills)["markdown"]))


if __name__ == "__main__":
    main()
