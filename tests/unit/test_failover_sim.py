"""The failover simulation: reproducible per seed, core.py's own decisions, the figures it must reproduce
(Patroni's defaults), and the checker's verdicts on simulated histories (sync loses nothing; unsafe is caught)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from reference_impl.failover import core
from saaslab.results import COLUMNS, read_rows
from scenarios import failover as fo
from scenarios.failover import lab as lab_module
from scenarios.failover.plan import Condition, split_metric


def _ids(trial: fo.Trial) -> list[tuple[str, str, int]]:
    return [(op.type, str(op.value.get("id")), op.time_us) for op in trial.history]


def test_a_seed_replays_exactly_and_another_seed_differs() -> None:
    one = fo.simulate("async", "partition", seed=3, rate=50)
    again = fo.simulate("async", "partition", seed=3, rate=50)
    other = fo.simulate("async", "partition", seed=4, rate=50)
    assert _ids(one) == _ids(again) and one.events == again.events
    assert _ids(one) != _ids(other)


def test_every_decision_is_cores_step(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[core.Observation] = []
    real = core.step

    def counting(state, obs, policy):  # type: ignore[no-untyped-def]
        calls.append(obs)
        return real(state, obs, policy)

    monkeypatch.setattr(lab_module.core, "step", counting)
    trial = fo.simulate("sync", "kill", rate=10)
    assert trial.promoted
    # Both agents loop every loop_wait (1 s with the lab's timers) for the whole run.
    assert {o.me.name for o in calls} == {"pg0", "pg1"} and len(calls) > 10


def test_patronis_defaults_cost_about_ttl_plus_loop_wait_for_a_dead_primary() -> None:
    timers = core.PRESETS["patroni"]
    best, worst = (x / core.US_PER_S for x in timers.failover_bounds_us())  # 20 s and 40 s
    outages, failovers = [], []
    for seed in range(8):
        t = fo.simulate("async", "kill", timers="patroni", rate=5, seed=seed)
        assert t.verdict is not None and t.verdict.unavailability.window_us is not None
        outages.append(t.verdict.unavailability.window_us / core.US_PER_S)
        failovers.append((t.failover_us or 0) / core.US_PER_S)
    assert all(best <= f <= worst + 0.5 for f in failovers), failovers
    assert all(best <= u <= worst + 1.5 for u in outages), outages
    assert 25 <= statistics.mean(outages) <= 40


def test_sync_loses_no_acknowledged_write_where_async_does() -> None:
    for fault in fo.FAULTS:
        t = fo.simulate("sync", fault, rate=200, lag_ms=100, seed=1)
        assert t.verdict is not None
        assert t.verdict.count.acknowledged > 100
        assert t.verdict.count.lost == 0, (fault, t.verdict.count.line())
        assert t.verdict.split_brain == 0
    # The same faults lose acknowledged writes under async: the writes of the last lag, or of the cut-off side.
    lost = {f: fo.simulate("async", f, rate=200, lag_ms=100, seed=1).verdict.count.lost for f in ("kill", "partition")}  # type: ignore[union-attr]
    assert all(n > 0 for n in lost.values()), lost
    async_kill = [fo.simulate("async", "kill", rate=400, lag_ms=100, seed=s).verdict.count.lost for s in range(4)]  # type: ignore[union-attr]
    # Little's law: about rate x lag writes are in flight to the replica when the primary dies (40 here).
    assert 10 <= statistics.mean(async_kill) <= 100, async_kill


def test_the_checker_catches_the_unsafe_design_and_no_other() -> None:
    unsafe = fo.simulate("unsafe", "partition", rate=100, seed=2)
    assert unsafe.verdict is not None
    assert unsafe.verdict.split_brain > 0 and unsafe.verdict.count.lost > 0
    assert set(unsafe.verdict.failed()) >= {"no_lost_writes", "no_split_brain"}
    servers = {op.value["server"] for op in unsafe.history if op.type == "ok" and op.f == "write"}
    assert servers == {"pg0", "pg1"}
    for design in ("async", "sync"):
        t = fo.simulate(design, "partition", rate=100, seed=2)
        assert t.verdict is not None and t.verdict.split_brain == 0
        assert any(w.startswith("fenced") and n == "pg0" for _, n, w in t.events)  # it fenced itself


def test_a_pause_longer_than_the_lease_fails_over_and_a_short_one_does_not() -> None:
    for seed in range(5):
        assert not fo.simulate("sync", "pause", timers="ttl3s", hold_s=1.0, rate=0, seed=seed).promoted
        assert fo.simulate("sync", "pause", timers="ttl3s", hold_s=5.0, rate=0, seed=seed).promoted


def test_metric_names_carry_their_condition_and_a_live_name_may_leave_parts_out() -> None:
    c = Condition("partition", 5.0, "lab", 1.0)
    assert c.metric("writes_lost") == "writes_lost@partition5s/lab/lag1ms"
    assert split_metric(c.metric("writes_lost")) == ("writes_lost", c)
    assert split_metric("unavailability@kill") == ("unavailability", Condition("kill", 0.0, "lab", 1.0))
    assert split_metric("writes_lost@pause", hold_s=5.0)[1] == Condition("pause", 5.0, "lab", 1.0)
    assert split_metric("false_failover@spike2s/ttl1.5s/lag0ms")[1] == Condition("spike", 2.0, "ttl1.5s", 0.0)
    assert split_metric("writes_lost") == ("writes_lost", None)
    with pytest.raises(ValueError, match="unknown timers"):
        fo.timers_named("etcd")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`saaslab sim failover --quick --seeds 1` into <tmp>/failover/sim."""
    folder = tmp_path_factory.mktemp("results") / "failover"
    fo.run(folder, quick=True, seeds=1, jobs=1)
    return folder


