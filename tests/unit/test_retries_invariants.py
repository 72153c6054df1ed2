"""The retries checker over hand-made histories: conditional writes pass, blind writes and double applies fail."""

from __future__ import annotations

from reference_impl.retries.invariants import F_PATCH, check, every_write_applied_once, no_lost_update
from saaslab.history import History


def _history(writes: list[tuple[str, int, str, int | None]]) -> History:
    """(tag, version read, outcome, version written) per write on project p."""
    h = History(process="t")
    for tag, read, kind, written in writes:
        inv = h.invoke(F_PATCH, {"project": "p", "tag": tag, "read_version": read})
        h.complete(inv, kind, {"written_version": written})  # type: ignore[arg-type]
    return h


def test_conditional_writes_that_chain_pass() -> None:
    h = _history([("a", 1, "ok", 2), ("b", 1, "fail", None), ("b", 2, "ok", 3)])
    state = {"projects": {"p": {"version": 3, "name": "b"}}}
    assert all(r.valid for r in check(h.ops, state))


def test_a_blind_write_over_a_version_it_never_read_is_a_lost_update() -> None:
    h = _history([("a", 1, "ok", 2), ("b", 1, "ok", 3)])  # b read 1 but replaced 2: a's update is lost
    state = {"projects": {"p": {"version": 3, "name": "b"}}}
    lost = no_lost_update(h.ops, state)
    assert not lost.valid and lost.violations == 1 and lost.examples[0]["tag"] == "b"
    assert every_write_applied_once(h.ops, state).valid


def test_a_write_applied_twice_or_missing_breaks_the_count() -> None:
    h = _history([("a", 1, "ok", 2), ("b", 2, "ok", 3)])
    assert not every_write_applied_once(h.ops, {"projects": {"p": {"version": 4, "name": "b"}}}).valid
    assert not every_write_applied_once(h.ops, {"projects": {"p": {"version": 2, "name": "a"}}}).valid
    # An unknown outcome may or may not have landed.
    u = _history([("a", 1, "ok", 2), ("b", 2, "info", None)])
    for final in (2, 3):
        assert every_write_applied_once(u.ops, {"projects": {"p": {"version": final, "name": "a"}}}).valid


def test_the_last_acknowledged_tag_is_the_final_name() -> None:
    h = _history([("a", 1, "ok", 2), ("b", 2, "ok", 3)])
    assert not no_lost_update(h.ops, {"projects": {"p": {"version": 3, "name": "a"}}}).valid
