"""The sharding simulation: reproducible per seed, growth moves what the theory says, the ring spreads load as
published, and the move model is core.py's step machine judged by the live checker (the unsafe mover fails it,
the fenced one holds it)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from reference_impl.sharding import core
from saaslab.results import read_rows
from scenarios import sharding as sh
from scenarios.sharding import mover as mover_module
from scenarios.sharding.placement import Placements, place
from scenarios.sharding.plan import cell_metric, shard_ids, split_metric, tenant_ids

TINY = replace(sh.QUICK, tenants=(4_000,), shards=(4, 8), growth_tenants=10_000, spread_tenants=60_000,
               memory_tenants=2_000, queue_tenants=4_000, queue_duration_s=0.1, move_rows=(5_000,),
               write_rates=(500.0,))
HASHED = ("mod", "ring", "jump", "rendezvous")


def by_metric(values: list) -> dict[str, float]:
    """Rows, or a placement experiment's (metric, cell, value, unit), by their full metric name."""
    return {v.metric: v.value for v in values} if values and hasattr(values[0], "metric") else {
        cell_metric(metric, **cell): value for metric, cell, value, _unit in values}


def test_a_run_is_reproducible_per_seed_and_differs_across_seeds() -> None:
    for design in ("mod", "fenced"):
        first = sh.simulate(design, 3, scale=TINY, run_id="r")
        again = sh.simulate(design, 3, scale=TINY, run_id="r")
        other = sh.simulate(design, 4, scale=TINY, run_id="r")
        assert first == again
        assert [r.value for r in first] != [r.value for r in other]


@pytest.mark.parametrize("scheme", HASHED)
def test_the_share_moved_when_a_shard_is_added_matches_the_theory(scheme: str) -> None:
    for seed in range(2):
        values = by_metric(Placements(scheme, seed, TINY).growth())
        for k in TINY.shards:
            cell = {"tenants": 10_000, "shards": k}
            theory = values[cell_metric("moved_theory", **cell)]
            moved = values[cell_metric("moved_tenants_share", **cell)]
            assert theory == pytest.approx(k / (k + 1) if scheme == "mod" else 1 / (k + 1))
            # The ring's new shard owns its arcs' share, itself spread about 10% (100 points per shard).
            assert moved == pytest.approx(theory, rel=0.35 if scheme == "ring" else 0.08), (k, seed)


def test_the_tenants_counted_as_moved_are_those_reshard_plan_moves() -> None:
    before = core.make_router("jump", shard_ids(0, 4))
    after = before.with_shards(shard_ids(0, 5))
    ids = tenant_ids(0, 3_000)
    moved = place(before, ids) != place(after, ids)
    planned = {m.tenant_id for m in core.reshard_plan(before, after, ids)}
    assert planned == {t for t, m in zip(ids, moved, strict=True) if m}


def test_the_directory_moves_nothing_on_growth_until_the_rebalancer_fills_the_new_shard() -> None:
    values = by_metric(Placements("directory", 0, TINY).growth())
    for k in TINY.shards:
        assert values[cell_metric("moved_theory", tenants=10_000, shards=k)] == 0
        cell = {"zipf": 0.7, "tenants": 10_000, "shards": k}
        # A few tenants carry about one shard's worth of rows; the shards end within the tolerance.
        assert 0 < values[cell_metric("moved_tenants_share", **cell)] < 0.05
        assert 0.3 / (k + 1) < values[cell_metric("moved_rows_share", **cell)] < 2.0 / (k + 1)
        assert values[cell_metric("load_max_over_mean_grown", **cell)] <= 1.10 + 1e-9


def test_the_ring_spreads_load_as_published() -> None:
    """100 points per shard: about 10% standard deviation; 1,000: about 3.2% (the jump hash paper)."""
    spread = {100: [], 1000: []}
    for seed in range(3):
        values = by_metric(Placements("ring", seed, TINY).ring_spread())
        for v in spread:
            spread[v].append(values[cell_metric("ring_spread", vnodes=v, shards=16, tenants=60_000)])
    mean = {v: sum(xs) / len(xs) for v, xs in spread.items()}
    assert 0.07 < mean[100] < 0.13
    assert 0.022 < mean[1000] < 0.045


def test_a_hot_tenant_sets_a_floor_and_the_directory_rebalances_down_to_it() -> None:
    jump = by_metric(Placements("jump", 0, TINY).balance())
    directory = by_metric(Placements("directory", 0, TINY).balance())
    for zipf in sh.ZIPF_EXPONENTS:
        cell = {"zipf": zipf, "tenants": 4_000, "shards": 8}
        floor = jump[cell_metric("load_floor", **cell)]
        assert jump[cell_metric("load_max_over_mean", **cell)] >= floor - 1e-9
        assert floor - 1e-9 <= directory[cell_metric("load_max_over_mean", **cell)]
        assert directory[cell_metric("load_max_over_mean", **cell)] <= max(1.10, jump[cell_metric(
            "load_max_over_mean", **cell)]) + 1e-9


