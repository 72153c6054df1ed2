"""The one way the lab starts the reference service: `uvicorn reference_impl.app:app_from_env` in a subprocess.

`saaslab serve`, the live harness (`saaslab/live/harness.py`) and the benchmarks (`bench/`) all start
the service here, so a service is configured the same way whoever starts it: its `Settings` become
the `SAASLAB_*` environment its workers rebuild them from (`settings_env`), and nothing else of the
caller's environment named `SAASLAB_*` leaks in.

* `launched(settings, ...)` is a context manager: a ready service (`/readyz` answered 200) for the
  block, stopped when it ends, whatever ends it.
* `start_service(...)` / `Service.stop()` are the same in two calls, for a caller that keeps several
  services side by side (the benchmarks).
* `serve(settings, ...)` runs one in the foreground until Ctrl-C or SIGTERM (`saaslab serve`).

Every subprocess here runs in its own process group, is stopped with SIGTERM and then SIGKILL, and
gets SIGTERM if its parent dies, even by SIGKILL (`spawn`), so a killed orchestrator leaves no
service behind. `cpus` pins a service's processes (its workers inherit the affinity) to some cores.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from saaslab.services import ServiceError, free_port, port_is_free
from saaslab.settings import Settings

APP = "reference_impl.app:app_from_env"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
ROOT = Path(__file__).resolve().parent.parent
"""The checkout: services and Locust run from here, so `reference_impl` and `loadtests` import."""


# ---------------------------------------------------------------------------------------------
# Subprocesses (the service here, Locust in the harness)


def _child_setup(cpus: Collection[int] | None, niceness: int | None) -> Callable[[], None]:
    def setup() -> None:
        # PR_SET_PDEATHSIG: SIGTERM when the parent dies, however it dies (Linux; elsewhere nothing).
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
        if cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(cpus))
        if niceness is not None:
            # Raising a priority needs CAP_SYS_NICE: without it the child runs at the default one. With
            # autogroup scheduling (Linux, per session) a process's nice value only weighs within its
            # session, and a spawned child leads a session of its own, so the session's value is set too.
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, niceness)
            with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as autogroup:
                autogroup.write(str(niceness))

    return setup


def spawn(cmd: list[str], env: Mapping[str, str], log_path: Path | None, *,
          cpus: Collection[int] | None = None, niceness: int | None = None) -> subprocess.Popen[bytes]:
    """Start `cmd` from the checkout in a process group of its own, its output to `log_path` (None: ours)."""
    if log_path is None:
        return subprocess.Popen(cmd, env=dict(env), cwd=ROOT, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_child_setup(cpus, niceness))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        return subprocess.Popen(cmd, env=dict(env), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_child_setup(cpus, niceness))


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited within `timeout_s`."""
    if proc.poll() is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of an exited leader (forked workers)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout_s)


_EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Timeout|Refused)\b[^:]*: ")


def log_reason(log_path: Path | None) -> str:
    """The line of a child's log most likely to say what went wrong: its last error, else its last line."""
    if log_path is None:
        return ""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line) or "/ERROR/" in line:
            return line[:300]
    return lines[-1][:300] if lines else ""


