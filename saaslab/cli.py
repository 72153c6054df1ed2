"""The `saaslab` command line: services, serve, completer, reaper, sim, load, check, report, demo (docs/contract.md).

Every command builds its `Settings` from `SAASLAB_*` variables. A command that needs PostgreSQL and
Redis gets them from `services_for`, which starts the embedded servers for its lifetime when none
are configured. Errors print one line saying what is wrong and how to fix it (`--debug` shows the
traceback) and exit non-zero.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from saaslab import __version__
from saaslab.history import CheckResult
from saaslab.patterns import REGISTRY, Pattern, with_face
from saaslab.services import EmbeddedServices, ServiceError, exit_on_sigterm, port_is_free, services_for
from saaslab.settings import Settings

console = Console(stderr=True, soft_wrap=True, log_path=False)
app = typer.Typer(
    help="A simulation and load-testing lab for SaaS backend patterns.\n\n"
    "Start with `saaslab demo` (the quick lab for every pattern), then explore one pattern:\n"
    "`saaslab sim tenancy`, `saaslab load tenancy`, `saaslab report tenancy`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: Typer's rich panels print a `<bool>` placeholder after flags (even --help),
    # which take no value; the plain formatter shows a metavar only for options that take one.
    rich_markup_mode=None,
)
services_app = typer.Typer(help="The PostgreSQL and Redis the lab uses (embedded unless SAASLAB_*_URL are set).",
                           no_args_is_help=True, rich_markup_mode=None)
app.add_typer(services_app, name="services")

_debug = False


class UserError(Exception):
    """A mistake the user can fix; printed as one line."""


# Typer vendors its own copy of click; find its UsageError through a public class rather than
# importing a private module.
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"saaslab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_print_version, expose_value=False)] = False,
) -> None:
    global _debug
    _debug = debug


def _patterns(pattern: str, face: str = "simulation") -> list[Pattern]:
    """The registered patterns a PATTERN argument names, keeping those that have `face`."""
    known = [p.slug for p in with_face(face)]
    if pattern == "all":
        return list(with_face(face))
    if pattern in REGISTRY and pattern not in known:
        raise UserError(f"{pattern} has no {face} face yet; try `saaslab sim {pattern}`, "
                        f"or one of: {', '.join(known)}")
    if pattern not in known:
        raise UserError(f"unknown pattern {pattern!r}; choose one of: {', '.join(known)}, all")
    return [REGISTRY[pattern]]


# What each command writes or reads inside a pattern's results folder (None: both sim/ and live/).
_SOURCE_OF = {"sim": "sim", "load": "live", "check": "live", "report": None}


def _out_dir(out: Path | None, pattern: str, many: bool, command: str) -> Path:
    """The pattern's results folder, which holds sim/ and live/: `--out`, else <SAASLAB_RESULTS_DIR>/<pattern>.
    With PATTERN all, `--out` holds one results folder per pattern. A folder named sim or live is taken as the
    run's own folder, so `saaslab sim P --out x/sim` writes x/sim/results.csv, not x/sim/sim/."""
    if out is None:
        return Settings().results_dir / pattern
    if out.name in ("sim", "live"):
        source = _SOURCE_OF[command]
        if many or (source is not None and source != out.name):
            what = "the folder that holds one results folder per pattern" if many else "the pattern's results folder"
            raise UserError(f"--out {out} names a {out.name}/ run folder, but --out is {what} (it holds sim/ and "
                            f"live/): try --out {out.parent}")
        return out.parent
    return out / pattern if many else out


def _pattern_help(face: str) -> str:
    return "Pattern slug or 'all': " + "; ".join(f"{p.slug} ({p.title.lower()})" for p in with_face(face)) + "."


PatternArg = Annotated[str, typer.Argument(metavar="PATTERN", help=_pattern_help("simulation"))]
LivePatternArg = Annotated[str, typer.Argument(metavar="PATTERN", help=_pattern_help("live"))]
_UNSAFE_LIST = ", ".join(f"{p.slug}: {p.unsafe.name}" for p in with_face("live") if p.unsafe)
QuickOpt = Annotated[bool, typer.Option("--quick", help="The short version used by `saaslab demo`.")]
OutOpt = Annotated[Path | None, typer.Option("--out", metavar="DIR", help=(
    "The pattern's results folder, which holds sim/ and live/ (default: <SAASLAB_RESULTS_DIR>/<pattern>/, the "
    "project's reports/<pattern>/); with PATTERN all, one such folder per pattern inside DIR."))]


# --- services -----------------------------------------------------------------------------------