def test_run_writes_tidy_rows_and_its_parameters(quick_run: Path) -> None:
    csv = quick_run / "sim" / "results.csv"
    assert csv.read_text().splitlines()[0].split(",") == list(COLUMNS)
    rows = read_rows(csv)
    assert {r.source for r in rows} == {"sim"} and {r.pattern for r in rows} == {"failover"}
    assert {r.design for r in rows} == set(fo.DESIGNS)
    names = {split_metric(r.metric)[0] for r in rows}
    assert {"writes_lost", "split_brain_writes", "unavailability", "false_failover", "downtime_per_year"} <= names
    assert all(split_metric(r.metric)[1] is not None for r in rows)
    params = json.loads((quick_run / "sim" / "run.json").read_text())["parameters"]
    assert params["timer_presets"]["incidents_per_year"] == fo.INCIDENTS_PER_YEAR
    assert params["timers"]["patroni"] == {"ttl_s": 30.0, "loop_wait_s": 10.0, "retry_timeout_s": 10.0,
                                           "note": core.PRESETS["patroni"].note}


def test_the_report_opens_with_the_answer_and_waits_for_a_live_run(quick_run: Path) -> None:
    from saaslab.report import build, declaration_for, load_pattern, split_sentences

    report = build(declaration_for("failover"), load_pattern("failover", directory=quick_run))
    answer = [s for a in report.answer for s in split_sentences(a)]
    assert 3 <= len(answer) <= 5
    assert answer[0].startswith("A dead primary left clients unable to write for ") and "Patroni's defaults" in answer[0]
    assert any(s.startswith("Sync replication lost no acknowledged write") for s in answer)
    assert report.headline_figure is not None and len(report.figures) == 3
    assert report.sim_vs_live is not None
    assert {r[5] for r in report.sim_vs_live.rows} == {"no live run yet"}
    assert {(r[0], r[1]) for r in report.sim_vs_live.rows} >= {("sync", "kill"), ("unsafe", "partition 5 s")}
    assert report.invariants is not None
    held = {(r[1], r[2]): [int(x) for x in r[3].removesuffix(" runs").split("/")] for r in report.invariants.rows}
    ok, runs = held[("sync", "no_lost_writes")]
    assert runs > 0 and ok == runs
    ok, runs = held[("unsafe", "no_split_brain")]
    assert ok < runs  # caught
