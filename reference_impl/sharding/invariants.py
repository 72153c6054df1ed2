"""The sharding checker: pure checks over a write/read/move history and the final state of every shard.

The same checks run on a simulated world, on a live run and in pytest. Every check returns a
`saaslab.history.CheckResult`.

History (`Op.f`):
* `write`: the invoke's value carries `tenant` and `key`, a token unique to the write that the client
  put in the row (the project's name), so a row is recognised whatever id the shard gave it; the `ok`
  completion may add `id`, `shard`, `epoch`. A write that ended in `info` (answer lost) is unknown: it
  may be present, at most once.
* `read`: `tenant` and `key` (a write's token); the `ok` completion carries `found` and may carry `shard`
  and `epoch` (the placement that answered).
* `move` (also `isolate`, `rebalance`): `tenant`, `source`, `target`; the `ok` completion may carry
  `source_rows` (the tenant's rows on the source once it was fenced and caught up) and `target_rows`
  (on the target at the flip).

State (`ShardWorld`): `shards`: shard -> tenant -> the keys of its rows there (a key twice if the row is
there twice); `directory`: tenant -> shard; `initial`: tenant -> rows that existed before the history
(their keys are not in the history; they are counted, not named).

Checks:
* `acknowledged_writes_once`: every acknowledged write is present exactly once, on its tenant's
  owning shard; an unknown one at most once, and only there.
* `single_owner`: no tenant has rows on two shards once moves settle, and no read saw an older
  placement (epoch) after a read completed on a newer one.
* `read_your_writes`: a read invoked after a write of the same key was acknowledged finds it, across moves.
* `directory_agrees`: every shard holding a tenant's rows is the shard the directory names.
* `rows_conserved`: per tenant, final rows - initial rows lies between the acknowledged writes and the
  acknowledged plus unknown ones; per move, the rows the target got equal the rows the source had.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saaslab.history import CheckResult, Op, load, pairs

MAX_EXAMPLES = 5
MOVE_OPS = ("move", "isolate", "rebalance")


@dataclass
class ShardWorld:
    shards: Mapping[str, Mapping[str, list[str]]]
    directory: Mapping[str, str]
    initial: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardWorld:
        """From JSON: shard and tenant names become strings (shards are numbers in the service)."""
        return cls({str(s): {str(t): list(keys) for t, keys in tenants.items()} for s, tenants in d["shards"].items()},
                   {str(t): str(s) for t, s in d["directory"].items()},
                   {str(t): int(n) for t, n in d.get("initial", {}).items()})

    def to_dict(self) -> dict[str, Any]:
        return {"shards": self.shards, "directory": self.directory, "initial": self.initial}

    def where(self) -> dict[str, Counter[str]]:
        """key -> shard -> how many rows carry that key there."""
        out: dict[str, Counter[str]] = defaultdict(Counter)
        for shard, tenants in self.shards.items():
            for keys in tenants.values():
                for key in keys:
                    out[key][shard] += 1
        return out


@dataclass(frozen=True, slots=True)
class _Call:
    f: str
    type: str  # ok | fail | info | pending
    value: dict[str, Any]
    start_us: int
    end_us: int | None


def _calls(history: Iterable[Op]) -> list[_Call]:
    out = []
    for inv, done in pairs(history):
        out.append(_Call(inv.f, done.type if done else "pending", {**inv.value, **(done.value if done else {})},
                         inv.time_us, done.time_us if done else None))
    return sorted(out, key=lambda c: c.start_us)


def _result(name: str, checked: int, bad: list[dict[str, Any]], detail: str = "") -> CheckResult:
    return CheckResult(name, not bad, checked, len(bad), bad[:MAX_EXAMPLES], detail)


def acknowledged_writes_once(calls: list[_Call], world: ShardWorld) -> CheckResult:
    where = world.where()
    bad: list[dict[str, Any]] = []
    checked = 0
    for c in calls:
        if c.f != "write" or c.type not in ("ok", "info", "pending"):
            continue
        checked += 1
        key, tenant = c.value["key"], str(c.value["tenant"])
        owner = world.directory.get(tenant)
        found = where.get(key, Counter())
        total = sum(found.values())
        if c.type == "ok" and total == 0:
            bad.append({"key": key, "tenant": tenant, "problem": "lost", "owner": owner})
        elif total > 1:
            bad.append({"key": key, "tenant": tenant, "problem": "duplicated", "found": dict(found)})
        elif total == 1 and owner not in found:
            bad.append({"key": key, "tenant": tenant, "problem": "not on the owning shard", "owner": owner,
                        "found": dict(found)})
    lost = sum(b["problem"] == "lost" for b in bad)
    return _result("acknowledged_writes_once", checked, bad, f"{lost} acknowledged writes lost" if lost else "")


def single_owner(calls: list[_Call], world: ShardWorld) -> CheckResult:
    bad: list[dict[str, Any]] = []
    holders: dict[str, list[str]] = defaultdict(list)
    for shard, tenants in world.shards.items():
        for tenant, keys in tenants.items():
            if keys:
                holders[tenant].append(shard)
    for tenant, shards in holders.items():
        if len(shards) > 1:
            bad.append({"tenant": tenant, "problem": "rows on several shards", "shards": sorted(shards)})
    # No read goes back in placement: once a read with epoch e completed, no later-invoked read answers from < e.
    newest: dict[str, tuple[int, int]] = {}  # tenant -> (end_us, epoch) of the newest completed read seen
    reads = [c for c in calls if c.f == "read" and c.type == "ok" and c.value.get("epoch") is not None]
    done_reads = sorted(reads, key=lambda c: c.end_us or 0)
    i = 0
    for c in reads:  # in invoke order
        while i < len(done_reads) and (done_reads[i].end_us or 0) < c.start_us:
            d = done_reads[i]
            t = str(d.value["tenant"])
            if t not in newest or int(d.value["epoch"]) > newest[t][1]:
                newest[t] = (d.end_us or 0, int(d.value["epoch"]))
            i += 1
        t = str(c.value["tenant"])
        if t in newest and int(c.value["epoch"]) < newest[t][1]:
            bad.append({"tenant": t, "problem": "read from an older placement", "epoch": c.value["epoch"],
                        "after_epoch": newest[t][1], "shard": c.value.get("shard")})
    return _result("single_owner", len(holders) + len(reads), bad)


def read_your_writes(calls: list[_Call], world: ShardWorld) -> CheckResult:
    acked: dict[str, int] = {}
    for c in calls:
        if c.f == "write" and c.type == "ok" and c.end_us is not None:
            acked[c.value["key"]] = c.end_us
    bad: list[dict[str, Any]] = []
    checked = 0
    for c in calls:
        if c.f != "read" or c.type != "ok":
            continue
        written = acked.get(c.value["key"])
        if written is None or written > c.start_us:
            continue
        checked += 1
        if not c.value.get("found"):
            bad.append({"key": c.value["key"], "tenant": c.value["tenant"], "shard": c.value.get("shard"),
                        "epoch": c.value.get("epoch"), "read_at_us": c.start_us, "written_at_us": written})
    return _result("read_your_writes", checked, bad)


def directory_agrees(calls: list[_Call], world: ShardWorld) -> CheckResult:
    bad: list[dict[str, Any]] = []
    checked = 0
    for shard, tenants in world.shards.items():
        for tenant, keys in tenants.items():
            if not keys:
                continue
            checked += 1
            owner = world.directory.get(tenant)
            if owner != shard:
                bad.append({"tenant": tenant, "shard": shard, "rows": len(keys), "directory": owner})
    return _result("directory_agrees", checked, bad)


def rows_conserved(calls: list[_Call], world: ShardWorld) -> CheckResult:
    acked: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    for c in calls:
        if c.f == "write":
            if c.type == "ok":
                acked[str(c.value["tenant"])] += 1
            elif c.type in ("info", "pending"):
                unknown[str(c.value["tenant"])] += 1
    final: Counter[str] = Counter()
    for tenants in world.shards.values():
        for tenant, keys in tenants.items():
            final[tenant] += len(keys)
    bad: list[dict[str, Any]] = []
    tenants = set(acked) | set(unknown) | set(final) | set(world.initial)
    for t in sorted(tenants):
        grew = final[t] - world.initial.get(t, 0)
        if not acked[t] <= grew <= acked[t] + unknown[t]:
            bad.append({"tenant": t, "rows_added": grew, "acknowledged": acked[t], "unknown": unknown[t]})
    moves = [c for c in calls if c.f in MOVE_OPS and c.type == "ok" and "source_rows" in c.value]
    for c in moves:
        if c.value.get("target_rows") != c.value["source_rows"]:
            bad.append({"tenant": c.value["tenant"], "problem": "move changed the row count",
                        "source_rows": c.value["source_rows"], "target_rows": c.value.get("target_rows")})
    return _result("rows_conserved", len(tenants) + len(moves), bad)


CHECKS = (acknowledged_writes_once, single_owner, read_your_writes, directory_agrees, rows_conserved)


def check(history: Iterable[Op], world: ShardWorld) -> list[CheckResult]:
    calls = _calls(history)
    return [c(calls, world) for c in CHECKS]


def check_run(out_dir: Path, settings: object = None) -> list[CheckResult]:
    """`saaslab check sharding`: the checks over a live run folder's `live/history.jsonl` and `live/state.json`
    (every shard was read back while the run's servers were up); writes `live/check.json`. `settings` is part
    of every checker's interface; unused here."""
    live = out_dir / "live"
    results = check_files(live / "history.jsonl", live / "state.json")
    (live / "check.json").write_text(json.dumps([r.to_dict() for r in results], indent=2))
    return results


def check_files(history_path: Path, state_path: Path) -> list[CheckResult]:
    """The checks over a live run's `history.jsonl` and `state.json`."""
    return check(load(history_path), ShardWorld.from_dict(json.loads(state_path.read_text())))
