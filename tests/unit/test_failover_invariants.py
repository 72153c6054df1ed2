"""The failover checker on hand-built histories: it counts Jepsen's way and catches what the unsafe design does."""

from __future__ import annotations

from reference_impl.failover.invariants import check, rows, split_brain_writes, writes
from saaslab.history import History, Op


def _history(events: list[tuple[str, int, str, int, str | None]]) -> list[Op]:
    """(id, invoke_us, outcome, complete_us, server) per write."""
    h = History()
    for wid, t0, outcome, t1, server in events:
        inv = h.invoke("write", {"id": wid}, time_us=t0)
        if outcome != "pending":
            h.complete(inv, outcome, {"server": server} if outcome == "ok" else {}, time_us=t1)  # type: ignore[arg-type]
    return h.ops


def test_a_clean_failover_loses_nothing_and_measures_the_window() -> None:
    ops = _history([("a", 0, "ok", 10, "n1"), ("b", 20, "ok", 30, "n1"), ("c", 40, "info", 1_000, None),
                    ("d", 1_100, "fail", 1_200, None), ("e", 1_300, "ok", 1_400, "n2"), ("f", 1_500, "ok", 1_510, "n2")])
    v = check(ops, ["a", "b", "e", "f", "c"], fault_us=35)
    assert v.valid, v.failed()
    assert (v.count.total, v.count.acknowledged, v.count.survivors, v.count.lost) == (6, 4, 5, 0)
    assert v.count.unacknowledged_present == 1 and v.count.failed_present == 0
    assert v.unavailability.window_us == 1_400 - 1_000
    assert v.unavailability.longest_gap_us == 1_400 - 35
    assert rows(v)["unavailability"] == (400 / 1_000_000, "s")


def test_lost_acknowledged_writes_are_counted_in_jepsens_format() -> None:
    ops = _history([(str(i), i * 10, "ok", i * 10 + 5, "n1") for i in range(10)] + [("x", 200, "fail", 210, None)])
    v = check(ops, [str(i) for i in range(4)] + ["x"], fault_us=100)
    assert v.count.lost == 6 and set(v.count.lost_ids) == {str(i) for i in range(4, 10)}
    assert v.count.line() == "11 total, 10 acknowledged, 5 survivors, 6 lost (60%), 1 unacknowledged but present"
    assert v.failed() == ["no_lost_writes", "failed_writes_absent"]


def test_two_primaries_accepting_at_once_are_split_brain() -> None:
    ops = _history([
        ("a", 0, "ok", 10, "n1"),
        ("b", 1_000, "ok", 1_010, "n2"),   # the new primary's first acknowledgement
        ("c", 1_020, "ok", 1_030, "n1"),   # the old one, invoked after it: certainly two primaries
        ("d", 1_025, "ok", 1_028, "n2"),
        ("e", 2_000, "ok", 2_010, "n2"),   # after the old one's last: not split brain
    ])
    brain = split_brain_writes(writes(ops))
    assert [w.id for w in brain] == ["b", "c", "d"]
    v = check(ops, ["a", "b", "d", "e"], fault_us=500)
    assert v.split_brain == 3 and "no_split_brain" in v.failed() and v.count.lost == 1


def test_a_late_acknowledgement_of_a_write_sent_before_the_switch_is_not_split_brain() -> None:
    ops = _history([("a", 0, "ok", 2_000, "n1"), ("b", 1_000, "ok", 1_010, "n2")])
    assert split_brain_writes(writes(ops)) == []


def test_a_read_that_misses_an_acknowledged_write_is_stale() -> None:
    h = History()
    w = h.invoke("write", {"id": "a"}, time_us=0)
    h.complete(w, "ok", {"server": "n1"}, time_us=10)
    r = h.invoke("read", {"id": "a"}, time_us=20)
    h.complete(r, "ok", {"found": False, "server": "n2"}, time_us=30)
    r2 = h.invoke("read", {"id": "a"}, time_us=40)
    h.complete(r2, "ok", {"found": True}, time_us=50)
    v = check(h.ops, ["a"], fault_us=5)
    assert v.failed() == ["no_stale_reads"]
    stale = next(c for c in v.checks if c.name == "no_stale_reads")
    assert (stale.checked, stale.violations) == (2, 1)


def test_no_failure_means_no_window_and_pending_writes_count_as_unacknowledged() -> None:
    ops = _history([("a", 0, "ok", 10, "n1"), ("b", 20, "pending", 0, None)])
    v = check(ops, ["a", "b"], fault_us=15)
    assert v.count.unacknowledged_present == 1
    assert v.unavailability.window_us is None  # b never completed: nothing acknowledged after it
    v2 = check(_history([("a", 0, "ok", 10, "n1")]), ["a"], fault_us=5)
    assert v2.unavailability.window_us == 0
