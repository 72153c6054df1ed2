"""`saaslab failover drill`: one failover drill, or the whole matrix, written as rows and a Jepsen count."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from saaslab.patterns.failover import REPLICATION
from saaslab.settings import Settings

app = typer.Typer(help="Failover drills: strike the primary, heal, count lost and split-brain writes (Jepsen's way).",
                  no_args_is_help=True, rich_markup_mode=None)

FAULTS = ("kill", "pause", "partition")


def _check(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise typer.BadParameter(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value


@app.command("drill", help="Run a write load, strike the primary, heal, read the survivors back and count.")
def drill(
    component: Annotated[str, typer.Option("--component", metavar="NAME", help="postgres or redis.")] = "postgres",
    fault: Annotated[str, typer.Option("--fault", metavar="FAULT", help="kill, pause or partition.")] = "kill",
    design: Annotated[str | None, typer.Option("--design", metavar="D", help="Default: SAASLAB_FAILOVER.")] = None,
    duration: Annotated[float, typer.Option("--duration", metavar="S", min=1, max=600,
                                            help="How long the primary stays paused or cut off.")] = 5.0,
    seed: Annotated[int, typer.Option("--seed", metavar="N")] = 0,
    lag: Annotated[float, typer.Option("--lag", metavar="S", min=0, max=60,
                                       help="Hold the replicas' WAL receivers this long before the fault.")] = 0.0,
    out: Annotated[Path | None, typer.Option("--out", metavar="DIR", help="Default: reports/failover/drill/.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every design against every fault.")] = False,
) -> None:
    from reference_impl.failover import drill as drills
    from reference_impl.failover import network
    from saaslab.results import new_run_id, write_run
    from saaslab.services import services_for

    _check(component, ("postgres", "redis"), "component")
    if component == "redis":
        raise typer.BadParameter("the Redis drill (Sentinel, plain / WAIT / min-replicas) is not built yet")
    _check(fault, FAULTS, "fault")
    settings = Settings()
    designs = REPLICATION.choices if all_ else (_check(design or settings.failover, REPLICATION.choices, "design"),)
    faults = FAULTS if all_ else (fault,)
    timers = drills.named_timers(settings.failover_ttl_s, settings.failover_loop_wait_s,
                                 settings.failover_retry_timeout_s)
    out = out or Path("reports/failover/drill")
    run_id = new_run_id("failover", "live")
    rows, summaries = [], []
    with services_for(settings) as s:
        for d in designs:
            for f in faults:
                if f == "partition" and (reason := network.available()):
                    typer.echo(f"{d} {f}: skipped: {reason}")
                    continue
                result = asyncio.run(drills.pg_drill(
                    s.state_dir.resolve() / "failover" / f"{d}-{f}", s.redis_url or "", design=d, fault=f, seed=seed,
                    replicas=settings.failover_replicas, timers=timers, sync_commit=settings.failover_sync_commit,
                    hold_s=duration, lag_s=lag, max_lag_bytes=settings.failover_max_lag_bytes))
                summary = result.summary()
                summaries.append(summary)
                rows += drills.result_rows(result, run_id, drills.condition(f, duration, timers.name, lag))
                window = summary["unavailability_s"]
                typer.echo(f"{d:7} {f:9} {summary['jepsen']}; {summary['split_brain_writes']} split-brain; "
                           f"failover {summary['failover_s'] or float('nan'):.2f} s; "
                           f"writes refused for {window if window is not None else float('nan'):.2f} s")
    write_run(out, run_id=run_id, pattern="failover", source="live", rows=rows,
              parameters={"component": component, "designs": list(designs), "faults": list(faults), "seed": seed,
                          "hold_s": duration, "lag_ms": lag * 1000, "timers": timers.name,
                          "timers_us": [timers.ttl_us, timers.loop_wait_us, timers.retry_timeout_us]})
    (out / "drills.json").write_text(json.dumps(summaries, indent=2))
    typer.echo(f"wrote {out / 'results.csv'} and {out / 'drills.json'}")
