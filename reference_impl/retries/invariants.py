"""Retries' invariants: under optimistic concurrency no acknowledged write is lost or applied twice.

Pure checks over a history of conditional writes (`patch_project` operations: the project, the
client's tag, the version it read, and for a write that landed the version it produced) and the
final state read back (per project: its version and name). A blind writer (`If-Match: *`, the
deliberately unsafe client) overwrites versions it never read, and `no_lost_update` catches it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from saaslab.history import CheckResult, Op, load, pairs

F_PATCH = "patch_project"
FIRST_VERSION = 1
MAX_EXAMPLES = 5


def _writes(history: list[Op]) -> dict[str, list[tuple[Op, Op | None]]]:
    by_project: dict[str, list[tuple[Op, Op | None]]] = defaultdict(list)
    for inv, done in pairs(history):
        if inv.f == F_PATCH:
            by_project[str(inv.value.get("project"))].append((inv, done))
    return by_project


def every_write_applied_once(history: list[Op], state: Mapping[str, Any]) -> CheckResult:
    """Per project: its final version is its first plus one per acknowledged write (unknown outcomes may add
    one each), and no two acknowledged writes produced the same version."""
    projects = state.get("projects") or {}
    examples, checked = [], 0
    for project, writes in _writes(history).items():
        checked += 1
        acked = [done.value.get("written_version") for _, done in writes if done is not None and done.type == "ok"]
        unknown = sum(1 for _, done in writes if done is None or done.type == "info")
        final = (projects.get(project) or {}).get("version")
        low, high = FIRST_VERSION + len(acked), FIRST_VERSION + len(acked) + unknown
        duplicated = len(set(acked)) != len(acked)
        if final is None or not low <= final <= high or duplicated:
            examples.append({"project": project, "final_version": final, "acknowledged": len(acked),
                             "unknown": unknown, "duplicate_versions": duplicated})
    return CheckResult("every_write_applied_once", not examples, checked, len(examples), examples[:MAX_EXAMPLES],
                       "final version = 1 + acknowledged writes (+ unknown outcomes); each version produced once")


def no_lost_update(history: list[Op], state: Mapping[str, Any]) -> CheckResult:
    """Every acknowledged write replaced exactly the version its client read (so it overwrote nothing the client
    had not seen), and each project ends with the tag of its last acknowledged write."""
    projects = state.get("projects") or {}
    examples, checked = [], 0
    for project, writes in _writes(history).items():
        acked = [(inv, done) for inv, done in writes if done is not None and done.type == "ok"]
        checked += len(acked)
        for inv, done in acked:
            read, written = inv.value.get("read_version"), done.value.get("written_version")
            if not isinstance(read, int) or written != read + 1:
                examples.append({"project": project, "tag": inv.value.get("tag"), "read_version": read,
                                 "written_version": written})
        if acked and project in projects:
            last = max(acked, key=lambda w: w[1].value.get("written_version") or 0)[0].value.get("tag")
            if projects[project].get("name") != last:
                examples.append({"project": project, "final_name": projects[project].get("name"),
                                 "last_acknowledged_tag": last})
    return CheckResult("no_lost_update", not examples, checked, len(examples), examples[:MAX_EXAMPLES],
                       "each acknowledged write was based on the version it replaced")


def check(history: list[Op], state: Mapping[str, Any]) -> list[CheckResult]:
    return [every_write_applied_once(history, state), no_lost_update(history, state)]


def write_check(path: Path, results: list[CheckResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pattern": "retries", "valid": all(r.valid for r in results),
                                "results": [r.to_dict() for r in results]}, indent=2))


def check_run(out_dir: Path, settings: Any = None) -> list[CheckResult]:
    """Check a run folder: `out_dir/live/history.jsonl` and the `state.json` the load run read back; writes
    `out_dir/live/check.json`. `settings` is part of every checker's interface; the state needs no connection."""
    live = out_dir / "live"
    state_path = live / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    results = check(load(live / "history.jsonl"), state)
    write_check(live / "check.json", results)
    return results
