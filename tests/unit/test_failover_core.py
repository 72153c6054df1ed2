"""The failover core: Patroni's timer rule, the lease, the leader decision and the agent's step machine."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reference_impl.failover.core import (
    FREE,
    PRESETS,
    US_PER_S,
    Acquire,
    AgentState,
    Detector,
    Fence,
    Follow,
    Lease,
    Member,
    Observation,
    Policy,
    Renew,
    Unfence,
    acquire,
    choose_leader,
    fence_deadline_us,
    held_by,
    needs_rewind,
    quorum_agrees,
    renew,
    renewed,
    step,
    timers_s,
)

LAB = PRESETS["lab"]
S = US_PER_S


def test_presets_are_the_published_defaults_and_keep_patronis_rule() -> None:
    p = PRESETS["patroni"]
    assert (p.ttl_us, p.loop_wait_us, p.retry_timeout_us) == (30 * S, 10 * S, 10 * S)
    assert PRESETS["repmgr"].ttl_us == 60 * S and PRESETS["sentinel"].ttl_us == 30 * S
    assert p.failover_bounds_us() == (20 * S, 40 * S)
    for t in PRESETS.values():
        assert t.validate() is t


def test_timers_breaking_patronis_rule_are_refused() -> None:
    with pytest.raises(ValueError, match="loop_wait \\+ 2\\*retry_timeout"):
        timers_s("bad", 30, 10, 11)
    with pytest.raises(ValueError, match="positive"):
        timers_s("zero", 30, 0, 1)


@given(st.integers(1, 100), st.integers(1, 100), st.integers(1, 400))
def test_a_valid_leader_fences_itself_before_its_lease_can_lapse(loop: int, retry: int, ttl: int) -> None:
    try:
        t = timers_s("t", ttl, loop, retry)
    except ValueError:
        return
    renewed_at = 5 * S
    assert fence_deadline_us(renewed_at, t) + t.retry_timeout_us <= renewed_at + t.ttl_us


def test_detector_suspects_then_declares_dead() -> None:
    d = Detector(interval_us=1 * S, timeout_us=3 * S, last_heard_us=0)
    assert d.verdict(S) == "alive" and d.verdict(2 * S) == "suspect" and d.verdict(3 * S) == "dead"
    assert d.heard(3 * S).verdict(3 * S + 1) == "alive"
    assert quorum_agrees(["dead", "dead", "alive"], 2) and not quorum_agrees(["dead", "alive", "alive"], 2)


def test_the_lease_has_one_holder_until_it_lapses_and_each_new_holder_a_new_term() -> None:
    a = acquire(FREE, "n1", 0, 3 * S)
    assert a is not None and a.term == 1 and held_by(a, 2 * S) == "n1"
    assert acquire(a, "n2", 2 * S, 3 * S) is None
    assert renew(a, "n2", S, 3 * S) is None
    r = renew(a, "n1", 2 * S, 3 * S)
    assert r is not None and r.expires_us == 5 * S and r.term == 1
    assert held_by(r, 5 * S) is None and renew(r, "n1", 5 * S, 3 * S) is None
    b = acquire(r, "n2", 5 * S, 3 * S)
    assert b is not None and b.term == 2 and b.holder == "n2"


def test_the_most_advanced_replica_is_chosen_and_laggards_refused() -> None:
    members = [Member("n1", "down"), Member("n2", "replica", 100), Member("n3", "replica", 250)]
    assert choose_leader(members, replicas_total=2) == "n3"
    assert choose_leader(members, replicas_total=2, leader_lsn=2_000, max_lag_bytes=1_000) is None
    tie = [Member("b", "replica", 5), Member("a", "replica", 5)]
    assert choose_leader(tie, replicas_total=2) == "a"
    # sync, one standby of two: both must answer, or the one with the acknowledged commits may be the silent one
    assert choose_leader(members[:2], replicas_total=2, sync_standbys=1) is None
    assert choose_leader(members, replicas_total=2, sync_standbys=1) == "n3"
    assert choose_leader([Member("n1", "primary", 999)], replicas_total=1) is None


def test_rewind_only_for_a_member_that_wrote_past_the_fork() -> None:
    assert not needs_rewind(1, 100, 2, fork_lsn=100)
    assert needs_rewind(1, 101, 2, fork_lsn=100)
    assert needs_rewind(1, 50, 2, fork_lsn=None)
    assert not needs_rewind(2, 500, 2, fork_lsn=None)


def _obs(now: int, role: str, lease: Lease | None, lsn: int = 0, peers: tuple[Member, ...] = ()) -> Observation:
    return Observation(now, Member("n1", role, lsn), lease, peers)  # type: ignore[arg-type]


SAFE = Policy(LAB)
UNSAFE = Policy(LAB, fencing=False)


def test_a_leader_renews_and_fences_itself_when_the_store_is_out_of_reach() -> None:
    lease = Lease("n1", 3 * S, 1)
    state = renewed(AgentState("n1"), 0)
    state, actions = step(state, _obs(S, "primary", lease), SAFE)
    assert actions == (Renew(),)
    state = renewed(state, S)
    # cut off from the store: nothing until the deadline (one loop + one retry timeout), then fence
    assert step(state, _obs(2 * S, "primary", None), SAFE)[1] == ()
    fenced, actions = step(state, _obs(3 * S, "primary", None), SAFE)
    assert actions == (Fence(),) and fenced.fenced
    assert step(fenced, _obs(4 * S, "primary", None), SAFE)[1] == ()  # once
    # the unsafe design never fences itself
    assert step(state, _obs(9 * S, "primary", None), UNSAFE)[1] == ()
    # the lease came back to it: renew and take writes again
    assert step(fenced, _obs(4 * S, "primary", Lease("n1", 6 * S, 1)), SAFE)[1] == (Renew(), Unfence())


def test_a_replica_takes_a_lapsed_lease_only_if_it_is_the_most_advanced() -> None:
    lapsed = Lease("n0", 3 * S, 1, leader_lsn=1_000)
    ahead = (Member("n2", "replica", 900),)
    assert step(AgentState("n1"), _obs(4 * S, "replica", lapsed, 800, ahead), SAFE)[1] == ()
    assert step(AgentState("n1"), _obs(4 * S, "replica", lapsed, 950, ahead), SAFE)[1] == (Acquire(promote=True),)
    # never while the leader's lease holds
    assert step(AgentState("n1"), _obs(2 * S, "replica", lapsed, 950, ahead), SAFE)[1] == (Follow("n0", False),)


def test_an_old_primary_that_sees_another_leader_demotes_and_checks_its_timeline() -> None:
    other = Lease("n2", 10 * S, 2)
    state = renewed(AgentState("n1"), 0)
    new, actions = step(state, _obs(5 * S, "primary", other), SAFE)
    assert actions == (Fence(), Follow("n2", True)) and new.renewed_us is None
    assert step(state, _obs(5 * S, "primary", other), UNSAFE)[1] == ()  # stays a second primary
    assert step(state, _obs(5 * S, "down", other), SAFE)[1] == (Fence(), Follow("n2", True))  # overdue
    assert step(AgentState("n1"), _obs(5 * S, "down", other), SAFE)[1] == (Follow("n2", True),)


def test_a_primary_whose_lease_lapsed_fences_then_tries_to_take_it_back() -> None:
    state = renewed(AgentState("n1"), 0)
    lapsed = Lease("n1", 3 * S, 1)
    new, actions = step(state, _obs(3 * S, "primary", lapsed), SAFE)
    assert actions == (Fence(), Acquire(promote=False)) and new.fenced
    assert step(state, _obs(3 * S, "primary", lapsed), UNSAFE)[1] == (Acquire(promote=False),)


def test_a_paused_leader_is_fenced_when_overdue_but_the_unsafe_design_waits() -> None:
    state = renewed(AgentState("n1"), 0)
    lease = Lease("n1", 3 * S, 1)
    assert step(state, _obs(S, "down", lease), SAFE)[1] == ()
    fenced, actions = step(state, _obs(2 * S, "down", lease), SAFE)
    assert actions == (Fence(),) and fenced.fenced
    assert step(state, _obs(2 * S, "down", lease), UNSAFE)[1] == ()
    # a replica that once led (renewals on record) is never fenced
    assert step(state, _obs(9 * S, "replica", None), SAFE)[1] == ()
