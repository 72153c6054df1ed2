"""The live-run harness every pattern's `saaslab load` shares: a reference service, a Locust run.

`service(settings, env=..., ...)` starts the reference service in a uvicorn subprocess (lab mode
on, the admin token set, `env` overriding any setting: the design under test) and yields once
`/readyz` answers; with `host` it uses a running service instead. `run_locust(url, locustfile,
user_class, ...)` runs a pattern's locustfile headless in a subprocess, one driver per process
(`loadtests/common/lab.py`), and returns what the processes wrote: their JSON summaries and
their merged history.

Every subprocess runs in its own process group and is stopped (SIGTERM, then SIGKILL) when its
block ends, whatever ends it, and gets SIGTERM if the orchestrator itself dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

import loadtests
from loadtests.common.openmodel import OpenModelResult
from saaslab.history import Op, load
from saaslab.services import ServiceError, free_port, port_is_free
from saaslab.settings import Settings

Progress = Callable[[str], None]

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
CLIENT_TIMEOUT_S = 30.0
LOCUST_OVERHEAD_S = 30.0
"""Start-up, provisioning and the shared start margin, on top of the workload and its drain."""


# ---------------------------------------------------------------------------------------------
# Subprocesses


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the orchestrator dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn(cmd: list[str], env: Mapping[str, str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        return subprocess.Popen(cmd, env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited within `timeout_s`."""
    if proc.poll() is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of an exited leader (forked workers)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout_s)


_EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Timeout|Refused)\b[^:]*: ")


def _reason(log_path: Path) -> str:
    """The line of a child's log most likely to say what went wrong: its last error, else its last line."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line) or "/ERROR/" in line:
            return line[:300]
    return lines[-1][:300] if lines else ""


def _root() -> Path:
    return Path(loadtests.__file__).resolve().parent.parent


def _child_env(extra: Mapping[str, str]) -> dict[str, str]:
    # The children get their settings from us alone, not from stray SAASLAB_* in our environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAASLAB_")}
    env.update(extra)
    return env


@dataclass
class Service:
    url: str
    token: str
    proc: subprocess.Popen[bytes] | None = None


def settings_env(settings: Settings) -> dict[str, str]:
    """`settings` as the `SAASLAB_*` environment a child process rebuilds them from."""
    return {f"SAASLAB_{k.upper()}": str(v) for k, v in settings.model_dump().items() if v is not None}


@contextlib.contextmanager
def service(settings: Settings, *, token: str, env: Mapping[str, Any], log_path: Path, host: str | None = None,
            workers: int = 1, describe: str = "", progress: Progress | None = None) -> Iterator[Service]:
    """A ready reference service in lab mode, `env` (setting name -> value) overriding `settings`.

    `host` means use that running service as it is. `describe` names the design in progress lines.
    """
    if host is not None:
        _wait_ready(host.rstrip("/"), None, log_path)
        yield Service(host.rstrip("/"), token)
        return
    port = free_port()
    if not port_is_free(port):
        raise ServiceError(f"port {port} on 127.0.0.1 is busy; stop whatever holds it or retry")
    child = settings_env(settings)
    child.update({f"SAASLAB_{k.upper()}": str(v) for k, v in env.items()})
    child.update({"SAASLAB_ADMIN_TOKEN": token, "SAASLAB_LAB_MODE": "1"})
    cmd = [sys.executable, "-m", "uvicorn", "reference_impl.app:app_from_env", "--factory", "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
    url = f"http://127.0.0.1:{port}"
    if progress:
        progress(f"starting the service ({describe or ', '.join(f'{k}={v}' for k, v in env.items())}) on {url}")
    proc = _spawn(cmd, _child_env(child), log_path, _root())
    try:
        _wait_ready(url, proc, log_path)
        yield Service(url, token, proc)
    finally:
        _stop(proc)


def _wait_ready(url: str, proc: subprocess.Popen[bytes] | None, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = ""
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise ServiceError(f"the service exited with code {proc.returncode} before it was ready "
                                   f"({_reason(log_path) or 'no output'}); see {log_path}")
            try:
                resp = client.get(f"{url}/readyz")
                if resp.status_code == 200:
                    return
                last = f"HTTP {resp.status_code}"
            except httpx.HTTPError as e:
                last = type(e).__name__
            time.sleep(0.2)
    where = f"see {log_path}" if proc is not None else "is it running, with PostgreSQL and Redis reachable?"
    raise ServiceError(f"the service at {url} was not ready within {READY_TIMEOUT_S:.0f}s (last answer: {last}); "
                       f"{where}")


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
        return OpenModelResult.merge(OpenModelResult.from_json(o["summary"]["open_model"]) for o in self.outputs
                                     if o["summary"].get("open_model"))


def _check_locust() -> None:
    if importlib.util.find_spec("locust") is None:
        raise ServiceError("Locust is not installed in this environment; run `make demo` or "
                           "`.venv/bin/pip install -e .`")


def run_locust(url: str, locustfile: str, user_class: str, *, label: str, token: str, env: Mapping[str, str],
               processes: int, budget_s: float, logs: Path, progress: Progress | None = None) -> LocustRun:
    """Run `loadtests/<locustfile>.py`'s `user_class` headless; every process drives once, then quits."""
    _check_locust()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="saaslab-locust-") as raw:
        run_time = round(budget_s + LOCUST_OVERHEAD_S)
        cmd = [sys.executable, "-m", "locust", "-f", str(_root() / "loadtests" / f"{locustfile}.py"), "--headless",
               "--host", url, "-u", str(processes), "-r", str(processes), "--run-time", f"{run_time}s",
               "--stop-timeout", "5", "--only-summary", "--loglevel", "WARNING"]
        if processes > 1:
            cmd += ["--processes", str(processes)]
        cmd.append(user_class)
        child_env = _child_env({**env, "SAASLAB_ADMIN_TOKEN": token, "SAASLAB_LOAD_OUT": raw,
                                "SAASLAB_LOAD_RUN": label})
        log_path = logs / f"{label}.locust.log"
        if progress:
            progress(f"{label}: Locust {user_class} ({processes} process{'es' if processes > 1 else ''})")
        proc = _spawn(cmd, child_env, log_path, _root())
        try:
            proc.wait(timeout=run_time + LOCUST_OVERHEAD_S)
        except subprocess.TimeoutExpired:
            raise ServiceError(f"Locust run {label} did not finish within {run_time + LOCUST_OVERHEAD_S:.0f}s; "
                               f"see {log_path}") from None
        finally:
            _stop(proc)
        outputs = [json.loads(p.read_text()) for p in sorted(Path(raw).glob("*.json"))]
        if proc.returncode not in (0, 1) or len(outputs) != processes:
            raise ServiceError(f"Locust run {label} failed (exit code {proc.returncode}, {len(outputs)} of "
                               f"{processes} process results): {_reason(log_path) or 'no output'}; see {log_path}")
        history = [op for o in outputs for op in load(Path(raw) / o["history"])]
    return LocustRun(label, outputs, history, time.monotonic() - started)




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
