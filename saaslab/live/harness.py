"""The live-run harness every pattern's `saaslab load` shares: a reference service, a Locust run.

`service(settings, overrides=..., ...)` starts the reference service (`saaslab.launch`, lab mode on,
the admin token set, `overrides` (setting name -> value) replacing settings: the design under test)
and yields once `/readyz` answers; with `host` it uses a running service instead, whose settings
`served_settings(settings, host, token)` reads from its `GET /admin/config`, so a run models the
service it measures rather than the one it would have started. `run_locust(url,
locustfile, user_class, run=LoadRun(...), ...)` writes the run's configuration once
(`loadtests/common/runconfig.py`), runs a pattern's locustfile headless in a subprocess with
`--saaslab-run` naming it, one driver per process (`loadtests/common/lab.py`), and returns what the
processes wrote: their JSON summaries and their merged history.

Every subprocess runs in its own process group and is stopped (SIGTERM, then SIGKILL) when its
block ends, whatever ends it, and gets SIGTERM if the orchestrator itself dies (`saaslab.launch.spawn`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtests.common.openmodel import OpenModelResult
from loadtests.common.runconfig import OPTION, LoadRun
from saaslab.history import Op, load
from saaslab.launch import ROOT, Service, child_env, launched, log_reason, spawn, stop_process, wait_ready
from saaslab.results import ALL_TENANTS, Row, worker_label
from saaslab.services import ServiceError
from saaslab.settings import Settings
from scenarios.kernel.metrics import RunKey

Progress = Callable[[str], None]

CLIENT_TIMEOUT_S = 30.0
GENERATOR_NICENESS = -10
"""The Locust processes' scheduling priority (`launch.spawn`). An open-model generator must launch each
request at its time: on 2 cores shared with the service, PostgreSQL and Redis, a generator at the default
priority waits for a core a few milliseconds at a time (its send lag p99 4-7 ms at the demo's rates,
1-2 ms at -10). It uses little CPU, so its priority costs the service little."""
LOCUST_OVERHEAD_S = 30.0
"""Start-up, provisioning and the shared start margin, on top of the workload and its drain."""


@contextlib.contextmanager
def service(settings: Settings, *, token: str, overrides: Mapping[str, Any], log_path: Path,
            host: str | None = None, workers: int = 1, describe: str = "",
            progress: Progress | None = None, cpus: Collection[int] | None = None) -> Iterator[Service]:
    """A ready reference service in lab mode, `overrides` (setting name -> value) replacing `settings`.

    `host` means use that running service as it is. `describe` names the design in progress lines.
    """
    lab = settings.model_copy(update={**overrides, "lab_mode": True, "admin_token": token})
    with launched(lab, token=token, workers=workers, log_path=log_path, host=host, progress=progress, cpus=cpus,
                  describe=describe or ", ".join(f"{k}={v}" for k, v in overrides.items())) as svc:
        yield svc


def served_settings(settings: Settings, host: str, token: str) -> tuple[Settings, dict[str, Any]]:
    """`settings` with the values the service at `host` runs with, and those values as it answered them.

    Refuses (ServiceError, one line) a service that is not ready, will not answer its settings to `token`,
    or runs without lab mode (every live run arms lab-mode faults or resets state through admin routes).
    """
    url = host.rstrip("/")
    wait_ready(url, None, None)
    try:
        resp = httpx.get(f"{url}/admin/config", headers={"Authorization": f"Bearer {token}"},
                         timeout=CLIENT_TIMEOUT_S)
    except httpx.HTTPError as e:
        raise ServiceError(f"could not read {url}/admin/config: {e}") from None
    if resp.status_code == 401:
        raise ServiceError(f"the service at {url} refused the admin token: set SAASLAB_ADMIN_TOKEN to the one it "
                           f"was started with")
    if resp.status_code == 404:
        raise ServiceError(f"the service at {url} has no /admin/config, so its settings are unknown: "
                           f"serve it from this checkout (`saaslab serve`)")
    if resp.status_code != 200:
        raise ServiceError(f"{url}/admin/config answered HTTP {resp.status_code}")
    served = resp.json()
    if not served.get("lab_mode"):
        raise ServiceError(f"the service at {url} runs without lab mode, which live runs need: "
                           f"restart it with SAASLAB_LAB_MODE=1")
    known = {k: v for k, v in served.items() if k in Settings.model_fields}
    return Settings.model_validate({**settings.model_dump(), **known}), served


def refuse_unmodelled(host: str, served: Mapping[str, Any], modelled: Mapping[str, Any]) -> None:
    """Refuse (ServiceError, one line) a service whose settings differ from what the simulation models."""
    differ = {k: v for k, v in modelled.items() if served.get(k) != v}
    if differ:
        runs = ", ".join(f"{k}={served.get(k)}" for k in differ)
        wants = " ".join(f"SAASLAB_{k.upper()}={v}" for k, v in differ.items())
        raise ServiceError(f"the service at {host} runs {runs}, which the simulation does not model: "
                           f"restart it with {wants}")


# ---------------------------------------------------------------------------------------------
# Locust


@dataclass
class LocustRun:
    """The merged outputs of one Locust run: one JSON per process, their histories."""

    label: str
    outputs: list[dict[str, Any]]
    history: list[Op]
    wall_s: float

    @property
    def api_keys(self) -> dict[str, str]:
        """tenant id -> API key, for reading the state back."""
        return {t["tenant_id"]: t["api_key"] for o in self.outputs for t in o["tenants"].values()}

    def open_model(self) -> OpenModelResult:
        """Every process's open-model counters merged: the run's aggregate."""
        return OpenModelResult.merge(self.open_model_by_worker().values())

    def open_model_by_worker(self) -> dict[int, OpenModelResult]:
        """Each process's own open-model counters (its share of the schedule), by worker index."""
        return {int(o["worker_index"]): OpenModelResult.from_json(o["summary"]["open_model"])
                for o in sorted(self.outputs, key=lambda o: int(o["worker_index"]))
                if o["summary"].get("open_model")}