@services_app.command("up")
def services_up() -> None:
    """Start embedded PostgreSQL and Redis and leave them running (until `saaslab services down`)."""
    s = Settings()
    if s.database_url and s.redis_url:
        console.print("SAASLAB_DATABASE_URL and SAASLAB_REDIS_URL are set: using those servers, nothing to start.")
        return
    ep = EmbeddedServices(s.state_dir).up()
    console.print(f"PostgreSQL: {ep.database_url}\nRedis:      {ep.redis_url}")
    console.print("To point other tools at them: "
                  f"export SAASLAB_DATABASE_URL={ep.database_url} SAASLAB_REDIS_URL={ep.redis_url}")


@services_app.command("down")
def services_down() -> None:
    """Stop the embedded PostgreSQL and Redis (data stays under .saaslab/)."""
    EmbeddedServices(Settings().state_dir).down()
    console.print("embedded services stopped")


@services_app.command("status")
def services_status() -> None:
    """Show which servers the lab would use and whether the embedded ones are running."""
    s = Settings()
    if s.database_url and s.redis_url:
        console.print(f"configured: PostgreSQL {s.database_url}, Redis {s.redis_url}")
        return
    for k, v in EmbeddedServices(s.state_dir).status().items():
        console.print(f"{k:13} {v}")


# --- serve --------------------------------------------------------------------------------------

@app.command()
def serve(
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="N", help="TCP port.", min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(metavar="N", help="Service worker processes.", min=1, max=64)] = 1,
) -> None:
    """Run the reference service (FastAPI on uvicorn). Ready when GET /readyz answers 200."""
    from saaslab import launch

    if not port_is_free(port, host):
        raise UserError(f"port {port} on {host} is busy; pick another with --port N")
    settings = Settings()
    token = settings.admin_token or secrets.token_urlsafe(24)
    if not settings.admin_token:
        console.print(f"admin token (set SAASLAB_ADMIN_TOKEN to choose one): {token}")
    with services_for(settings) as s:
        code = launch.serve(s.model_copy(update={"admin_token": token}), host=host, port=port, workers=workers,
                            ready=lambda url: console.print(f"serving on {url} with {workers} worker(s); "
                                                            "Ctrl-C stops"))
    if code:
        raise typer.Exit(code)


# --- idempotency: completer and reaper ----------------------------------------------------------

IntervalOpt = Annotated[float, typer.Option("--interval", metavar="SECONDS", help="Seconds between passes.", min=0.01, max=86400)]
OnceOpt = Annotated[bool, typer.Option("--once", help="Run one pass, print how many it handled, and exit.")]


def _idempotency_process(kind: str, interval: float, once: bool) -> int:
    """Run the completer or reaper against the configured (or embedded) servers."""
    import asyncio
    import logging

    from reference_impl import background

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = Settings()
    if settings.idempotency != "postgres":
        console.print(f"note: SAASLAB_IDEMPOTENCY={settings.idempotency} keeps no claims in PostgreSQL; the {kind} "
                      "only sees what an earlier `postgres` run left", highlight=False)
    run = background.run_completer if kind == "completer" else background.run_reaper
    with services_for(settings) as s:
        if not once:
            console.print(f"{kind}: a pass every {interval:g} s; Ctrl-C stops", highlight=False)
        try:
            return asyncio.run(run(s, interval_s=interval, once=once))
        except OSError as e:
            raise UserError(f"cannot reach PostgreSQL ({e}); check SAASLAB_DATABASE_URL, "
                            "or unset it to use the embedded server") from e


@app.command("completer", help=(
    "Finish or roll back idempotent requests abandoned past their lock timeout.\n\n"
    "A request is abandoned when its worker died between the recovery points (`started`, `charge_created`) "
    "of the postgres design. A payment resumes from its recovery point with the same provider token, so it is "
    "charged at most once, and is published to the payments of the SAASLAB_ISOLATION design: run the completer "
    "with the service's settings. Any other request is rolled back, so that its retry runs afresh.\n\n"
    "Runs a pass every --interval seconds until Ctrl-C or SIGTERM; --once runs one pass and prints how many "
    "requests it handled."))
def completer_command(interval: IntervalOpt = 1.0, once: OnceOpt = False) -> None:
    done = _idempotency_process("completer", interval, once)
    if once:
        typer.echo(f"completer: {done} abandoned request(s) finished or rolled back")


@app.command("reaper", help=(
    "Delete idempotency keys past their retention (SAASLAB_IDEMPOTENCY_RETENTION_S, default 24 h).\n\n"
    "A key still locked is never expired, so a request in flight is never reaped; payments are the ledger "
    "and are never deleted.\n\n"
    "Runs a pass every --interval seconds until Ctrl-C or SIGTERM; --once runs one pass and prints how many "
    "keys it deleted."))
def reaper_command(interval: IntervalOpt = 60.0, once: OnceOpt = False) -> None:
    deleted = _idempotency_process("reaper", interval, once)
    if once:
        typer.echo(f"reaper: {deleted} expired idempotency key(s) deleted")


