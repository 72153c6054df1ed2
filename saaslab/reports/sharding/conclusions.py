"""The sharding report's conclusions from the simulation: sentences filled in from the numbers."""

from __future__ import annotations

from saaslab.report import fmt_list, fmt_load, fmt_num
from saaslab.reports.sharding.view import (
    HASHED,
    MOVERS,
    PUBLISHED_RING_SPREAD,
    UNSAFE,
    View,
    big,
    megabytes,
    pct,
)


def _span(values: list[float], fmt=lambda x: fmt_num(x)) -> str:  # type: ignore[no-untyped-def]
    low, high = fmt(min(values)), fmt(max(values))
    return low if low == high else f"{low} to {high}"


def _zipf(v: View, metric: str) -> float | None:
    zipfs = v.axis(metric, "zipf")
    return 1.0 if 1.0 in zipfs else (zipfs[len(zipfs) // 2] if zipfs else None)


def balance_cell(v: View) -> dict[str, float] | None:
    """The balance cell the report quotes: the most tenants, the middle shard count, Zipf 1.0."""
    n, k, z = v.largest("load_max_over_mean", "tenants"), v.middle("load_max_over_mean", "shards"), \
        _zipf(v, "load_max_over_mean")
    return None if n is None or k is None or z is None else {"zipf": z, "tenants": n, "shards": k}


def directory_cell(v: View, cell: dict[str, float]) -> dict[str, float] | None:
    """The directory's cell nearest `cell`: it is rebalanced only up to `rebalance_max_tenants` tenants."""
    return v.nearest("directory", "load_max_over_mean", cell)


def balance_sentence(v: View) -> str | None:
    cell = balance_cell(v)
    if cell is None:
        return None
    found = {d: s for d in HASHED if (s := v.at(d, "load_max_over_mean", **cell)).known}
    floor = next((s for d in HASHED if (s := v.at(d, "load_floor", **cell)).known), None)
    if not found or floor is None:
        return None
    best = min(found, key=lambda d: found[d].mean)
    text = (f"With {big(cell['tenants'])} tenants on {cell['shards']:g} shards and Zipf {cell['zipf']:g} request "
            f"rates, hashing left the hottest shard at {_span([s.mean for s in found.values()])}x the mean load "
            f"({best} lowest), against a floor of {fmt_num(floor.mean)}x that no placement beats (the hottest tenant "
            "alone on a shard)")
    dcell = directory_cell(v, cell)
    if dcell is not None and (d := v.at("directory", "load_max_over_mean", **dcell)).known:
        where = "" if dcell == cell else f" at {big(dcell['tenants'])} tenants"
        text += f"; the directory, rebalanced by load, got to {fmt_num(d.mean)}x{where}"
    return text + "."


def hot_tenant_sentence(v: View) -> str | None:
    cell = balance_cell(v)
    zipfs = v.axis("load_floor", "zipf")
    if cell is None or not zipfs:
        return None
    top = {**cell, "zipf": zipfs[-1]}
    floor = next((s for d in HASHED if (s := v.at(d, "load_floor", **top)).known), None)
    if floor is None or floor.mean < 1.2:
        return None
    return (f"At Zipf {zipfs[-1]:g} the hottest tenant alone carries {fmt_num(floor.mean)}x a shard's mean load, so "
            "no placement evens it out: it needs a shard of its own (isolation) and one bigger than the rest.")


def growth_sentence(v: View) -> str | None:
    k = v.middle("moved_tenants_share", "shards")
    if k is None:
        return None
    n = v.axis("moved_theory", "tenants")
    if not n:
        return None
    cell = {"tenants": n[-1], "shards": k}
    moved = {d: s for d in HASHED if (s := v.at(d, "moved_tenants_share", **cell)).known}
    theory = {d: s for d in HASHED if (s := v.at(d, "moved_theory", **cell)).known}
    if "mod" not in moved or len(moved) < 2:
        return None
    others = [d for d in moved if d != "mod"]
    text = (f"Adding a shard to {k:g} moved {pct(moved['mod'])} of tenants under mod (theory "
            f"{fmt_num(100 * theory['mod'].mean)}%) against {_span([100 * moved[d].mean for d in others])}% under "
            f"{fmt_list(others)} (theory {fmt_num(100 * theory[others[0]].mean)}%)")
    z = _zipf(v, "moved_rows_share")
    if z is not None:
        d_rows = v.at("directory", "moved_rows_share", zipf=z, **cell)
        d_tenants = v.at("directory", "moved_tenants_share", zipf=z, **cell)
        if d_rows.known and d_tenants.known:
            text += (f"; the directory moved nothing by itself, then its rebalancer moved "
                     f"{fmt_num(d_tenants.mean * cell['tenants'])} tenants holding {pct(d_rows)} of the rows "
                     f"(Zipf {z:g}) to fill the new shard")
    return text + "."


def ring_sentence(v: View) -> str | None:
    found = []
    for c in v.cells("ring_spread", "ring"):
        s = v.at("ring", "ring_spread", **c)
        published = PUBLISHED_RING_SPREAD.get(int(c["vnodes"]))
        if s.known and published is not None:
            found.append((int(c["vnodes"]), s, published))
    if not found:
        return None
    return ("The ring's load spread (standard deviation over the mean) was "
            + fmt_list([f"{pct(s)} with {big(vn)} points per shard" for vn, s, _ in found])
            + f" (published: {fmt_list([f'{100 * p:g}%' for _, _, p in found])}).")


def queue_sentence(v: View) -> str | None:
    loads = v.loads_of("hot_shard_p99")
    z = _zipf(v, "hot_shard_p99")
    cells = v.cells("hot_shard_p99")
    if not loads or z is None or not cells:
        return None
    lp = loads[-1]
    cell = next(c for c in cells if c["zipf"] == z)
    hot = {d: (v.at(d, "hot_shard_utilisation", lp, **cell), v.at(d, "hot_shard_p99", lp, **cell))
           for d in v.designs_with("hot_shard_p99")}
    hot = {d: x for d, x in hot.items() if x[0].known and x[1].known}
    mean = v.at(next(iter(hot), "mod"), "mean_shard_p99", lp, shards=cell["shards"])
    if not hot or not mean.known:
        return None
    worst = max(hot, key=lambda d: hot[d][0].mean)
    best = min(hot, key=lambda d: hot[d][0].mean)
    u, p = hot[worst]
    text = (f"At {fmt_load(lp)} mean utilisation ({big(cell['tenants'])} tenants, {cell['shards']:g} shards, Zipf "
            f"{z:g}) the hottest shard ran at {fmt_num(u.mean)}x its capacity under {worst} (p99 {fmt_num(p.mean)} ms)"
            f" and {fmt_num(hot[best][0].mean)}x under {best} (p99 {fmt_num(hot[best][1].mean)} ms), against "
            f"{fmt_num(mean.mean)} ms on a shard at the mean load")
    if u.mean > 1:
        text += ": an overloaded shard never catches up, its p99 grows with the run"
    return text + "."


def move_sentence(v: View) -> str | None:
    if "fenced" not in v.designs:
        return None
    cells = v.cells("write_blocked_ms", "fenced")
    blocked = [(c, s) for c in cells if (s := v.at("fenced", "write_blocked_ms", **c)).known]
    if not blocked:
        return None
    worst_cell, worst = max(blocked, key=lambda x: x[1].mean)
    biggest = max(cells, key=lambda c: (c["rows"], c["wps"]))
    duration = v.at("fenced", "move_duration_ms", **biggest)
    p99 = v.at("fenced", "write_latency_p99", **biggest)
    text = (f"The fenced mover blocked the tenant's writes (fence to flip) for at most {fmt_num(worst.mean)} ms "
            f"(at {big(worst_cell['rows'])} rows and {big(worst_cell['wps'])} writes/s), while moving "
            f"{big(biggest['rows'])} rows at {big(biggest['wps'])} writes/s took {fmt_num(duration.mean / 1000)} s")
    if p99.known:
        text += f" with a write p99 of {fmt_num(p99.mean)} ms"
    return text + ": the copy and catch-up run beside the writes, only the final catch-up and the flip block them."


def checker_sentence(v: View) -> str | None:
    if UNSAFE not in v.designs:
        return None
    caught_ok, n = v.held(UNSAFE, "checks_valid")
    if not n:
        return None
    lost = v.runs(UNSAFE, "lost_writes")
    misplaced = v.runs(UNSAFE, "misplaced_rows")
    text = (f"The checker (invariants.check on each move's history and final shards) caught the unsafe mover in "
            f"{n - caught_ok} of {n} runs: {fmt_num(sum(lost) / len(lost))} acknowledged writes lost and "
            f"{fmt_num(sum(misplaced) / len(misplaced))} rows left on the old shard per move on average")
    safe = [d for d in MOVERS if d != UNSAFE and d in v.designs]
    held = [(d, *v.held(d, "checks_valid")) for d in safe]
    if held:
        text += "; " + fmt_list([f"the {d} mover held every check in {ok} of {m} runs" for d, ok, m in held])
    return text + "."


def memory_sentence(v: View) -> str | None:
    cells = v.cells("router_bytes")
    if not cells:
        return None
    cell = max(cells, key=lambda c: c["shards"])
    found = {d: s for d in v.designs_with("router_bytes") if (s := v.at(d, "router_bytes", **cell)).known}
    if "directory" not in found:
        return None
    per_tenant = v.at("directory", "router_bytes_per_tenant", **cell)
    hashed = {d: s for d, s in found.items() if d != "directory"}
    text = (f"For {big(cell['tenants'])} tenants the directory holds {megabytes(found['directory'])}"
            + (f" ({fmt_num(per_tenant.mean)} bytes per tenant, tracemalloc)" if per_tenant.known else ""))
    if hashed:
        text += (f", the hash routers over {cell['shards']:g} shards "
                 + fmt_list([f"{d} {megabytes(s)}" for d, s in hashed.items()]))
    return text + ": hashing needs no table, the directory's cost is per tenant."