def _check_locust() -> None:
    if importlib.util.find_spec("locust") is None:
        raise ServiceError("Locust is not installed in this environment; run `make demo` or "
                           "`.venv/bin/pip install -e .`")


MAX_PROCESSES = 64


def check_processes(processes: int) -> int:
    """`processes` if it is a Locust process count the harness runs, else a one-line ServiceError."""
    if not 1 <= processes <= MAX_PROCESSES:
        raise ServiceError(f"--processes must be between 1 and {MAX_PROCESSES}, not {processes}")
    return processes


def run_locust(url: str, locustfile: str, user_class: str, *, run: LoadRun, token: str, processes: int,
               budget_s: float, logs: Path, progress: Progress | None = None,
               cpus: Collection[int] | None = None, niceness: int | None = GENERATOR_NICENESS) -> LocustRun:
    """Run `loadtests/<locustfile>.py`'s `user_class` headless as `run` says; every process drives once, then quits.

    With `processes` > 1 it is Locust's own distributed mode on this machine (`--processes`: a master and
    that many workers); each worker sends its share of the schedule (`loadtests.common.openmodel.shard`)
    from one common start, and the returned run holds every worker's JSON and all their histories.
    `cpus` pins the Locust processes to those cores, `niceness` sets their priority (None: ours)."""
    _check_locust()
    check_processes(processes)
    started = time.monotonic()
    label = run.label
    with tempfile.TemporaryDirectory(prefix="saaslab-locust-") as raw:
        config = run.model_copy(update={"out_dir": Path(raw)}).write(Path(raw) / "run.json")
        run_time = round(budget_s + LOCUST_OVERHEAD_S)
        cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / f"{locustfile}.py"), "--headless",
               "--host", url, "-u", str(processes), "-r", str(processes), "--run-time", f"{run_time}s",
               "--stop-timeout", "5", "--only-summary", "--loglevel", "WARNING", OPTION, str(config)]
        if processes > 1:
            cmd += ["--processes", str(processes)]
        cmd.append(user_class)
        log_path = logs / f"{label}.locust.log"
        if progress:
            progress(f"{label}: Locust {user_class} ({processes} process{'es' if processes > 1 else ''})")
        proc = spawn(cmd, child_env({"SAASLAB_ADMIN_TOKEN": token}), log_path, cpus=cpus, niceness=niceness)
        try:
            proc.wait(timeout=run_time + LOCUST_OVERHEAD_S)
        except subprocess.TimeoutExpired:
            raise ServiceError(f"Locust run {label} did not finish within {run_time + LOCUST_OVERHEAD_S:.0f}s; "
                               f"see {log_path}") from None
        finally:
            stop_process(proc)
        outputs = [json.loads(p.read_text()) for p in sorted(Path(raw).glob("*-w*.json"))]
        if proc.returncode not in (0, 1) or len(outputs) != processes:
            raise ServiceError(f"Locust run {label} failed (exit code {proc.returncode}, {len(outputs)} of "
                               f"{processes} process results): {log_reason(log_path) or 'no output'}; see {log_path}")
        history = [op for o in outputs for op in load(Path(raw) / o["history"])]
    return LocustRun(label, outputs, history, time.monotonic() - started)


