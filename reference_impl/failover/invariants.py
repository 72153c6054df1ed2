"""The failover checker, Jepsen's way: every write has a unique id and every acknowledgement is in the
history; after recovery the survivors are read back from the surviving primary, and every write is
sorted into kept or lost.

History (saaslab/history.py): `f == "write"`, the invoke's value carries `id`; an `ok` completion
carries `server`, the server that accepted it (its `cluster_name`, or the Redis master's address).
`fail` means the write certainly did not happen, `info` that its outcome is unknown (a timeout, a
dropped connection). `f == "read"` is the read-your-writes probe: the invoke carries `id` (a write
the same client saw acknowledged), the `ok` completion `found` (bool).

* `count` (`JepsenCount`): total writes attempted, acknowledged, survivors (attempted ids present),
  lost (acknowledged and absent), unacknowledged but present (`fail` or `info` or never completed,
  and present; Jepsen's PostgreSQL run had 2 of them), failed but present (a `fail` that happened: a
  client bug, not the database's).
* `no_lost_writes`: no acknowledged write is absent.
* `no_split_brain`: no write was acknowledged by two primaries in overlapping periods. Each server's
  period runs from its first to its last acknowledgement. When the old primary's period overlaps the
  new one's, the split-brain writes are the old primary's writes *invoked* after the new primary's
  first acknowledgement (so certainly accepted while both led), and the new primary's writes
  acknowledged before the last of those.
* `no_stale_reads`: a probe never misses a write its client saw acknowledged before asking.
* `unavailability`: from the moment a client first saw a write fail after the fault to the first
  acknowledgement of a write sent after that moment; also the longest gap between acknowledgements
  after the fault (with a partition, the minority side's acknowledgements count too).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from saaslab.history import CheckResult, Op, pairs

MAX_EXAMPLES = 5


@dataclass(frozen=True, slots=True)
class Write:
    id: str
    invoke_us: int
    outcome: str
    """`ok`, `fail`, `info`, or `pending` (the history ended first)."""
    complete_us: int | None = None
    server: str | None = None


@dataclass(frozen=True, slots=True)
class JepsenCount:
    total: int
    acknowledged: int
    survivors: int
    lost: int
    unacknowledged_present: int
    failed_present: int
    lost_ids: tuple[str, ...] = ()

    @property
    def lost_fraction(self) -> float:
        return self.lost / self.acknowledged if self.acknowledged else 0.0

    def line(self) -> str:
        """Jepsen's format: '2000 total, 1998 acknowledged, 872 survivors, 1126 lost (56%), ...'."""
        return (f"{self.total} total, {self.acknowledged} acknowledged, {self.survivors} survivors, "
                f"{self.lost} lost ({self.lost_fraction:.0%}), {self.unacknowledged_present} unacknowledged but present")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lost_ids": list(self.lost_ids[:MAX_EXAMPLES])}


@dataclass(frozen=True, slots=True)
class Unavailability:
    window_us: int | None
    """First failed write after the fault to the first acknowledgement after it; 0 when no write failed,
    None when nothing was acknowledged after the failure."""
    longest_gap_us: int
    """The longest stretch without an acknowledgement, from the fault to the last acknowledgement."""
    first_failure_us: int | None = None
    recovered_us: int | None = None


@dataclass
class Verdict:
    count: JepsenCount
    unavailability: Unavailability
    checks: list[CheckResult] = field(default_factory=list)
    split_brain: int = 0

    @property
    def valid(self) -> bool:
        return all(c.valid for c in self.checks)

    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.valid]


def writes(ops: Iterable[Op]) -> list[Write]:
    out = []
    for inv, done in pairs(ops):
        if inv.f != "write":
            continue
        if done is None:
            out.append(Write(str(inv.value["id"]), inv.time_us, "pending"))
        else:
            out.append(Write(str(inv.value["id"]), inv.time_us, done.type, done.time_us,
                             done.value.get("server") if done.type == "ok" else None))
    return sorted(out, key=lambda w: w.invoke_us)


def count(ws: list[Write], survivors: Iterable[str]) -> JepsenCount:
    present = set(survivors)
    acked = [w for w in ws if w.outcome == "ok"]
    lost = tuple(w.id for w in acked if w.id not in present)
    attempted_present = {w.id for w in ws} & present
    unacked = [w for w in ws if w.outcome != "ok" and w.id in present]
    return JepsenCount(total=len(ws), acknowledged=len(acked), survivors=len(attempted_present), lost=len(lost),
                       unacknowledged_present=len(unacked),
                       failed_present=sum(w.outcome == "fail" for w in unacked), lost_ids=lost)


