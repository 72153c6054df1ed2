"""The Locust side of every lab scenario: tenants provisioned once, one driver per process, results on disk.

`LabUser` is an abstract `FastHttpUser`. A scenario subclass names its tenants (`tenant_specs`)
and implements `drive`, which runs the whole scenario once per Locust process (an open-model
replay, a probe sequence), recording every operation in `self.history`.

How a run unfolds, with `--processes N` or without:

* `test_start` on the master (or the single local process) creates the tenants through
  `POST /admin/tenants` and sends them to every worker in one custom message, together with a
  common start time and the worker count. Tenants are created once per run, not per process: a
  tenant split into N service tenants would get N bulkheads and N fair shares, which is exactly
  what the noisy-neighbour experiment measures.
* Each process runs `drive` in its first user only; further users Locust hands the same
  process (more `-u` than processes, or a worker that quit early) stop at once under the
  harness, and idle in a plain run.
* When `drive` returns, the process writes `<class>-w<index>.json` (tenants, counters, encoded
  histograms) and its history `<class>-w<index>.history.jsonl` into the run's `out_dir`. Under the
  harness (a `--saaslab-run` file) it then quits, and when the last worker has quit, the master
  ends the run. A plain run goes on until `--run-time` ends or its user stops it: a short scenario
  (a probe) must not end the run of the long one beside it, so its users idle. A run stopped
  early (Ctrl-C, `--run-time`) writes what it has from `test_stop`, and logs how many of the
  requests due by then its open-model driver sent.
* Before any tenant is made, `test_start` checks the service: lab mode on and the admin token
  accepted, or one line saying what to set, and the run exits with status 2.

What the run is (its workload, seed, design, where to write) is a `LoadRun`
(`loadtests/common/runconfig.py`), read from the file Locust's `--saaslab-run PATH` option names
(added to Locust's own parser here), or its defaults without one. A user class reads it as
`self.load_run`; `configure` and `tenants_for` see it before any user starts. Only the master (or the
single process) reads the file: it sends the run itself in the setup message, so a worker on another
host (`--worker --master-host`) runs the master's run without a copy of the file, and writes its
outputs under the run's `out_dir` on its own host.

This module imports Locust, which monkey-patches the process for gevent: import it only from
locustfiles, never from the orchestrator (it uses `provision` and `openmodel`).
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn

import gevent
from gevent.event import Event
from locust import FastHttpUser, constant, events, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment
from locust.exception import StopUser
from locust.rpc import Message
from locust.runners import LocalRunner, MasterRunner, Runner, WorkerRunner

from loadtests.common.openmodel import DEFAULT_MAX_IN_FLIGHT, OpenModelDriver
from loadtests.common.provision import (
    UNLIMITED,
    Admin,
    ProvisioningError,
    Tenant,
    admin_token_from_env,
)
from loadtests.common.runconfig import OPTION, LoadRun
from saaslab.history import History
from scenarios.kernel.workload import TenantSpec

SETUP_MESSAGE = "saaslab_setup"
START_MARGIN_S = 2.0
"""Workers start their schedules this long after provisioning, so they all share one time origin."""
SETUP_TIMEOUT_S = 60.0
CLIENT_TIMEOUT_S = 30.0
"""A request unanswered this long is recorded as `info` (unknown outcome) and counted as a timeout."""

log = logging.getLogger("saaslab.lab")
# httpx logs every admin call at INFO: noise among Locust's own lines, and the lab's faults are re-armed twice a second.
logging.getLogger("httpx").setLevel(logging.WARNING)


@dataclass
class ProcessRun:
    """What one process knows about the run of one user class."""

    tenants: dict[str, Tenant] = field(default_factory=dict)
    workers: int = 1
    start_at: float | None = None
    """Common start time (epoch seconds) sent by the master; None means start when ready."""
    ready: Event = field(default_factory=Event)
    claimed: bool = False
    written: bool = False
    user: LabUser | None = None


_runs: dict[str, ProcessRun] = {}


def _run_of(cls: type[LabUser]) -> ProcessRun:
    return _runs.setdefault(cls.__name__, ProcessRun())


_configs: dict[str, LoadRun] = {}


def run_config(environment: Environment) -> LoadRun:
    """The run `--saaslab-run` names (read once per process), or the defaults."""
    path = getattr(environment.parsed_options, "saaslab_run", "") or ""  # `--saaslab-run`, as argparse names it
    if path not in _configs:
        _configs[path] = LoadRun.read(path or None)
    return _configs[path]


@events.init_command_line_parser.add_listener
def _add_options(parser: LocustArgumentParser) -> None:
    parser.add_argument(OPTION, type=str, default="", metavar="PATH",
                        help="saaslab: a run configuration (JSON of loadtests/common/runconfig.py's LoadRun), as "
                             "`saaslab load` writes it; it sets the workload, seed and output folder, and lets a "
                             "finished scenario end the run. Without it, the locustfile's defaults, and the run "
                             "lasts until --run-time or you stop it. `--list` names the user classes; each one's "
                             "purpose is logged at start.")


def harness_run(environment: Environment) -> bool:
    """Whether a run file drives this run (`saaslab load`), which lets a finished scenario end the run."""
    return bool(getattr(environment.parsed_options, "saaslab_run", ""))


def worker_index(runner: Runner | None) -> int:
    """0 for a local run; the master-assigned index of a worker process."""
    return max(0, int(getattr(runner, "worker_index", 0) or 0))


class LabUser(FastHttpUser):
    """Base of the lab's Locust users: provisioned tenants, one `drive` per process, a history.

    A subclass's docstring is what Locust's web UI shows for it: say what the user does.
    """

    abstract = True
    wait_time = constant(0)
    network_timeout = CLIENT_TIMEOUT_S
    connection_timeout = CLIENT_TIMEOUT_S
    # One user drives all of a process's requests, so its connection pool must cover them all.
    concurrency = DEFAULT_MAX_IN_FLIGHT

    tenant_specs: ClassVar[Sequence[TenantSpec]] = ()
    tenant_limits: ClassVar[Mapping[str, Any] | None] = UNLIMITED
    """The rate policy (`limits` of POST /admin/tenants) every tenant of the class gets."""
    history: History

    @classmethod
    def configure(cls, run: LoadRun) -> None:
        """Set what the class needs before its first user is made (Locust builds a user's HTTP client
        from class attributes such as `network_timeout`); in every process, at Locust's `init`."""

    @classmethod
    def tenants_for(cls, run: LoadRun) -> Sequence[TenantSpec]:
        """The tenants a run of the class needs (provisioned once per run, on the master)."""
        return cls.tenant_specs

    def drive(self) -> None:
        """Run the scenario once; subclasses implement it."""
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """The scenario's counters so far, written to this process's JSON file."""
        return {}

    # -- plumbing --------------------------------------------------------------------------------
    @property
    def load_run(self) -> LoadRun:
        """The run's configuration (`User.run` is Locust's own)."""
        return run_config(self.environment)

    @property
    def lab(self) -> ProcessRun:
        return _run_of(type(self))

    @property
    def tenants(self) -> dict[str, Tenant]:
        return self.lab.tenants

    def headers(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tenants[tenant].api_key}"}

    def admin_client(self) -> Admin:
        """A client of the service's admin API (a context manager)."""
        return Admin(self.environment.host or "", admin_token_from_env())

    def try_admin(self, work: Callable[[Admin], object]) -> bool:
        """Run `work` on an admin client; False when the service refused or was unreachable, for work the caller
        repeats (a fault re-armed every round: the worker that took it may be the one restarting)."""
        try:
            with self.admin_client() as admin:
                work(admin)
            return True
        except ProvisioningError:
            return False

    def start_monotonic(self) -> float:
        """The shared start time on this process's monotonic clock (now, if none was set)."""
        if self.lab.start_at is None:
            return time.monotonic()
        return time.monotonic() + (self.lab.start_at - time.time())

    def _file_stem(self) -> str:
        return f"{type(self).__name__}-w{worker_index(self.environment.runner)}"

    @task
    def drive_once(self) -> None:
        run = self.lab
        if run.claimed:
            self._rest()
        run.claimed = True
        run.user = self
        if not run.ready.wait(SETUP_TIMEOUT_S):
            log.error("no tenants from the master within %.0fs; stopping", SETUP_TIMEOUT_S)
            self._quit(exit_code=2)
            raise StopUser()
        stem = self._file_stem()
        path = self.load_run.out_dir / f"{stem}.history.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self.history = History(path=path, process=f"{self.load_run.label}:{stem}")
        gc.collect()  # now, rather than in the middle of the schedule (`OpenModelDriver.run` freezes the rest)
        try:
            self.drive()
        except gevent.GreenletExit:
            write_outputs(self)
            raise
        except Exception:
            log.exception("%s failed", type(self).__name__)
            write_outputs(self)
            self._quit(exit_code=2)
            raise StopUser() from None
        write_outputs(self)
        if harness_run(self.environment):
            self._quit()
            raise StopUser()
        log.info("%s finished its scenario; the run goes on until it is stopped", type(self).__name__)
        self._rest()

    def _rest(self) -> NoReturn:
        """A user with nothing (more) to drive: under the harness it stops; in a plain run it idles until the run
        stops, so the web UI keeps counting it and a finished probe never looks like a stopped run."""
        if harness_run(self.environment):
            raise StopUser()
        while True:
            gevent.sleep(3600)

    def _quit(self, exit_code: int | None = None) -> None:
        """End the run: quit (headless, or a worker), or just stop so the web UI stays up."""
        if exit_code is not None:
            self.environment.process_exit_code = exit_code
        runner = self.environment.runner
        options = self.environment.parsed_options
        keep_ui = isinstance(runner, LocalRunner) and options is not None and not options.headless
        # From another greenlet: stopping stops every user, this one included.
        gevent.spawn(runner.stop if keep_ui else runner.quit)