SEND_LAG_PERCENTILES = (("p50", 50.0), ("p99", 99.0), ("max", 100.0))


def send_lag_rows(key: RunKey, result: OpenModelResult, *, prefix: str = "") -> list[Row]:
    """How late the generator launched the sends of one open-model run against their intended times
    (`send_lag_p50`, `send_lag_p99`, `send_lag_max`, ms, run-level): a latency measured from the intended
    time includes it, so a report can tell the generator's share of a tail from the service's."""
    return [key.row(ALL_TENANTS, f"{prefix}send_lag_{name}", result.send_lag.percentile_ms(q), "ms")
            for name, q in SEND_LAG_PERCENTILES]


def worker_rows(key: RunKey, run: LocustRun, *, prefix: str = "") -> list[Row]:
    """Per Locust process (tenant `worker_label(index)`), its share of one open-model run: `scheduled` and
    `sent` (requests), `target_rate` and `sent_rate` (rps) and its `send_lag_p50`, `send_lag_p99`,
    `send_lag_max` (ms). The run-level rows merge the processes; these show whether any one of them fell
    behind its share (a worker whose lag grows while the others keep time is short of CPU, not the service
    slow)."""
    rows: list[Row] = []
    for index, result in run.open_model_by_worker().items():
        label = worker_label(index)
        rows += [
            key.row(label, f"{prefix}scheduled", result.scheduled, "requests"),
            key.row(label, f"{prefix}sent", result.sent, "requests"),
            key.row(label, f"{prefix}target_rate", result.target_rate, "rps"),
            key.row(label, f"{prefix}sent_rate", result.sent_rate, "rps"),
            *(key.row(label, f"{prefix}send_lag_{name}", result.send_lag.percentile_ms(q), "ms")
              for name, q in SEND_LAG_PERCENTILES),
        ]
    return rows


def worker_line(run: LocustRun) -> str:
    """'2 processes: worker-0 sent 120.1/s of 120.0/s, send lag p99 1.1 ms; worker-1 ...', for progress lines."""
    parts = [f"{worker_label(i)} sent {r.sent_rate:.1f}/s of {r.target_rate:.1f}/s, send lag p99 "
             f"{r.send_lag.percentile_ms(99):.1f} ms" for i, r in run.open_model_by_worker().items()]
    return f"{len(parts)} process{'es' if len(parts) != 1 else ''}: " + "; ".join(parts)


def read_metrics(url: str) -> dict[str, float]:
    """Every sample of the service's /metrics, by name (labels folded into the name as Prometheus prints them)."""
    try:
        resp = httpx.get(f"{url}/metrics", timeout=CLIENT_TIMEOUT_S)
        resp.raise_for_status()
    except httpx.HTTPError as e:
        raise ServiceError(f"could not read {url}/metrics: {e}") from None
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out
