"""Tenant isolation invariants: pure checks over a history plus the final state.

The history comes from `loadtests/tenancy.py` (live) or any other recorder using the same
vocabulary. Operations (`Op.f`): `create_project`, `create_payment`, `get_project`,
`get_payment`, `delete_project`, `list_projects`, `list_payments`. Value fields: `actor` (the
calling tenant's id), `route`, `status`; for single-object routes `object_id` and `owner` (the
owning tenant's id, known to the harness because it created the object) and, when the answer
carried one, `returned_id`; for lists `ids` (what the page returned), `next_cursor` and
`traversal` (pages of one complete listing share it).

The state is what exists at the end: `{"tenants": [tenant ids read], "projects": {tenant id:
[ids]}, "payments": {tenant id: [ids]}}`. The live run (saaslab/live/tenancy.py, `read_state`) reads
it through the public API, each tenant with its own key, while the service still runs, and saves it
as `state.json`.
Through the API rather than the tables because the tables differ per isolation design (one
table, row-level security, a schema per tenant) while the contract does not; an object listed
under two tenants is itself reported, so a leaking list cannot hide a lost object.

Checks:
* `no_cross_tenant_read`: no ok single-object read returned an object another tenant owns; no
  ok list returned another tenant's id.
* `no_cross_tenant_write`: no delete by a non-owner succeeded; every object created and never
  deleted by its owner still exists, under that owner.
* `own_objects_visible`: the control. Owners read their objects and complete listings show all
  of them; without such reads the probe exercised nothing and the check is not valid.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saaslab.history import CheckResult, Op, load, pairs
from saaslab.settings import Settings

KINDS = ("project", "payment")
MAX_EXAMPLES = 5


def _kind(f: str) -> str | None:
    for k in KINDS:
        if f in (f"create_{k}", f"get_{k}", f"delete_{k}", f"list_{k}s"):
            return k
    return None


@dataclass
class _Attempt:
    """One invoke with its completion, in the order the invokes happened."""

    f: str
    kind: str
    actor: str
    type: str  # ok | fail | info | pending
    value: dict[str, Any]
    start_us: int
    end_us: int


@dataclass
class _Facts:
    attempts: list[_Attempt] = field(default_factory=list)
    owner: dict[tuple[str, str], str] = field(default_factory=dict)
    created_us: dict[tuple[str, str], int] = field(default_factory=dict)
    deletes: dict[tuple[str, str], list[_Attempt]] = field(default_factory=lambda: defaultdict(list))


def _facts(history: Iterable[Op], state: Mapping[str, Any]) -> _Facts:
    facts = _Facts()
    for inv, done in pairs(history):
        kind = _kind(inv.f)
        if kind is None:
            continue
        value = done.value if done is not None else inv.value
        facts.attempts.append(_Attempt(f=inv.f, kind=kind, actor=str(inv.value.get("actor")),
                                       type=done.type if done is not None else "pending", value=value,
                                       start_us=inv.time_us, end_us=done.time_us if done is not None else 2**62))
    facts.attempts.sort(key=lambda a: a.start_us)
    for a in facts.attempts:
        oid = a.value.get("object_id")
        if a.f.startswith("create_") and a.type == "ok" and oid:
            facts.owner[(a.kind, str(oid))] = a.actor
            facts.created_us[(a.kind, str(oid))] = a.end_us
        elif a.f.startswith("delete_") and oid:
            facts.deletes[(a.kind, str(oid))].append(a)
    # The state knows the owners of objects the history never saw created.
    for kind in KINDS:
        for tenant, ids in (state.get(f"{kind}s") or {}).items():
            for oid in ids:
                facts.owner.setdefault((kind, str(oid)), str(tenant))
    return facts


def _example(a: _Attempt, **extra: Any) -> dict[str, Any]:
    return {"f": a.f, "actor": a.actor, "route": a.value.get("route"), "status": a.value.get("status"),
            "object_id": a.value.get("object_id"), "owner": a.value.get("owner"), **extra}


def _result(name: str, checked: int, violations: list[dict[str, Any]], detail: str, *,
            require_checked: bool = False) -> CheckResult:
    valid = not violations and (checked > 0 or not require_checked)
    return CheckResult(name=name, valid=valid, checked=checked, violations=len(violations),
                       examples=violations[:MAX_EXAMPLES], detail=detail)


def no_cross_tenant_read(facts: _Facts) -> CheckResult:
    checked, bad = 0, []
    for a in facts.attempts:
        if a.type != "ok":
            continue
        if a.f.startswith("get_"):
            checked += 1
            asked, returned = a.value.get("object_id"), a.value.get("returned_id")
            owners = {str(asked): facts.owner.get((a.kind, str(asked)), a.value.get("owner"))} if asked else {}
            if returned and returned != asked:
                owners[str(returned)] = facts.owner.get((a.kind, str(returned)))
            for oid, owner in owners.items():
                if owner is not None and owner != a.actor:
                    bad.append(_example(a, leaked_id=oid, leaked_owner=owner))
        elif a.f.startswith("list_"):
            checked += 1
            leaked = [i for i in a.value.get("ids") or [] if facts.owner.get((a.kind, i), a.actor) != a.actor]
            if leaked:
                bad.append(_example(a, leaked_ids=leaked[:10], cursor=a.value.get("cursor")))
    cross = sum(1 for a in facts.attempts if a.f.startswith("get_") and a.value.get("owner") not in (None, a.actor))
    return _result("no_cross_tenant_read", checked, bad,
                   f"{checked} successful reads and list pages checked; {cross} reads aimed at another tenant's object")


def no_cross_tenant_write(facts: _Facts, state: Mapping[str, Any]) -> CheckResult:
    checked, bad = 0, []
    for a in facts.attempts:
        if a.f.startswith("delete_") and a.value.get("owner") not in (None, a.actor):
            checked += 1
            if a.type == "ok":
                bad.append(_example(a, problem="a non-owner's delete succeeded"))
    detail = f"{checked} deletes by non-owners"
    tenants_read = {str(t) for t in state.get("tenants") or ()}
    if tenants_read:
        where: dict[tuple[str, str], list[str]] = defaultdict(list)
        for kind in KINDS:
            for tenant, ids in (state.get(f"{kind}s") or {}).items():
                for oid in ids:
                    where[(kind, str(oid))].append(str(tenant))
        survivors = 0
        for key, owner in facts.owner.items():
            if key not in facts.created_us or owner not in tenants_read:
                continue
            # An owner's delete that succeeded, or may have (info, pending), excuses a missing object.
            if any(d.actor == owner and d.type != "fail" for d in facts.deletes.get(key, ())):
                continue
            survivors += 1
            checked += 1
            found = where.get(key, [])
            if found != [owner]:
                bad.append({"kind": key[0], "object_id": key[1], "owner": owner, "found_under": found,
                            "problem": "missing" if not found else "listed under another tenant"})
        detail += f"; {survivors} objects created and never deleted by their owner checked against the final state"
    else:
        detail += "; no final state given, so surviving objects were not checked"
    return _result("no_cross_tenant_write", checked, bad, detail)


def own_objects_visible(facts: _Facts) -> CheckResult:
    checked, bad = 0, []
    traversals: dict[str, list[_Attempt]] = defaultdict(list)
    for a in facts.attempts:
        oid = a.value.get("object_id")
        # Only 200 or 404 say anything about visibility (a 429 or 503 does not).
        if a.f.startswith("get_") and oid and a.value.get("owner") == a.actor and a.value.get("status") in (200, 404):
            key = (a.kind, str(oid))
            if key not in facts.created_us or facts.created_us[key] > a.start_us:
                continue
            # A delete that began before this read ended may have removed the object: no verdict.
            if any(d.start_us <= a.end_us for d in facts.deletes.get(key, ())):
                continue
            checked += 1
            if a.type != "ok":
                bad.append(_example(a, problem="the owner could not read its object"))
        elif a.f.startswith("list_") and a.value.get("traversal"):
            traversals[str(a.value["traversal"])].append(a)
    for pages in traversals.values():
        first, last = pages[0], pages[-1]
        complete = all(p.type == "ok" for p in pages) and not last.value.get("next_cursor")
        if not complete:
            continue
        seen = {i for p in pages for i in p.value.get("ids") or []}
        expected = [
            oid for (kind, oid), owner in facts.owner.items()
            if kind == first.kind and owner == first.actor and facts.created_us.get((kind, oid), 2**62) < first.start_us
            and not any(d.start_us <= last.end_us for d in facts.deletes.get((kind, oid), ()))
        ]
        checked += 1
        missing = [oid for oid in expected if oid not in seen]
        if missing:
            bad.append(_example(first, problem="a complete listing missed the owner's objects",
                                missing_ids=missing[:10], pages=len(pages)))
    return _result("own_objects_visible", checked, bad,
                   f"{checked} owner reads and complete listings checked (none means the probe exercised nothing)",
                   require_checked=True)


def check(history: list[Op], state: Mapping[str, Any]) -> list[CheckResult]:
    """All tenancy invariants over `history` and the final `state` (may be empty: history-only checks)."""
    facts = _facts(history, state)
    return [no_cross_tenant_read(facts), no_cross_tenant_write(facts, state), own_objects_visible(facts)]


# ---------------------------------------------------------------------------------------------
# State and the `saaslab check tenancy` entry point


def merge_states(states: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One state from several read-backs (one per service run on the same database)."""
    out: dict[str, Any] = {"tenants": [], "projects": {}, "payments": {}}
    for s in states:
        out["tenants"] = sorted({*out["tenants"], *(s.get("tenants") or ())})
        for kind in KINDS:
            out[f"{kind}s"].update(s.get(f"{kind}s") or {})
    return out


def write_check(path: Path, results: list[CheckResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pattern": "tenancy", "valid": all(r.valid for r in results),
                                "results": [r.to_dict() for r in results]}, indent=2))


def check_run(out_dir: Path, settings: Settings) -> list[CheckResult]:
    """Check a run folder: `out_dir/live/history.jsonl` and the `state.json` the load run saved.

    `settings` is part of every pattern's checker interface; this one needs no connection, since
    the state was read back while the service ran. Writes `out_dir/live/check.json`.
    """
    live = out_dir / "live"
    history = load(live / "history.jsonl")
    state_path = live / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    results = check(history, state)
    write_check(live / "check.json", results)
    return results