def write_outputs(user: LabUser) -> None:
    """Write this process's JSON summary once (the history file streams as it goes)."""
    run = user.lab
    if run.written:
        return
    run.written = True
    stem = user._file_stem()
    # The harness reads the tenants' keys back (the ledger, the state checks); a plain run has no use for them
    # on disk, where they would outlive the run.
    keep_keys = harness_run(user.environment)
    data = {
        "user_class": type(user).__name__,
        "run": user.load_run.label,
        "worker_index": worker_index(user.environment.runner),
        "workers": run.workers,
        "tenants": {n: t._asdict() if keep_keys else {"tenant_id": t.tenant_id} for n, t in run.tenants.items()},
        "history": f"{stem}.history.jsonl",
        "summary": user.summary(),
    }
    driver = getattr(user, "driver", None)
    if isinstance(driver, OpenModelDriver):
        due, sent = driver.due(), driver.sent
        data["progress"] = {"due": due, "sent": sent, "scheduled": len(driver.schedule)}
        log.info("%s sent %d of the %d requests due (%.1f%%; %d scheduled in all)", type(user).__name__, sent, due,
                 100.0 * sent / due if due else 100.0, len(driver.schedule))
    if hasattr(user, "history"):
        user.history.close()
    path = user.load_run.out_dir / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def purpose(cls: type) -> str:
    """The first paragraph of a user class's docstring, on one line."""
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(doc.split()) or "(no description)"