# --- sim / load / check / report -----------------------------------------------------------------

@contextmanager
def _progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _sim(pattern: Pattern, out: Path, quick: bool, seeds: int, jobs: int) -> Path:
    module = pattern.module("simulation")
    with _progress_bar(f"sim {pattern.slug}") as progress:
        return module.run(out, quick=quick, seeds=seeds, jobs=jobs, progress=progress)


@app.command()
def sim(
    pattern: PatternArg,
    quick: QuickOpt = False,
    seeds: Annotated[int, typer.Option(metavar="N", help="Seeds per design and load point (>= 5 for confidence intervals).",
                                       min=1, max=1000)] = 5,
    jobs: Annotated[int, typer.Option(metavar="N", help="Worker processes for the sweep.", min=1, max=256)] = os.cpu_count() or 1,
    out: OutOpt = None,
) -> None:
    """Run a pattern's SimPy scenarios; writes <out>/sim/results.csv and run.json."""
    chosen = _patterns(pattern)
    for p in chosen:
        path = _sim(p, _out_dir(out, p.slug, len(chosen) > 1, "sim"), quick, seeds, jobs)
        console.print(f"{p.slug}: simulated results in {path}")


def _load(pattern: Pattern, out: Path, quick: bool, host: str | None, rate: float | None,
          duration: float | None, unsafe: bool = False, processes: int = 1) -> Path:
    settings = Settings()
    with services_for(settings) as s:
        return pattern.module("live").run(s, out, quick=quick, host=host, rate=rate, duration=duration,
                                          progress=lambda msg: console.log(msg), unsafe=unsafe, processes=processes)


@app.command()
def load(
    pattern: LivePatternArg,
    quick: QuickOpt = False,
    host: Annotated[str | None, typer.Option(metavar="URL", help="URL of a running service; default: start one here.")] = None,
    rate: Annotated[float | None, typer.Option(metavar="RPS", help="Override the offered load (requests/s).", min=0.1)] = None,
    duration: Annotated[float | None, typer.Option(metavar="SECONDS", help="Override the load duration in seconds.", min=1)] = None,
    unsafe: Annotated[bool, typer.Option(
        "--unsafe", help="Also run the pattern's deliberately unsafe design in the same harness, into "
        f"<out>/unsafe/live/ ({_UNSAFE_LIST}), to see the checker catch it: "
        "`saaslab check PATTERN --out <out>/unsafe`.")] = False,
    processes: Annotated[int, typer.Option(
        metavar="N", min=1, max=64,
        help="Locust processes sharing the open-model schedule (Locust's distributed mode: a master and N "
        "workers here, each sending every N-th arrival from one common start); the rows show each worker's "
        "sent rate and send lag. For more than one machine, see the README.")] = 1,
    out: OutOpt = None,
) -> None:
    """Drive the live service with Locust; writes <out>/live/results.csv, run.json, history and checks."""
    chosen = _patterns(pattern, "live")
    for p in chosen:
        path = _load(p, _out_dir(out, p.slug, len(chosen) > 1, "load"), quick, host, rate, duration, unsafe, processes)
        console.print(f"{p.slug}: measured results in {path}")


def _checker(pattern: Pattern) -> ModuleType:
    """The module with the pattern's `check_run(out, settings)`: its live face's if it has one (a checker that
    needs what the load run read back), else its invariants'. It may also say which verdicts the lab
    expects (`expected(result, results) -> bool`: a run that mixes safe designs with the deliberately unsafe
    one expects the unsafe one to fail)."""
    live = pattern.module("live")
    return live if hasattr(live, "check_run") else pattern.module("invariants")


