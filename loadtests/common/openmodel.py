"""Open-model load: replay a fixed arrival schedule whatever the server's response times.

Locust's users are a closed model: a user waits for its response before its next request, so a
slow server slows the load down and hides its own slowness (coordinated omission). Here the
schedule is fixed in advance (`scenarios.kernel.workload.arrivals`, the very schedule the
simulation replays) and each request is launched at its intended time in a greenlet of its own, so
a stalled response never delays a later send. Latency is measured from the *intended* send time:
a request launched late, or queued anywhere, counts that delay.

A cap on requests in flight keeps a dead server from exhausting sockets; a request that would
exceed it is not sent and is counted as `dropped` (k6's dropped iterations), never silently
queued. This module needs gevent but not Locust, so it is testable in a plain process.
"""

from __future__ import annotations

import bisect
import gc
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import gevent
import gevent.socket
from gevent.pool import Group

from saaslab import timerfd
from saaslab.results import LatencyHistogram

Outcome = Literal["ok", "error", "timeout"]
"""What became of one request: a 2xx answer, another answer, or no answer (timeout, lost connection)."""

Send = Callable[[str], Outcome]
"""Sends one request for a tenant and says what became of it; blocks its greenlet meanwhile."""

Clock = Callable[[], float]

DEFAULT_MAX_IN_FLIGHT = 2000
"""Far above the backlog the tenancy workloads build (about 1000 at load point 0.7 with 4 slots)."""


def shard(schedule: Sequence[tuple[int, str]], index: int, count: int) -> list[tuple[int, str]]:
    """The part of `schedule` that worker `index` of `count` sends: every count-th arrival.

    Interleaving (rather than cutting the timeline into blocks) gives every worker the same
    mix of tenants and the same rate profile, so the union over all workers is the schedule.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"worker index {index} is not in [0, {count})")
    return list(schedule[index::count])


@dataclass
class TenantCounters:
    """One tenant's side of an open-model run: what was offered and what became of it."""

    offered: int = 0
    sent: int = 0
    dropped: int = 0
    completed: int = 0
    within_slo: int = 0
    errors: int = 0
    timeouts: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    """Latency of completed (2xx) requests from their intended send time, as the simulation counts it."""

    COUNTERS = ("offered", "sent", "dropped", "completed", "within_slo", "errors", "timeouts")

    def to_json(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.COUNTERS}, "latency": self.latency.encode()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TenantCounters:
        return cls(**{k: int(data[k]) for k in cls.COUNTERS}, latency=LatencyHistogram.decode(data["latency"]))

    def add(self, other: TenantCounters) -> None:
        for k in self.COUNTERS:
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.latency.add(other.latency)