def _lab_classes(environment: Environment) -> list[type[LabUser]]:
    return [c for c in environment.user_classes if issubclass(c, LabUser)]


@events.init.add_listener
def _on_init(environment: Environment, runner: Runner | None = None, **_kw: Any) -> None:
    for cls in _lab_classes(environment):
        cls.configure(run_config(environment))
        if not isinstance(runner, WorkerRunner):
            log.info("%s: %s", cls.__name__, purpose(cls))
    if runner is not None and not isinstance(runner, MasterRunner):
        runner.register_message(SETUP_MESSAGE, _on_setup)


def _on_setup(environment: Environment, msg: Message, **_kw: Any) -> None:
    # The master's run, under the path Locust's spawn message will set as this worker's `--saaslab-run`: the
    # file need not exist here (a worker on another host), and the classes are configured for it before
    # Locust makes their users, which the spawn message that follows this one asks for.
    config = LoadRun.model_validate(msg.data["run"])
    _configs[msg.data["path"]] = config
    for cls in _lab_classes(environment):
        cls.configure(config)
    for name, setup in msg.data["classes"].items():
        run = _runs.setdefault(name, ProcessRun())
        run.tenants = {n: Tenant(*t) for n, t in setup["tenants"].items()}
        run.workers = int(setup["workers"])
        run.start_at = setup["start_at"]
        run.claimed = run.written = False
        run.ready.set()


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kw: Any) -> None:
    """On the master (or the only process): create the tenants once and hand them to every process."""
    runner = environment.runner
    if runner is None or isinstance(runner, WorkerRunner):
        return
    distributed = isinstance(runner, MasterRunner)
    try:
        token = admin_token_from_env()
        setup: dict[str, Any] = {}
        with Admin(environment.host or "", token) as admin:
            admin.check_lab()
            for cls in _lab_classes(environment):
                tenants = admin.create_tenants(cls.tenants_for(run_config(environment)), limits=cls.tenant_limits)
                setup[cls.__name__] = {
                    "tenants": {n: list(t) for n, t in tenants.items()},
                    "workers": runner.worker_count if distributed else 1,
                    "start_at": time.time() + START_MARGIN_S if distributed else None,
                }
    except (ProvisioningError, OSError) as e:
        log.error("cannot start: %s", e)
        environment.process_exit_code = 2
        gevent.spawn(runner.quit)
        return
    runner.send_message(SETUP_MESSAGE, {"path": getattr(environment.parsed_options, "saaslab_run", "") or "",
                                        "run": run_config(environment).model_dump(mode="json"),
                                        "classes": setup})


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_kw: Any) -> None:
    """A run stopped before `drive` finished still leaves its counters and history behind."""
    for run in _runs.values():
        if run.user is not None and not run.written:
            write_outputs(run.user)