def split_brain_writes(ws: list[Write]) -> list[Write]:
    """The writes acknowledged by two primaries in overlapping periods (see the module docstring)."""
    by_server: dict[str, list[Write]] = {}
    for w in ws:
        if w.outcome == "ok" and w.server is not None:
            by_server.setdefault(w.server, []).append(w)
    first_ack = {s: min(w.complete_us or 0 for w in g) for s, g in by_server.items()}
    found: dict[str, Write] = {}
    for old, old_writes in by_server.items():
        for new, new_writes in by_server.items():
            if new == old or first_ack[new] <= first_ack[old]:
                continue
            late = [w for w in old_writes if w.invoke_us > first_ack[new]]
            if not late:
                continue
            last_late = max(w.complete_us or 0 for w in late)
            for w in (*late, *(w for w in new_writes if (w.complete_us or 0) <= last_late)):
                found[w.id] = w
    return sorted(found.values(), key=lambda w: w.invoke_us)


def stale_reads(ops: Iterable[Op]) -> tuple[int, list[dict[str, Any]]]:
    """(probes checked, misses): reads that missed a write acknowledged before the read was invoked."""
    acked_at: dict[str, int] = {}
    reads: list[tuple[Op, Op]] = []
    for inv, done in pairs(ops):
        if done is None or done.type != "ok":
            continue
        if inv.f == "write":
            acked_at[str(inv.value["id"])] = done.time_us
        elif inv.f == "read":
            reads.append((inv, done))
    misses = [{"id": str(inv.value["id"]), "read_at_us": inv.time_us, "server": done.value.get("server")}
              for inv, done in reads
              if not done.value.get("found") and acked_at.get(str(inv.value["id"]), inv.time_us + 1) < inv.time_us]
    return len(reads), misses


def unavailability(ws: list[Write], fault_us: int) -> Unavailability:
    failures = [w for w in ws if w.outcome in ("fail", "info", "pending") and (w.complete_us or w.invoke_us) >= fault_us]
    acks = sorted(w.complete_us for w in ws if w.outcome == "ok" and w.complete_us is not None)
    after = [t for t in acks if t >= fault_us]
    gaps = [b - a for a, b in zip([fault_us, *after], after, strict=False)]
    longest = max(gaps, default=0)
    if not failures:
        return Unavailability(0, longest)
    first = min(w.complete_us or w.invoke_us for w in failures)
    recovered = min((w.complete_us for w in ws if w.outcome == "ok" and w.invoke_us >= first
                     and w.complete_us is not None), default=None)
    return Unavailability(None if recovered is None else recovered - first, longest, first, recovered)


def check(ops: list[Op], survivors: Iterable[str], *, fault_us: int) -> Verdict:
    """Every check over one drill: its history, the ids read back after recovery, when the fault struck."""
    ws = writes(ops)
    tally = count(ws, survivors)
    brain = split_brain_writes(ws)
    probes, misses = stale_reads(ops)
    window = unavailability(ws, fault_us)
    checks = [
        CheckResult("no_lost_writes", tally.lost == 0, tally.acknowledged, tally.lost,
                    [{"id": i} for i in tally.lost_ids[:MAX_EXAMPLES]], tally.line()),
        CheckResult("no_split_brain", not brain, tally.acknowledged, len(brain),
                    [{"id": w.id, "server": w.server, "invoke_us": w.invoke_us} for w in brain[:MAX_EXAMPLES]],
                    f"{len(brain)} writes acknowledged while two primaries accepted writes"),
        CheckResult("no_stale_reads", not misses, probes, len(misses), misses[:MAX_EXAMPLES],
                    f"{len(misses)} of {probes} read-your-writes probes missed an acknowledged write"),
        CheckResult("failed_writes_absent", tally.failed_present == 0, tally.total - tally.acknowledged,
                    tally.failed_present, [], "a write the client saw fail (not time out) must not be present"),
    ]
    return Verdict(tally, window, checks, len(brain))


def rows(verdict: Verdict) -> Mapping[str, tuple[float, str]]:
    """The verdict as result metrics (name -> (value, unit)), for saaslab.results rows."""
    c, u = verdict.count, verdict.unavailability
    out: dict[str, tuple[float, str]] = {
        "writes_total": (c.total, "count"), "writes_acknowledged": (c.acknowledged, "count"),
        "writes_survivors": (c.survivors, "count"), "writes_lost": (c.lost, "count"),
        "writes_unacknowledged_present": (c.unacknowledged_present, "count"),
        "lost_fraction": (c.lost_fraction, "ratio"), "split_brain_writes": (verdict.split_brain, "count"),
        "longest_ack_gap": (u.longest_gap_us / 1_000_000, "s"),
    }
    stale = next(ch for ch in verdict.checks if ch.name == "no_stale_reads")
    out["stale_reads"] = (stale.violations, "count")
    if u.window_us is not None:
        out["unavailability"] = (u.window_us / 1_000_000, "s")
    return out