@dataclass
class OpenModelResult:
    """What one driver (one worker process) did; `merge` adds up the workers of one run."""

    duration_s: float
    scheduled: int
    sent: int
    dropped: int
    send_window_s: float
    """From the start to the last launch, at least `duration_s`: a generator that falls behind stretches it."""
    tenants: dict[str, TenantCounters]
    send_lag: LatencyHistogram = field(default_factory=LatencyHistogram)
    """How late each launch was against its intended time (the generator's own health)."""

    @property
    def target_rate(self) -> float:
        return self.scheduled / self.duration_s

    @property
    def sent_rate(self) -> float:
        return self.sent / self.send_window_s

    def to_json(self) -> dict[str, Any]:
        return {"duration_s": self.duration_s, "scheduled": self.scheduled, "sent": self.sent,
                "dropped": self.dropped, "send_window_s": self.send_window_s,
                "tenants": {t: c.to_json() for t, c in self.tenants.items()},
                "send_lag": self.send_lag.encode()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OpenModelResult:
        return cls(duration_s=float(data["duration_s"]), scheduled=int(data["scheduled"]), sent=int(data["sent"]),
                   dropped=int(data["dropped"]), send_window_s=float(data["send_window_s"]),
                   tenants={t: TenantCounters.from_json(c) for t, c in data["tenants"].items()},
                   send_lag=LatencyHistogram.decode(data["send_lag"]))

    @classmethod
    def merge(cls, parts: Iterable[OpenModelResult]) -> OpenModelResult:
        parts = list(parts)
        if not parts:
            raise ValueError("no open-model results to merge")
        out = cls(duration_s=parts[0].duration_s, scheduled=0, sent=0, dropped=0,
                  send_window_s=parts[0].duration_s, tenants={})
        for p in parts:
            out.scheduled += p.scheduled
            out.sent += p.sent
            out.dropped += p.dropped
            # Workers send side by side, so the run's window is the longest of theirs.
            out.send_window_s = max(out.send_window_s, p.send_window_s)
            out.send_lag.add(p.send_lag)
            for t, c in p.tenants.items():
                out.tenants.setdefault(t, TenantCounters()).add(c)
        return out


class OpenModelDriver:
    """Launches `schedule` (offsets in µs from the start, tenant) against `send`.

    `run(start)` blocks the calling greenlet until every arrival has been launched and every
    launched request has finished (or `drain_s` passed; stragglers then count as timeouts).
    """

    def __init__(self, schedule: Sequence[tuple[int, str]], send: Send, *, duration_s: float, slo_us: int,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, drain_s: float = 60.0,
                 clock: Clock = time.monotonic, tenants: Iterable[str] = ()) -> None:
        self.schedule = schedule
        self.send = send
        self.duration_s = duration_s
        self.slo_us = slo_us
        self.max_in_flight = max_in_flight
        self.drain_s = drain_s
        self.clock = clock
        self.counters = {t: TenantCounters() for t in tenants}
        self.send_lag = LatencyHistogram()
        self.sent = 0
        self.dropped = 0
        self._group = Group()
        self._start: float | None = None
        self._finished_sending: float | None = None

    def run(self, start: float | None = None) -> OpenModelResult:
        """Send the schedule with offsets counted from clock time `start` (default: now)."""
        origin = self._start = self.clock() if start is None else start
        # gevent's timers sleep in whole milliseconds; on the real monotonic clock a timerfd wakes the
        # hub at the intended instant instead (saaslab.timerfd), so the send lag stays the server's.
        timer = timerfd.open_timer() if self.clock is time.monotonic else None
        # What the process holds already (the locustfile, Locust, earlier runs) is frozen out of the
        # collector's scans: a full collection over it would hold up the sends behind it by milliseconds.
        gc.freeze()
        try:
            for offset_us, tenant in self.schedule:
                intended = origin + offset_us / 1e6
                self._wait_until(intended, timer)
                c = self.counters.setdefault(tenant, TenantCounters())
                c.offered += 1
                if len(self._group) >= self.max_in_flight:
                    c.dropped += 1
                    self.dropped += 1
                    continue
                c.sent += 1
                self.sent += 1
                self._group.spawn(self._one, tenant, intended, c)
        finally:
            gc.unfreeze()
            if timer is not None:
                timer.close()
        self._finished_sending = self.clock()
        if not self._group.join(timeout=self.drain_s):
            self._group.kill(block=True, timeout=5)
        return self.result()

    def _wait_until(self, intended: float, timer: timerfd.TimerFd | None) -> None:
        delay = intended - self.clock()
        if delay <= 0:
            return
        if timer is None:
            gevent.sleep(delay)
            return
        timer.arm_at(intended)
        while not timer.consume():
            gevent.socket.wait_read(timer.fileno())

    def _one(self, tenant: str, intended: float, c: TenantCounters) -> None:
        self.send_lag.record_s(max(0.0, self.clock() - intended))
        outcome: Outcome = "timeout"
        try:
            outcome = self.send(tenant)
        finally:
            # Also on GreenletExit at the drain deadline: an unanswered request is a timeout.
            latency_us = (self.clock() - intended) * 1e6
            if outcome == "ok":
                c.completed += 1
                if latency_us <= self.slo_us:
                    c.within_slo += 1
                c.latency.record_us(latency_us)
            elif outcome == "error":
                c.errors += 1
            else:
                c.timeouts += 1

    def due(self) -> int:
        """How many arrivals of the schedule were due by now (all of them once sending is over): what a run
        stopped early should have sent, to set against `sent` (0 before `run` starts)."""
        if self._start is None:
            return 0
        if self._finished_sending is not None:
            return len(self.schedule)
        now_us = (self.clock() - self._start) * 1e6
        return bisect.bisect_right(self.schedule, now_us, key=lambda arrival: arrival[0])

    def result(self) -> OpenModelResult:
        """The counters so far (a run stopped early reports what it did)."""
        start = self.clock() if self._start is None else self._start
        end = self._finished_sending if self._finished_sending is not None else self.clock()
        window = max(self.duration_s, end - start)
        return OpenModelResult(duration_s=self.duration_s, scheduled=len(self.schedule), sent=self.sent,
                               dropped=self.dropped, send_window_s=window, tenants=self.counters,
                               send_lag=self.send_lag)
