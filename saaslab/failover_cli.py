"""`saaslab failover drill`: one failover drill, or the whole matrix, written as rows and a Jepsen count."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from saaslab.patterns.failover import REDIS, REPLICATION
from saaslab.settings import Settings

app = typer.Typer(help="Failover drills: strike the primary, heal, count lost and split-brain writes (Jepsen's way).",
                  no_args_is_help=True, rich_markup_mode=None)

FAULTS = ("kill", "pause", "partition")


def _check(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise typer.BadParameter(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value


COMPONENTS = ("postgres", "redis")


@app.command("drill", help="Run a write load, strike the primary, heal, read the survivors back and count.")
def drill(
    component: Annotated[str | None, typer.Option(
        "--component", metavar="NAME", help="postgres or redis (default: postgres; with --all, both).")] = None,
    fault: Annotated[str, typer.Option("--fault", metavar="FAULT", help="kill, pause or partition.")] = "kill",
    design: Annotated[str | None, typer.Option(
        "--design", metavar="D", help="Default: SAASLAB_FAILOVER (postgres) or SAASLAB_FAILOVER_REDIS (redis).")] = None,
    duration: Annotated[float, typer.Option("--duration", metavar="S", min=1, max=600,
                                            help="How long the primary stays paused or cut off.")] = 5.0,
    seed: Annotated[int, typer.Option("--seed", metavar="N")] = 0,
    lag: Annotated[float, typer.Option("--lag", metavar="S", min=0, max=60,
                                       help="Hold the replicas' WAL receivers this long before the fault.")] = 0.0,
    out: Annotated[Path | None, typer.Option(
        "--out", metavar="DIR",
        help="Default: <SAASLAB_RESULTS_DIR>/failover/live/, the measured runs `saaslab report failover` reads.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every design against every fault.")] = False,
) -> None:
    from reference_impl.failover import drill as drills
    from reference_impl.failover import network
    from reference_impl.failover.redis_cluster import SentinelTimers
    from reference_impl.failover.redis_drill import redis_drill
    from saaslab.results import new_run_id, write_run
    from saaslab.services import services_for

    if component is not None:
        _check(component, COMPONENTS, "component")
    components = (component,) if component else (COMPONENTS if all_ else ("postgres",))
    _check(fault, FAULTS, "fault")
    settings = Settings()
    axes = {"postgres": (REPLICATION, settings.failover), "redis": (REDIS, settings.failover_redis)}
    if design is not None and not all_:
        _check(design, axes[components[0]][0].choices, f"{components[0]} design")
    faults = FAULTS if all_ else (fault,)
    timers = drills.named_timers(settings.failover_ttl_s, settings.failover_loop_wait_s,
                                 settings.failover_retry_timeout_s)
    sentinel_timers = SentinelTimers(down_after_ms=settings.failover_sentinel_down_after_ms,
                                     min_replicas_max_lag_s=settings.failover_min_replicas_max_lag_s)
    out = out or Path(settings.results_dir) / "failover" / "live"
    run_id = new_run_id("failover", "live")
    rows, summaries, ran = [], [], []
    with services_for(settings) as s:
        for comp in components:
            axis, default = axes[comp]
            designs = axis.choices if all_ else (design or default,)
            ran.append({"component": comp, "designs": list(designs)})
            for d in designs:
                for f in faults:
                    if f == "partition" and (reason := network.available()):
                        typer.echo(f"{comp} {d} {f}: skipped: {reason}")
                        continue
                    folder = s.state_dir.resolve() / "failover" / f"{comp}-{d}-{f}"
                    if comp == "postgres":
                        result = asyncio.run(drills.pg_drill(
                            folder, s.redis_url or "", design=d, fault=f, seed=seed,
                            replicas=settings.failover_replicas, timers=timers,
                            sync_commit=settings.failover_sync_commit, hold_s=duration, lag_s=lag,
                            max_lag_bytes=settings.failover_max_lag_bytes))
                        condition = drills.condition(f, duration, timers.name, lag)
                    else:
                        # Waits (up to 30 s) for Sentinel to turn a woken or reconnected old master into
                        # a replica: until then it takes the writes of whoever still talks to it.
                        result = asyncio.run(redis_drill(
                            folder, design=d, fault=f, seed=seed, timers=sentinel_timers,
                            wait_ms=settings.failover_redis_wait_ms, hold_s=duration, converge_s=30))
                        condition = drills.condition(f, duration, "sentinel")
                    summary = result.summary()
                    summaries.append(summary)
                    rows += drills.result_rows(result, run_id, condition)
                    window = summary["unavailability_s"]
                    typer.echo(f"{comp:8} {d:12} {f:9} {summary['jepsen']}; {summary['split_brain_writes']} "
                               f"split-brain; failover {summary['failover_s'] or float('nan'):.2f} s; "
                               f"writes refused for {window if window is not None else float('nan'):.2f} s")
    write_run(out, run_id=run_id, pattern="failover", source="live", rows=rows,
              parameters={"drills": ran, "faults": list(faults), "seed": seed, "hold_s": duration,
                          "lag_ms": lag * 1000, "timers": timers.name,
                          "timers_us": [timers.ttl_us, timers.loop_wait_us, timers.retry_timeout_us],
                          "sentinel": [sentinel_timers.down_after_ms, sentinel_timers.failover_timeout_ms,
                                       sentinel_timers.min_replicas_max_lag_s, settings.failover_redis_wait_ms]})
    (out / "drills.json").write_text(json.dumps(summaries, indent=2))
    typer.echo(f"wrote {out / 'results.csv'} and {out / 'drills.json'}")