def test_router_memory_is_per_shard_for_hashing_and_per_tenant_for_the_directory() -> None:
    memory = {s: by_metric(Placements(s, 0, TINY).memory()) for s in ("mod", "ring", "directory")}
    key = cell_metric("router_bytes", tenants=1_000_000, shards=8)
    assert memory["mod"][key] < 10_000 < memory["ring"][key] < 1_000_000 < memory["directory"][key]
    per_tenant = memory["directory"][cell_metric("router_bytes_per_tenant", tenants=1_000_000, shards=8)]
    assert 50 < per_tenant < 1_000


def test_the_hot_shard_queues_longer_than_a_shard_at_the_mean_load() -> None:
    rows = sh.simulate("mod", 0, scale=TINY)
    values = {(r.metric, r.load_point): r.value for r in rows}
    lp = TINY.queue_loads[0]
    hot = values[(cell_metric("hot_shard_p99", zipf=1.2, tenants=4_000, shards=16), lp)]
    assert values[(cell_metric("hot_shard_utilisation", zipf=1.2, tenants=4_000, shards=16), lp)] > 1
    assert hot > 3 * values[(cell_metric("mean_shard_p99", shards=16), lp)]


@pytest.mark.parametrize("seed", range(2))
def test_the_checker_catches_the_unsafe_mover_and_not_the_fenced_one(seed: int) -> None:
    fenced = sh.simulate_move("fenced", 20_000, 1_000.0, seed)
    assert fenced.valid, [c for c in fenced.checks if not c.valid]
    assert fenced.lost() == 0 and fenced.misplaced() == 0
    assert fenced.state.write_blocked_us > 0 and fenced.state.step == "done"
    unsafe = sh.simulate_move("unsafe", 20_000, 1_000.0, seed)
    assert not unsafe.valid
    assert not unsafe.check("acknowledged_writes_once").valid
    assert unsafe.lost() + unsafe.misplaced() > 0
    assert unsafe.state.write_blocked_us == 0  # no fence: nothing blocked, and nothing safe


def test_the_lost_writes_counted_are_the_checkers() -> None:
    unsafe = sh.simulate_move("unsafe", 20_000, 2_000.0, 0)
    lost = unsafe.check("acknowledged_writes_once").detail
    assert unsafe.lost() > 0 and lost == f"{unsafe.lost()} acknowledged writes lost"


def test_the_move_is_cores_step_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    steps: dict[str, list[str]] = {}
    real = core.advance

    def recording(state, now_us, rows=0):  # type: ignore[no-untyped-def]
        steps.setdefault(state.mover, []).append(state.step)
        return real(state, now_us, rows)

    monkeypatch.setattr(mover_module, "advance", recording)
    for mover in sh.MOVERS:
        sh.simulate_move(mover, 5_000, 100.0, 0)
    assert steps["fenced"] == ["copy", "catch_up", "fence", "final_catch_up", "flip", "clean"]
    assert steps["unsafe"] == ["copy", "catch_up", "flip", "clean"]


def test_a_bigger_tenant_takes_longer_to_move_but_not_to_cut_over() -> None:
    small = sh.simulate_move("fenced", 5_000, 200.0, 0).values()
    big = sh.simulate_move("fenced", 50_000, 200.0, 0).values()
    get = lambda values, name: next(v for m, v, _ in values if m == name)  # noqa: E731
    assert get(big, "move_duration_ms") > 5 * get(small, "move_duration_ms")
    assert get(big, "write_blocked_ms") < 5 and get(small, "write_blocked_ms") < 5


def test_run_writes_the_tidy_rows_and_run_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sh, "QUICK", TINY)  # the quick scale's shape, smaller
    csv = sh.run(tmp_path, quick=True, seeds=1, jobs=1)
    rows = read_rows(csv)
    assert {r.source for r in rows} == {"sim"} and {r.pattern for r in rows} == {"sharding"}
    assert {r.design for r in rows} == set(sh.DESIGNS)
    named = {split_metric(r.metric)[0] for r in rows}
    assert {"load_max_over_mean", "moved_tenants_share", "moved_rows_share", "ring_spread", "router_bytes",
            "hot_shard_p99", "write_blocked_ms", "moved_rows", "lost_writes", "checks_valid"} <= named
    assert {r.load_point for r in rows} == {sh.PLACEMENT, *TINY.queue_loads}
    run = json.loads((tmp_path / "sim" / "run.json").read_text())
    assert run["parameters"]["quick"] is True and run["parameters"]["scale"]["shards"] == list(TINY.shards)
    assert not any(math.isnan(r.value) for r in rows if split_metric(r.metric)[0] != "moved_rows")


def test_metric_names_carry_their_cell() -> None:
    name = cell_metric("load_max_over_mean", zipf=1.2, tenants=1_000_000, shards=64)
    assert name == "load_max_over_mean@zipf=1.2,tenants=1000000,shards=64"
    assert split_metric(name) == ("load_max_over_mean", {"zipf": 1.2, "tenants": 1e6, "shards": 64.0})
    assert split_metric("write_blocked_ms") == ("write_blocked_ms", {})


def test_an_unknown_design_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match="unknown sharding design 'nope'"):
        sh.simulate("nope", 0)
