"""The command line as a user meets it: one-line errors, help, and the quick simulation."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from saaslab.services import _pid_alive

pytestmark = pytest.mark.e2e

SAASLAB = [sys.executable, "-m", "saaslab.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*SAASLAB, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize(("args", "needle"), [
    (["sim", "nosuchpattern"], "unknown pattern 'nosuchpattern'"),
    (["sim", "tenancy", "--seeds", "many"], "--seeds"),
    (["sim", "tenancy", "--seeds", "0"], "--seeds"),
    (["frobnicate"], "No such command"),
    (["load", "nosuchpattern"], "unknown pattern"),
    (["load", "tenancy", "--processes", "0"], "--processes"),
    (["report", "nosuchpattern"], "unknown pattern"),
])
def test_wrong_arguments_print_one_line_and_fail(args: list[str], needle: str) -> None:
    r = run_cli(*args)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in r.stderr + r.stdout


def test_a_usage_error_points_at_the_subcommands_own_help() -> None:
    r = run_cli("sim", "tenancy", "--seeds", "many")
    assert r.returncode == 2
    assert r.stderr.strip().endswith("(see `saaslab sim --help`)"), r.stderr
    r = run_cli("services", "up", "--bogus")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: No such option: --bogus (see `saaslab services up --help`)"]


def test_version_prints_the_package_version() -> None:
    from saaslab import __version__

    r = run_cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"saaslab {__version__}"


@pytest.mark.parametrize(("command", "flags"), [
    ([], ["--debug", "--version"]),
    (["sim"], ["--quick"]),
    (["load"], ["--quick", "--unsafe"]),
    (["completer"], ["--once"]),
    (["demo"], ["--skip-load"]),
])
def test_flags_show_no_value_placeholder(command: list[str], flags: list[str]) -> None:
    """A flag takes no value, so its help line names none; an option that takes one shows what it takes."""
    r = run_cli(*command, "--help")
    assert r.returncode == 0, r.stderr
    assert "<bool>" not in r.stdout
    options = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()
               if line.startswith("  --") and len(line.split()) > 1}
    for flag in [*flags, "--help"]:
        word = options[flag]  # the flag's help text starts right after it, with no METAVAR or <type> between
        assert word[0].isupper() and not word.isupper(), (flag, r.stdout)
    if command == ["sim"]:
        assert options["--seeds"] == "N" and options["--out"] == "DIR"


def test_busy_port_is_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("serve", "--port", str(port))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: port {port} on 127.0.0.1 is busy; pick another with --port N"]


def test_help_teaches_every_command() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("services", "serve", "sim", "load", "check", "report", "demo"):
        assert cmd in r.stdout


def test_check_without_a_run_says_what_to_do(tmp_path: Path) -> None:
    r = run_cli("check", "tenancy", "--out", str(tmp_path))
    assert r.returncode == 2
    assert f"run `saaslab load tenancy --out {tmp_path}` first" in r.stderr


def test_quick_sim_writes_rows_and_run_json_and_report_reads_them(tmp_path: Path) -> None:
    """--out is the pattern's results folder; one already named sim/ is the run's own folder, not doubled; `report
    --out` reads what `sim --out` wrote, wherever that is."""
    r = run_cli("sim", "tenancy", "--quick", "--out", str(tmp_path / "mine" / "sim"), "--jobs", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (tmp_path / "mine" / "sim" / "sim").exists()
    rows = list(csv.DictReader((tmp_path / "mine" / "sim" / "results.csv").open()))
    assert {row["design"] for row in rows} == {"fifo", "bulkhead", "wfq"}
    assert {row["source"] for row in rows} == {"sim"}
    assert len({row["seed"] for row in rows}) >= 5
    run = json.loads((tmp_path / "mine" / "sim" / "run.json").read_text())
    assert run["pattern"] == "tenancy" and run["rows"] == len(rows)
    assert run["machine"]["cpus"] and run["packages"]["simpy"]

    r = run_cli("report", "tenancy", "--out", str(tmp_path / "mine"))
    assert r.returncode == 0, r.stderr[-2000:]
    page = (tmp_path / "mine" / "index.html").read_text()
    assert run["run_id"] in page and (tmp_path / "mine" / "summary.md").is_file()
    # Not a <results>/<pattern>/ folder: no index of every pattern beside it, and no link to one.
    assert "../index.html" not in page and not (tmp_path / "index.html").exists()
    assert f"Measured (live): missing — no {tmp_path / 'mine' / 'live' / 'results.csv'}; run `saaslab load tenancy " \
           f"--out {tmp_path / 'mine'}`" in page


@pytest.mark.parametrize(("command", "out", "fix"), [
    (["load", "tenancy"], "run/sim", "run"),
    (["sim", "tenancy"], "run/live", "run"),
    (["check", "tenancy"], "run/sim", "run"),
    (["sim", "all"], "run/sim", "run"),
])
def test_an_out_folder_that_names_the_other_source_is_one_line(tmp_path: Path, command: list[str], out: str,
                                                                fix: str) -> None:
    r = run_cli(*command, "--out", str(tmp_path / out))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --out ") and lines[0].endswith(f"try --out {tmp_path / fix}")
    assert not (tmp_path / "run").exists()


def test_a_terminated_command_stops_the_embedded_servers_it_started(tmp_path: Path) -> None:
    """SIGTERM unwinds like Ctrl-C: no embedded PostgreSQL or Redis outlives the command that started them."""
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if k not in ("SAASLAB_DATABASE_URL", "SAASLAB_REDIS_URL")}
    env["SAASLAB_STATE_DIR"] = str(state)
    proc = subprocess.Popen([*SAASLAB, "load", "tenancy", "--quick", "--out", str(tmp_path / "run")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        pids: dict = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                pids = json.loads((state / "services.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                pids = {}
            if pids.get("pg_pid") and pids.get("redis_pid"):
                break
            time.sleep(0.2)
        assert pids.get("pg_pid") and pids.get("redis_pid"), "the command never started its embedded servers"
        time.sleep(1.0)  # into the run, past start-up
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read() if proc.stderr else ""
    assert not (state / "services.json").exists()
    assert not any(_pid_alive(pids[k]) for k in ("pg_pid", "redis_pid"))