def log_tail(log_path: Path | None, chars: int = 5000) -> str:
    """The last `chars` characters of a child's log; "" without one."""
    if log_path is None:
        return ""
    try:
        return log_path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """Our environment without any `SAASLAB_*` (a child gets its settings from its caller alone), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAASLAB_")}
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------
# The service


def settings_env(settings: Settings) -> dict[str, str]:
    """`settings` as the `SAASLAB_*` environment a service worker rebuilds them from."""
    return {f"SAASLAB_{k.upper()}": str(v) for k, v in settings.model_dump().items() if v is not None}


def service_command(*, host: str, port: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", APP, "--factory", "--host", host, "--port", str(port),
            "--workers", str(workers), "--log-level", "warning", "--no-access-log"]


@dataclass
class Service:
    """A service this process started (`proc`), or one running elsewhere that it only uses (`proc` None)."""

    url: str
    token: str
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        """The uvicorn process (with several workers, their supervisor)."""
        if self.proc is None:
            raise ServiceError(f"the service at {self.url} was not started here")
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def wait(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """Its exit code once it exits on its own (a crash, a kill), waiting at most `timeout_s`."""
        if self.proc is None:
            raise ServiceError(f"the service at {self.url} was not started here")
        return self.proc.wait(timeout=timeout_s)

    def log_tail(self, chars: int = 5000) -> str:
        """The end of what it has logged so far (its tracebacks, for a failing caller to show)."""
        return log_tail(self.log_path, chars)


def start_service(settings: Settings, *, token: str | None = None, workers: int = 1, host: str = "127.0.0.1",
                  port: int | None = None, log_path: Path | None = None, cpus: Collection[int] | None = None,
                  describe: str = "", progress: Callable[[str], None] | None = None) -> Service:
    """Start the service with `settings` (the admin token `token`, else the settings') and wait until it is ready.

    `port` None picks a free one; `log_path` None leaves its output on ours; `cpus` pins it to those cores.
    """
    token = token or settings.admin_token
    if not token:
        raise ServiceError("the service needs an admin token: set SAASLAB_ADMIN_TOKEN")
    port = port or free_port()
    if not port_is_free(port, host):
        raise ServiceError(f"port {port} on {host} is busy; stop whatever holds it or pick another")
    url = f"http://{host}:{port}"
    if progress:
        progress(f"starting the service ({describe or f'{workers} worker(s)'}) on {url}")
    env = child_env(settings_env(settings.model_copy(update={"admin_token": token})))
    proc = spawn(service_command(host=host, port=port, workers=workers), env, log_path, cpus=cpus)
    svc = Service(url, token, proc, log_path)
    try:
        wait_ready(url, proc, log_path)
    except BaseException:
        svc.stop()
        raise
    return svc


@contextlib.contextmanager
def launched(settings: Settings, *, token: str | None = None, workers: int = 1, log_path: Path | None = None,
             host: str | None = None, cpus: Collection[int] | None = None, describe: str = "",
             progress: Callable[[str], None] | None = None) -> Iterator[Service]:
    """A ready service for the block (`start_service`), stopped when it ends; with `host` (a URL), that
    running service as it is, once it answers `/readyz`."""
    if host is not None:
        url = host.rstrip("/")
        wait_ready(url, None, None)
        yield Service(url, token or settings.admin_token or "")
        return
    svc = start_service(settings, token=token, workers=workers, log_path=log_path, cpus=cpus, describe=describe,
                        progress=progress)
    try:
        yield svc
    finally:
        svc.stop()


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, log_path: Path | None,
               timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until `url/readyz` answers 200; fails early when `proc` exits, and after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last = ""
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                where = f"see {log_path}" if log_path else "its output is above"
                raise ServiceError(f"the service exited with code {proc.returncode} before it was ready "
                                   f"({log_reason(log_path) or 'no output'}); {where}")
            try:
                resp = client.get(f"{url}/readyz")
                if resp.status_code == 200:
                    return
                last = f"HTTP {resp.status_code}"
            except httpx.HTTPError as e:
                last = type(e).__name__
            time.sleep(0.2)
    if proc is None:
        where = "is it running, with PostgreSQL and Redis reachable?"
    else:
        where = f"see {log_path}" if log_path else "its output is above"
    raise ServiceError(f"the service at {url} was not ready within {timeout_s:.0f}s (last answer: {last}); {where}")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops `serve` the way Ctrl-C does


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          ready: Callable[[str], None] | None = None) -> int:
    """Run the service in the foreground until it exits, Ctrl-C or SIGTERM (`saaslab serve`); returns its exit code.

    `settings` must name PostgreSQL, Redis and the admin token; `ready(url)` is called once `/readyz` answers.
    """
    svc = start_service(settings, workers=workers, host=host, port=port)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if ready:
            ready(svc.url)
        assert svc.proc is not None
        return svc.proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        svc.stop()
        signal.signal(signal.SIGTERM, previous)
