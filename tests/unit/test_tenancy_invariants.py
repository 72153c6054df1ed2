"""The tenancy checker passes a clean history and catches every kind of leak the probe looks for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reference_impl.tenancy.invariants import check, check_run, merge_states
from saaslab.history import History, Op, save
from saaslab.settings import Settings

A, B = "tenant-a", "tenant-b"


class Recorder:
    """Writes a probe-shaped history by hand, one completed operation at a time, on a fake clock."""

    def __init__(self) -> None:
        self.h = History(process="probe")
        self.now = 0

    def _tick(self) -> int:
        self.now += 10
        return self.now

    def op(self, f: str, actor: str, status: int, **value: Any) -> None:
        inv = self.h.invoke(f, {"actor": actor, "route": f, **{k: v for k, v in value.items() if k != "seen"}},
                            time_us=self._tick())
        kind = "ok" if 200 <= status < 300 else "fail" if 400 <= status < 500 else "info"
        self.h.complete(inv, kind, {"status": status, **value.get("seen", {})}, time_us=self._tick())

    def create(self, kind: str, actor: str, oid: str) -> None:
        self.op(f"create_{kind}", actor, 201, seen={"object_id": oid, "owner": actor})

    def get(self, kind: str, actor: str, oid: str, owner: str, status: int) -> None:
        seen = {"returned_id": oid} if status == 200 else {}
        self.op(f"get_{kind}", actor, status, object_id=oid, owner=owner, seen=seen)

    def delete(self, actor: str, oid: str, owner: str, status: int) -> None:
        self.op("delete_project", actor, status, object_id=oid, owner=owner)

    def page(self, kind: str, actor: str, ids: list[str], nxt: str | None, traversal: str | None = None) -> None:
        self.op(f"list_{kind}s", actor, 200, traversal=traversal, seen={"ids": ids, "next_cursor": nxt})

    @property
    def ops(self) -> list[Op]:
        return self.h.ops


def clean_probe() -> Recorder:
    """What a safe service produces: B is refused everywhere, A sees everything it owns."""
    r = Recorder()
    for i in range(3):
        r.create("project", A, f"pa{i}")
        r.create("payment", A, f"ya{i}")
    r.create("project", B, "pb0")
    r.create("payment", B, "yb0")
    for i in range(3):
        r.get("project", A, f"pa{i}", A, 200)
        r.get("payment", A, f"ya{i}", A, 200)
        r.get("project", B, f"pa{i}", A, 404)
        r.get("payment", B, f"ya{i}", A, 404)
    r.page("project", B, ["pb0"], None)
    r.page("payment", B, ["yb0"], None)
    r.page("project", A, ["pa0", "pa1"], "c1", traversal="t1")
    r.page("project", A, ["pa2"], None, traversal="t1")
    for i in range(3):
        r.delete(B, f"pa{i}", A, 404)
    r.delete(A, "pa2", A, 204)
    r.get("project", A, "pa2", A, 404)
    return r


def clean_state() -> dict[str, Any]:
    return {"tenants": [A, B], "projects": {A: ["pa0", "pa1"], B: ["pb0"]},
            "payments": {A: ["ya0", "ya1", "ya2"], B: ["yb0"]}}


def by_name(results: list) -> dict[str, Any]:
    return {r.name: r for r in results}


def test_clean_history_passes_every_check() -> None:
    results = by_name(check(clean_probe().ops, clean_state()))
    assert set(results) == {"no_cross_tenant_read", "no_cross_tenant_write", "own_objects_visible"}
    assert all(r.valid for r in results.values()), [r.to_dict() for r in results.values()]
    assert all(r.violations == 0 for r in results.values())
    # 6 own reads + 1 complete listing; reads after the owner's delete began are excused.
    assert results["own_objects_visible"].checked == 7
    # 3 deletes by B, plus 2+3+1+1 surviving objects checked against the state.
    assert results["no_cross_tenant_write"].checked == 3 + 7


def test_a_cross_tenant_read_that_succeeded_is_caught() -> None:
    r = clean_probe()
    r.get("payment", B, "ya1", A, 200)
    result = by_name(check(r.ops, clean_state()))["no_cross_tenant_read"]
    assert not result.valid and result.violations == 1
    assert result.examples[0]["leaked_id"] == "ya1" and result.examples[0]["leaked_owner"] == A


def test_a_read_answering_with_another_tenants_object_is_caught() -> None:
    r = clean_probe()
    # B asks for its own id but the service hands back one of A's objects.
    r.op("get_project", B, 200, object_id="pb0", owner=B, seen={"returned_id": "pa0"})
    result = by_name(check(r.ops, clean_state()))["no_cross_tenant_read"]
    assert not result.valid and result.violations == 1 and result.examples[0]["leaked_id"] == "pa0"


def test_a_list_leaking_an_id_is_caught() -> None:
    r = clean_probe()
    r.page("payment", B, ["yb0", "ya2"], None)
    result = by_name(check(r.ops, clean_state()))["no_cross_tenant_read"]
    assert not result.valid and result.violations == 1
    assert result.examples[0]["leaked_ids"] == ["ya2"]


def test_a_cross_tenant_delete_that_succeeded_is_caught_in_history_and_state() -> None:
    r = clean_probe()
    r.delete(B, "pa0", A, 204)
    state = clean_state()
    state["projects"][A] = ["pa1"]  # and it really is gone
    result = by_name(check(r.ops, state))["no_cross_tenant_write"]
    assert not result.valid and result.violations == 2
    problems = {e["problem"] for e in result.examples}
    assert problems == {"a non-owner's delete succeeded", "missing"}


def test_a_delete_that_answered_404_but_happened_is_caught_by_the_state() -> None:
    state = clean_state()
    state["projects"][A] = ["pa0"]  # pa1 vanished although every delete by B was refused
    result = by_name(check(clean_probe().ops, state))["no_cross_tenant_write"]
    assert not result.valid and result.violations == 1
    assert result.examples[0] == {"kind": "project", "object_id": "pa1", "owner": A, "found_under": [],
                                  "problem": "missing"}


def test_an_object_listed_under_two_tenants_is_a_violation() -> None:
    state = clean_state()
    state["payments"][B] = ["yb0", "ya0"]
    result = by_name(check(clean_probe().ops, state))["no_cross_tenant_write"]
    assert not result.valid and result.examples[0]["found_under"] == [A, B]


def test_owner_unable_to_read_its_object_fails_the_control() -> None:
    r = clean_probe()
    r.get("payment", A, "ya0", A, 404)
    result = by_name(check(r.ops, clean_state()))["own_objects_visible"]
    assert not result.valid and result.violations == 1


def test_a_complete_listing_missing_an_own_object_fails_the_control() -> None:
    r = clean_probe()
    r.page("payment", A, ["ya0"], None, traversal="t2")
    result = by_name(check(r.ops, clean_state()))["own_objects_visible"]
    assert not result.valid and result.examples[0]["missing_ids"] == ["ya1", "ya2"]


def test_a_probe_that_exercised_nothing_is_not_valid() -> None:
    r = Recorder()
    r.create("project", A, "pa0")
    results = by_name(check(r.ops, {}))
    assert not results["own_objects_visible"].valid and results["own_objects_visible"].checked == 0
    assert results["no_cross_tenant_read"].valid


def test_unknown_outcomes_are_not_verdicts() -> None:
    r = clean_probe()
    r.get("project", B, "pa1", A, 503)  # info: the service may or may not have answered with data
    r.get("payment", A, "ya0", A, 429)  # refused for load, which says nothing about visibility
    r.op("delete_project", A, 503, object_id="pa1", owner=A)  # info: maybe deleted
    state = clean_state()
    state["projects"][A] = ["pa0"]
    assert all(res.valid for res in check(r.ops, state))


def test_check_run_reads_the_run_folder_and_writes_check_json(tmp_path: Path) -> None:
    live = tmp_path / "live"
    r = clean_probe()
    r.get("project", B, "pa0", A, 200)
    save(live / "history.jsonl", r.ops)
    (live / "state.json").write_text(json.dumps(merge_states([clean_state(), {"tenants": ["c"], "projects": {},
                                                                              "payments": {}}])))
    results = check_run(tmp_path, Settings())
    written = json.loads((live / "check.json").read_text())
    assert written["valid"] is False
    assert [x["name"] for x in written["results"]] == [x.name for x in results]
    assert {x["name"]: x["valid"] for x in written["results"]} == {
        "no_cross_tenant_read": False, "no_cross_tenant_write": True, "own_objects_visible": True}
