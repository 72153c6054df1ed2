"""The failover report's conclusions from the simulation: sentences filled in from the numbers."""

from __future__ import annotations

from saaslab.report import fmt_g, fmt_list, fmt_num
from saaslab.reports.failover.view import SAFE, UNSAFE, View
from scenarios.failover.plan import SETUP, timers_named

PRESET_WORDS = {
    "patroni": "with Patroni's defaults (ttl 30 s, loop_wait 10 s)",
    "sentinel": "with Sentinel's (down-after 30 s)",
    "repmgr": "with repmgr's (6 reconnects x 10 s)",
    "lab": "with the lab's short timers (ttl 3 s)",
}
PRESET_FIRST = ("patroni", "sentinel", "repmgr", "lab")


def _timer_design(v: View) -> str | None:
    return next((d for d in ("async", *v.designs) if any(v.timer_cell(d, p, "unavailability").known
                                                         for p in v.presets)), None)


def timers_sentences(v: View, incidents: float) -> list[str]:
    """How long a dead primary leaves clients unable to write, per preset, and what that is a year."""
    d = _timer_design(v)
    if d is None:
        return []
    presets = [p for p in PRESET_FIRST if p in v.presets] + [p for p in v.presets if p not in PRESET_FIRST]
    parts = [f"{fmt_num(s.mean)} s {PRESET_WORDS.get(p, f'with {p} timers')}"
             for p in presets if (s := v.timer_cell(d, p, "unavailability")).known]
    out = [f"A dead primary left clients unable to write for {fmt_list(parts)}, under {d} replication."]
    per_year = v.timer_cell(d, "patroni", "downtime_per_year")
    if per_year.known:
        low, high = (x / 1e6 for x in timers_named("patroni").failover_bounds_us())
        out.append(f"Patroni's promotion falls between {fmt_g(low)} and {fmt_g(high)} s (ttl ± loop_wait), by where the "
                   f"death falls in the agents' loops; at an assumed {fmt_g(incidents)} primary losses a year its "
                   f"defaults cost {fmt_num(per_year.mean)} minutes of write downtime a year.")
    return out


def sync_wait_sentence(v: View) -> str | None:
    """Sync with one replica: after the failover the new primary waits for a standby, the old one rejoining."""
    sync, asyn = v.timer_cell("sync", "lab", "unavailability"), v.timer_cell("async", "lab", "unavailability")
    if not (sync.known and asyn.known) or sync.mean <= 1.1 * asyn.mean:
        return None
    return (f"Sync pays for its safety in availability too: with one replica the new primary's commits wait for a "
            f"standby until the old primary has rejoined, so a dead primary cost {fmt_num(sync.mean)} s against "
            f"{fmt_num(asyn.mean)} s for async with the lab's timers (a rejoin takes {fmt_g(SETUP.rejoin_s)} s here).")


def loss_sentences(v: View) -> list[str]:
    """Sync loses nothing; async loses the writes of the last lag, or the cut-off primary's last writes."""
    conditions = v.loss_conditions
    if not conditions:
        return []
    out = []
    if "sync" in v.designs:
        lost = v.runs("sync", "writes_lost", conditions)
        bad = sum(1 for x in lost if x > 0)
        if lost and not bad:
            out.append(f"Sync replication lost no acknowledged write in any of its {len(lost)} simulated runs (kill, "
                       "pause and partition, every lag and write rate).")
        elif lost:
            out.append(f"Sync replication lost acknowledged writes in {bad} of {len(lost)} simulated runs, a problem.")
    if "async" in v.designs and v.loss_rates and v.lags:
        rate, lag = max(v.loss_rates), max(v.lags)
        kill, cut = v.loss_condition("kill", lag), v.loss_condition("partition", v.drill_lag)
        killed = v.at("async", rate, "writes_lost", kill) if kill else None
        cut_off = v.at("async", v.drill_rate, "writes_lost", cut) if cut else None
        parts = []
        if killed is not None and killed.known:
            parts.append(f"{killed.text()} writes when the primary died at {fmt_g(rate)} writes/s with {fmt_g(lag)} ms "
                         f"of lag (rate x lag = {fmt_num(rate * lag / 1000)})")
        if cut_off is not None and cut_off.known and cut_off.mean > 0:
            parts.append(f"{cut_off.text()} when it was cut off at {fmt_g(v.drill_rate)} writes/s, the writes it took "
                         "on its own side before fencing itself")
        if parts:
            out.append("Async lost what its replica had not yet received: " + fmt_list(parts) + ".")
    return out