def _unsafe_only(p: Pattern, out: Path) -> bool:
    """Whether the live run in `out` ran the pattern's deliberately unsafe design alone (as `load --unsafe` does)."""
    try:
        designs = json.loads((out / "live" / "run.json").read_text())["parameters"]["designs"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return p.unsafe is not None and designs == [p.unsafe.name]


def _check(p: Pattern, out: Path) -> bool:
    pattern = p.slug
    module = _checker(p)
    if not (out / "live" / "history.jsonl").exists():
        from saaslab.report.data import command

        # `load --unsafe` writes the unsafe design's run into <out>/unsafe/.
        make = command("load", pattern, out.parent) + " --unsafe" if out.name == "unsafe" else command("load", pattern, out)
        raise UserError(f"no history in {out / 'live'}; run `{make}` first")
    with services_for(Settings()) as s:
        results = module.check_run(out, s)
    judge = getattr(module, "expected", lambda r, _: r.valid)
    unsafe_only = _unsafe_only(p, out)
    if unsafe_only:  # what `load --unsafe` writes: its checker is meant to fail
        judge = lambda r, found: r.valid or any(not x.valid for x in found)  # noqa: E731

    def expected(r: CheckResult) -> bool:
        return judge(r, results)

    ok = all(expected(r) for r in results)
    if unsafe_only and all(r.valid for r in results):
        ok = False
        console.print(f"{pattern}: [red]every check held on the deliberately unsafe design: it was not caught[/]")
    for r in results:
        mark = "[green]valid[/]" if r.valid else "[red]VIOLATED[/]"
        if expected(r) != r.valid:
            mark += " (expected of the unsafe design)" if not r.valid else " [red](the unsafe design was not caught)[/]"
        # escape: a name like `exactly_one_effect[none]` is not markup
        console.print(f"{pattern}: {escape(r.name)}: {mark} ({r.checked} checked, {r.violations} violations)")
    return ok


@app.command()
def check(pattern: LivePatternArg, out: OutOpt = None) -> None:
    """Run a pattern's invariant checks over the last live run's history and final state."""
    chosen = _patterns(pattern, "live")
    ok = all([_check(p, _out_dir(out, p.slug, len(chosen) > 1, "check")) for p in chosen])
    if not ok:
        raise typer.Exit(1)


@app.command()
def report(pattern: PatternArg, out: OutOpt = None) -> None:
    """Write <out>/index.html and summary.md from <out>/sim/ and <out>/live/, and the index of every pattern
    beside them (<SAASLAB_RESULTS_DIR>/index.html by default)."""
    from saaslab.report import ReportError, write_index, write_pattern_report

    chosen = _patterns(pattern, "report")
    folders = [_out_dir(out, p.slug, len(chosen) > 1, "report") for p in chosen]
    for p, folder in zip(chosen, folders, strict=True):
        try:
            console.print(f"{p.slug}: report in {write_pattern_report(p.slug, directory=folder)}")
        except ReportError as e:
            raise UserError(str(e)) from e
    # The index lists <root>/<pattern>/ folders, so it is written only where the reports sit in that layout.
    if all(folder.name == p.slug for p, folder in zip(chosen, folders, strict=True)):
        console.print(f"index: {write_index(folders[0].parent)}")


@app.command()
def demo(
    skip_load: Annotated[bool, typer.Option("--skip-load", help="Simulate only; no live load runs.")] = False,
) -> None:
    """The quick lab for every pattern: simulate, load the live service, check, report."""
    from saaslab.report import write_index, write_pattern_report

    started = time.monotonic()
    settings = Settings()
    with services_for(settings):
        for p in REGISTRY.values():
            out = settings.results_dir / p.slug
            _sim(p, out, quick=True, seeds=5, jobs=os.cpu_count() or 1)
            if not skip_load and p.has_live:
                _load(p, out, quick=True, host=None, rate=None, duration=None)
            console.print(f"{p.slug}: report in {write_pattern_report(p.slug, directory=out)}")
        index = write_index(settings.results_dir)
    console.print(f"demo finished in {time.monotonic() - started:.0f}s; open {index.resolve()}")


@app.command("settings")
def settings_command() -> None:
    """List every SAASLAB_* setting: its value here, its default, and the pattern that declares it."""
    current = Settings()
    owners = {name: p.slug for p in REGISTRY.values() if p.settings for name in p.settings.model_fields}
    rows = [("variable", "value", "default", "declared in")]
    for name, field in Settings.model_fields.items():
        value = getattr(current, name)
        rows.append((f"SAASLAB_{name.upper()}", "(set)" if name == "admin_token" and value else str(value),
                     str(field.get_default(call_default_factory=True)),
                     f"saaslab/patterns/{owners[name]}.py" if name in owners else "saaslab/settings.py"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])


def main() -> None:
    """Entry point: run the Typer app, turning known errors into one line and an exit code."""
    exit_on_sigterm()  # a terminated run stops the embedded servers it started, as Ctrl-C does
    try:
        # Without standalone mode click returns a command's exit code instead of exiting.
        code = app(prog_name="saaslab", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except _UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError" and e.ctx is not None:
            typer.echo(e.ctx.get_help())
            sys.exit(0)
        cmd = e.ctx.command_path if e.ctx else "saaslab"
        console.print(f"error: {e.format_message()} (see `{cmd} --help`)", highlight=False)
        sys.exit(2)
    except (UserError, ServiceError) as e:
        if _debug:
            raise
        console.print(f"error: {e}", highlight=False)
        sys.exit(2)
    except ValidationError as e:  # a SAASLAB_* setting out of range
        if _debug:
            raise
        first = e.errors()[0]
        field = "_".join(str(p) for p in first["loc"]).upper()
        where = f"SAASLAB_{field}: " if field else ""
        message = first["msg"].removeprefix("Value error, ")
        console.print(f"error: {where}{message} (see `saaslab settings`)", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
