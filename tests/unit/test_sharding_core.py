"""Sharding's pure core (reference_impl/sharding/core.py): routers, growth, the routing cache, the move's
step machine and the planners."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference_impl.sharding.core import (
    SCHEMES,
    Move,
    MovePolicy,
    Placement,
    RoutingCache,
    advance,
    apply_moves,
    expected_moved_fraction,
    fail_move,
    hash64,
    hottest_tenant,
    imbalance,
    isolation_plan,
    jump_hash,
    make_router,
    moved_on_growth,
    rebalance_plan,
    reshard_plan,
    shard_loads,
    start_move,
    state_from_dict,
    state_to_dict,
    undo_steps,
)

TENANTS = [str(uuid.UUID(int=i * 7919 + 1)) for i in range(20_000)]


def test_jump_hash_reference_vector() -> None:
    assert jump_hash(256, 1024) == 520
    assert [jump_hash(k, 1) for k in range(5)] == [0] * 5


def test_hash64_is_blake2b_64_big_endian() -> None:
    import hashlib
    assert hash64("t") == int.from_bytes(hashlib.blake2b(b"t", digest_size=8).digest(), "big")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_placement_is_stable_for_unchanged_membership(scheme: str) -> None:
    a, b = make_router(scheme, [0, 1, 2, 3]), make_router(scheme, [0, 1, 2, 3])
    assert [a.shard_for(t) for t in TENANTS[:2000]] == [b.shard_for(t) for t in TENANTS[:2000]]
    assert moved_on_growth(a, a.with_shards([0, 1, 2, 3]), TENANTS[:2000]) == []


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("n", [3, 8])
def test_fraction_moved_on_growth_matches_the_scheme(scheme: str, n: int) -> None:
    before = make_router(scheme, range(n))
    after = before.with_shards(range(n + 1))
    moved = moved_on_growth(before, after, TENANTS)
    fraction = len(moved) / len(TENANTS)
    assert fraction == pytest.approx(expected_moved_fraction(scheme, n), abs=0.02)
    if scheme not in ("mod", "directory"):  # consistent schemes move tenants only onto the new shard
        assert {after.shard_for(t) for t in moved} == {n}


@pytest.mark.parametrize("scheme", ["mod", "jump", "rendezvous"])
def test_hash_schemes_spread_tenants_evenly(scheme: str) -> None:
    router = make_router(scheme, range(8))
    assert imbalance(shard_loads(router, dict.fromkeys(TENANTS, 1.0))) < 1.06


def test_ring_spread_narrows_with_more_virtual_nodes() -> None:
    def spread(vnodes: int) -> float:
        r = make_router("ring", range(16), vnodes=vnodes)
        return imbalance(shard_loads(r, dict.fromkeys(TENANTS, 1.0)))
    assert spread(1000) < spread(10)


def test_unknown_scheme_and_bad_membership_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown shard router"):
        make_router("modulo", [0, 1])
    with pytest.raises(ValueError, match="at least one shard"):
        make_router("jump", [])
    r = make_router("directory", [0, 1, 2]).with_placement(TENANTS[0], 2)
    with pytest.raises(ValueError, match="cannot leave"):
        r.with_shards([0, 1])


def test_directory_moves_one_tenant_and_counts_its_epoch() -> None:
    r = make_router("directory", [0, 1, 2])
    t = TENANTS[0]
    home = r.shard_for(t)
    r2 = r.with_placement(t, (home + 1) % 3)
    assert r2.placement(t) == Placement((home + 1) % 3, 1)
    assert r2.with_placement(t, home).placement(t) == Placement(home, 2)
    assert moved_on_growth(r, r2, TENANTS[:1000]) == [t]


def test_a_reshard_by_the_mover_ends_where_the_new_hash_says() -> None:
    before = make_router("jump", [0, 1, 2])
    after = before.with_shards([0, 1, 2, 3])
    moves = reshard_plan(before, after, TENANTS[:3000])
    widened = before.with_shards([0, 1, 2, 3], rehash=False)
    assert all(widened.shard_for(t) == before.shard_for(t) for t in TENANTS[:3000])
    done = apply_moves(widened, moves).with_shards([0, 1, 2, 3])
    assert all(done.shard_for(t) == after.shard_for(t) for t in TENANTS[:3000])
    assert {m.target for m in moves} == {3}


def test_routing_cache_never_goes_back_in_epoch_and_is_bounded() -> None:
    cache = RoutingCache(capacity=2)
    assert cache.put("a", Placement(1, 3)) == Placement(1, 3)
    assert cache.put("a", Placement(0, 2)) == Placement(1, 3)
    cache.put("b", Placement(0, 0))
    cache.get("a")
    cache.put("c", Placement(0, 0))  # b was least recently used
    assert cache.get("b") is None and cache.get("a") == Placement(1, 3)
    cache.invalidate("a")
    assert cache.get("a") is None


def _drive(state, backlogs: list[int]):
    steps, now, backlog = [], 0, iter(backlogs)
    while not state.finished:
        steps.append(state.step)
        now += 10
        rows = next(backlog, 0) if state.step in ("catch_up", "final_catch_up") else 100 if state.step == "copy" else 0
        state = advance(state, now, rows)
    return state, steps


def test_the_fenced_move_runs_every_step_and_reports_its_write_blocked_window() -> None:
    s = start_move(Move("t", 0, 1), mover="fenced", current_epoch=4, now_us=0, policy=MovePolicy(fence_backlog=5))
    assert s.epoch == 5
    done, steps = _drive(s, [40, 20, 3, 2])
    assert steps == ["copy", "catch_up", "catch_up", "catch_up", "fence", "final_catch_up", "flip", "clean"]
    assert done.step == "done" and done.copied_rows == 100 and done.caught_up_rows == 65
    assert done.write_blocked_us == done.flipped_us - done.fenced_us == 20


def test_the_unsafe_move_never_fences() -> None:
    s = start_move(Move("t", 0, 1), mover="unsafe", current_epoch=0, now_us=0)
    done, steps = _drive(s, [0])
    assert steps == ["copy", "catch_up", "flip", "clean"] and done.write_blocked_us == 0


def test_catch_up_stops_after_max_rounds_even_if_writes_keep_up() -> None:
    s = start_move(Move("t", 0, 1), mover="fenced", current_epoch=0, now_us=0, policy=MovePolicy(10, 3))
    _, steps = _drive(s, [1000] * 10)
    assert steps.count("catch_up") == 3


def test_a_failed_move_says_what_to_undo() -> None:
    s = start_move(Move("t", 0, 1), mover="fenced", current_epoch=0, now_us=0)
    s = advance(advance(s, 1, 10), 2, 0)  # copied, caught up: fence next
    assert undo_steps(fail_move(s, 3, "boom")) == ("drop_target",)
    fenced = advance(s, 3)
    assert undo_steps(fail_move(fenced, 4, "boom")) == ("drop_target", "unfence_source")
    flipped = advance(advance(fenced, 4, 0), 5)
    assert undo_steps(fail_move(flipped, 6, "boom")) == ()
    with pytest.raises(ValueError, match="already on shard"):
        start_move(Move("t", 1, 1), mover="fenced", current_epoch=0, now_us=0)


def test_rebalance_by_load_evens_the_shards_and_leaves_a_giant_alone() -> None:
    r = make_router("directory", [0, 1, 2])
    loads = {t: 1.0 for t in TENANTS[:300]}
    r = apply_moves(r, [Move(t, r.shard_for(t), 0) for t in TENANTS[:200]])  # shard 0 hot
    r = r.with_shards([0, 1, 2, 3])
    moves = rebalance_plan(r, loads, tolerance=1.05, max_moves=1000)
    assert moves and all(m.source == 0 for m in moves[:3])
    assert imbalance(shard_loads(apply_moves(r, moves), loads)) <= 1.05
    giant = {**loads, TENANTS[0]: 1000.0}
    balanced = apply_moves(r, rebalance_plan(r, loads, max_moves=1000))
    moves = rebalance_plan(balanced, giant, max_moves=1000)
    settled = shard_loads(apply_moves(balanced, moves), giant)
    assert [m.tenant_id for m in moves].count(TENANTS[0]) <= 1
    assert max(settled.values()) < 1000 + 10  # the giant's shard keeps few others; nobody else is that hot
    assert hottest_tenant(giant) == TENANTS[0]
    iso = isolation_plan(r, TENANTS[0], 4, giant)
    assert iso == [Move(TENANTS[0], 0, 4, 0, 1000.0)]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.1, 100), min_size=4, max_size=60), st.integers(2, 6))
def test_rebalancing_never_makes_the_hottest_shard_hotter(weights: list[float], n: int) -> None:
    r = make_router("directory", range(n))
    loads = {TENANTS[i]: w for i, w in enumerate(weights)}
    before = max(shard_loads(r, loads).values())
    after = max(shard_loads(apply_moves(r, rebalance_plan(r, loads)), loads).values())
    assert after <= before + 1e-9


def test_a_move_in_progress_survives_its_json_and_resumes_where_it_stopped() -> None:
    s = start_move(Move("t", 0, 1, rows=5, load=2.0), mover="fenced", current_epoch=3, now_us=10,
                   policy=MovePolicy(fence_backlog=0))
    for now, rows in ((20, 5), (30, 0), (40, 0)):  # copy, catch_up, fence: the next step is final_catch_up
        s = advance(s, now, rows)
    back = state_from_dict(json.loads(json.dumps(state_to_dict(s))))
    assert back == s and back.step == "final_catch_up" and back.fenced_us == 40
    assert advance(advance(back, 50), 60).write_blocked_us == 20