def split_brain_sentence(v: View) -> str | None:
    """Only the design without fencing writes to two primaries, and the checker catches it."""
    conditions = v.loss_conditions
    if not conditions:
        return None
    parts = []
    if UNSAFE in v.designs:
        rate, lag = v.drill_rate, v.drill_lag
        cut = v.loss_condition("partition", lag)
        split = v.at(UNSAFE, rate, "split_brain_writes", cut) if cut else None
        ok, n = v.held(UNSAFE, "no_split_brain", [c for c in conditions if c.fault == "partition"])
        if split is not None and split.known and n:
            parts.append(f"Only the design without fencing wrote to two primaries ({split.text()} split-brain writes "
                         f"per partition at {fmt_g(rate)} writes/s), and the checker caught it in {n - ok} of {n} "
                         "partition runs")
    safe = [(d, sum(1 for x in v.runs(d, "split_brain_writes", conditions) if x > 0)) for d in SAFE if d in v.designs]
    clean, dirty = [d for d, bad in safe if not bad], [(d, bad) for d, bad in safe if bad]
    if clean:
        parts.append(f"with fencing the old primary stops taking writes loop_wait + retry_timeout after its last "
                     f"renewal, before its lease can lapse, and no {' or '.join(clean)} run had one")
    if dirty:
        parts.append(fmt_list([f"{d} had split-brain writes in {bad} runs, a problem" for d, bad in dirty]))
    if not parts:
        return None
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def _threshold(v: View, fault: str, ttl: float) -> float | None:
    """The shortest pause or spike after which most trials failed over, at this ttl (None: none did)."""
    return next((x for x in v.map_lengths(fault) if (s := v.map_cell(fault, ttl, x)).known and s.mean >= 0.5), None)


def map_sentences(v: View) -> list[str]:
    """Where on the map false failovers start, for pauses and for latency spikes."""
    ttls = v.map_ttls
    if not ttls:
        return []
    out = []
    pauses = [(ttl, _threshold(v, "pause", ttl)) for ttl in ttls] if v.map_lengths("pause") else []
    if pauses:
        longest = max(v.map_lengths("pause"))
        words = [f"{fmt_g(x)} s at ttl {fmt_g(ttl)} s" if x is not None else
                 f"none up to {fmt_g(longest)} s at ttl {fmt_g(ttl)} s" for ttl, x in pauses]
        out.append("A shorter detection timeout buys a faster failover with failovers nobody needed: a GC-like pause "
                   "of a live primary promoted the replica in most trials from " + fmt_list(words) + ".")
    if v.map_lengths("spike"):
        hit = [ttl for ttl in ttls if any(v.map_cell("spike", ttl, x).mean > 0 for x in v.map_lengths("spike")
                                          if v.map_cell("spike", ttl, x).known)]
        spared = [ttl for ttl in ttls if ttl not in hit]
        spike = f"{fmt_g(SETUP.spike_mean_ms / 1000)} s"
        if hit and spared:
            out.append(f"Latency spikes (about {spike} more per message) caused false failovers at ttl "
                       f"{fmt_list([fmt_g(x) + ' s' for x in hit])} but none at {fmt_list([fmt_g(x) + ' s' for x in spared])}, "
                       "whose retry_timeout outlasts a slow answer.")
        elif hit:
            out.append(f"Latency spikes (about {spike} more per message) caused false failovers at every ttl swept.")
        else:
            out.append(f"No latency spike (about {spike} more per message) caused a false failover at any ttl swept.")
    return out
