"""Invariants of rate limiting, as pure checks over a history of decisions (saaslab.history).

A decision is an `ok` op whose value is `decision_value(...)`: tenant, time_us (the clock the
limiter decided with), allowed, cost, the policy (requests, window_us), algorithm, and whether
the tenant is one of the workload's quiet ones. The same checks run on simulated histories, live
load-test histories and in pytest.

`no_over_admission`: per tenant (and policy), the admitted requests never exceed what the
algorithm promises (docs/contract.md, "Rate limiting"):

* sliding_log: at most `requests` in any span of `window_us`.
* fixed_window, naive: at most `requests` in any epoch-aligned window, and so at most 2x
  `requests` in any span of `window_us` straddling a boundary (the fixed window's known weakness).
* sliding_counter: at most `requests` in any epoch-aligned window; in any span (u - w, u] ending
  at an admission u that lies e = u mod w µs into its aligned window, at most
  `requests + floor(c * e / w)`, with c the admissions of the aligned window before u's
  (`sliding_counter_bound`). It estimates the previous window's admissions as spread evenly;
  when they bunched at its end, the estimate undercounts them. Below 2x `requests` in all:
  at most `2 * requests - 1`. (docs/contract.md derives it.)
  Aligned windows need `time_us` to be the limiter's own clock.
* token_bucket: at most `requests + floor(span * requests / window_us)` between any two
  admissions `span` µs apart (a full bucket plus the refill over the span).
* gcra: at most `requests + floor(span / T)`, T = window_us // requests (the emission interval).

`naive` is held to the fixed window's promise, which it breaks under concurrency: the checker
must catch it. `quiet_never_limited`: a tenant flagged quiet was never refused.

Live, the time of a decision is the one the service reports in lab mode (`Saaslab-Decided-At`,
docs/contract.md): `decision_time` of the limiter's own clock, which the Lua scripts return.
`check_run` checks a live run folder (`saaslab check ratelimit`).
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reference_impl.ratelimit.core import Policy, gcra_interval
from saaslab.history import CheckResult, Op, load

if TYPE_CHECKING:
    from saaslab.settings import Settings

F_DECIDE = "decide"
DECIDED_AT_HEADER = "Saaslab-Decided-At"
"""Lab mode only (docs/contract.md): on every decided answer, the limiter's clock at the decision in µs."""
MAX_EXAMPLES = 5
ALIGNED = frozenset({"fixed_window", "sliding_counter", "naive"})


def decision_value(*, tenant: str, time_us: int, allowed: bool, policy: Policy, algorithm: str,
                   cost: int = 1, quiet: bool = False) -> dict[str, Any]:
    """The value of a decision's `ok` op: what the checks read."""
    return {"tenant": tenant, "time_us": time_us, "allowed": allowed, "cost": cost,
            "requests": policy.requests, "window_us": policy.window_us, "algorithm": algorithm,
            "quiet": quiet}


def decision_time(algorithm: str, state: Any, now_us: int) -> int:
    """The time a decision counts at, from the state it left (`core`'s) and the clock it was given.

    That is `now_us`, unless the clock stepped back behind time the state already holds: then the
    request counted in the newer window (fixed window, sliding counter, naive), at the newer bucket
    time (token bucket) or at the newest log entry (sliding log). The Lua scripts return the same
    value (`finish`'s `decided_us`); GCRA keeps no such time and decides at `now_us`.
    """
    if state is None or algorithm == "gcra":
        return now_us
    if algorithm in ALIGNED:
        return max(now_us, state.window_start_us)
    if algorithm == "token_bucket":
        return max(now_us, state.updated_us)
    if algorithm == "sliding_log":
        return max(now_us, state.entries[-1]) if state.entries else now_us
    raise ValueError(f"no decision time for algorithm {algorithm!r}")


def _decisions(ops: Iterable[Op]) -> Iterable[dict[str, Any]]:
    return (op.value for op in ops if op.type == "ok" and op.f == F_DECIDE and "allowed" in op.value)


def no_over_admission(ops: Iterable[Op]) -> CheckResult:
    groups: dict[tuple[str, str, int, int], list[tuple[int, int]]] = defaultdict(list)
    checked = 0
    for v in _decisions(ops):
        checked += 1
        if v["allowed"]:
            key = (v["tenant"], v["algorithm"], int(v["requests"]), int(v["window_us"]))
            groups[key].append((int(v["time_us"]), int(v.get("cost", 1))))
    violations = 0
    examples: list[dict[str, Any]] = []
    for (tenant, algorithm, requests, window_us), admitted in sorted(groups.items()):
        admitted.sort()
        found = _violations(algorithm, Policy(requests, window_us), admitted)
        violations += len(found)
        for f in found[:MAX_EXAMPLES - len(examples)]:
            examples.append({"tenant": tenant, "algorithm": algorithm, "requests": requests,
                             "window_us": window_us, **f})
    return CheckResult(name="no_over_admission", valid=violations == 0, checked=checked, violations=violations,
                       examples=examples, detail=f"{len(groups)} tenant policies, {checked} decisions")


def _violations(algorithm: str, policy: Policy, admitted: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Windows (or spans) where `admitted` (sorted (time_us, cost)) exceeds the algorithm's bound."""
    r, w = policy.requests, policy.window_us
    if algorithm in ALIGNED:
        per_window: dict[int, int] = {}
        out = []
        for start, group in itertools.groupby(admitted, key=lambda a: a[0] - a[0] % w):
            n = per_window[start] = sum(cost for _, cost in group)
            if n > r:
                out.append({"window_start_us": start, "admitted": n, "bound": r})
        if algorithm == "sliding_counter":
            def bound(u: int) -> int:
                return sliding_counter_bound(policy, per_window.get(u - u % w - w, 0), u % w)
        else:
            def bound(u: int) -> int:
                return 2 * r
        return out + _unaligned_violations(admitted, w, bound)
    if algorithm == "sliding_log":
        return _sliding_violations(admitted, r, w)
    if algorithm == "token_bucket":
        return _refill_violations(admitted, r, unit=w, per_us=r)
    if algorithm == "gcra":
        return _refill_violations(admitted, r, unit=gcra_interval(policy), per_us=1)
    raise ValueError(f"no admission bound for algorithm {algorithm!r}")


def sliding_counter_bound(policy: Policy, previous: int, elapsed_us: int) -> int:
    """Most a sliding-window counter admits in the span (u - w, u] ending `elapsed_us` into u's aligned
    window, when the aligned window before admitted `previous` (docs/contract.md derives it).

    What it admits of u's window by u leaves previous * (w - e) + current * w <= requests * w, so
    current <= requests - previous * (w - e) / w; the span holds at most all `previous` of the window
    before plus that: requests + previous * e / w, rounded down.
    """
    return policy.requests + previous * elapsed_us // policy.window_us


def _unaligned_violations(admitted: list[tuple[int, int]], w: int, bound: Callable[[int], int]
                          ) -> list[dict[str, Any]]:
    """Spans (u - w, u] ending at each admission time u holding more than bound(u) (two pointers).

    Any span of `w` µs holds no more than the span of the same length ending at its last admission,
    whose bound is no larger (bounds grow with e), so these spans are the only ones to check."""
    out = []
    i = total = 0
    for j, (u, cost) in enumerate(admitted):
        total += cost
        if j + 1 < len(admitted) and admitted[j + 1][0] == u:
            continue  # every admission at u first
        while admitted[i][0] <= u - w:
            total -= admitted[i][1]
            i += 1
        if total > (b := bound(u)):
            out.append({"window_end_us": u, "admitted": total, "bound": b})
    return out


def _sliding_violations(admitted: list[tuple[int, int]], r: int, w: int) -> list[dict[str, Any]]:
    """Spans [t, t + w) starting at an admission holding more than r (two pointers)."""
    out = []
    j = total = 0
    for i, (t, _) in enumerate(admitted):
        while j < len(admitted) and admitted[j][0] < t + w:
            total += admitted[j][1]
            j += 1
        if total > r:
            out.append({"window_start_us": t, "admitted": total, "bound": r})
        total -= admitted[i][1]
    return out


def _refill_violations(admitted: list[tuple[int, int]], r: int, *, unit: int, per_us: int
                       ) -> list[dict[str, Any]]:
    """Pairs of admissions i <= j, span s apart, holding n > r + floor(s * per_us / unit).

    n - r <= floor(s * per_us / unit) iff (n - r) * unit <= s * per_us, i.e.
    (before_i * unit - t_i * per_us) >= (through_j * unit - t_j * per_us) - r * unit, with before_i
    and through_j the admitted totals before i and through j. So a running minimum finds the
    worst span ending at each j in one pass.
    """
    out = []
    total = 0
    lowest: tuple[int, int] | None = None  # (before_i * unit - t_i * per_us, t_i)
    for t, cost in admitted:
        here = total * unit - t * per_us
        if lowest is None or here < lowest[0]:
            lowest = (here, t)
        total += cost
        excess = (total * unit - t * per_us) - lowest[0] - r * unit
        if excess > 0:
            span = t - lowest[1]
            out.append({"span_start_us": lowest[1], "span_us": span,
                        "admitted": r + (excess + span * per_us) // unit, "bound": r + span * per_us // unit})
    return out


def quiet_never_limited(ops: Iterable[Op], quiet_tenants: Collection[str] | None = None) -> CheckResult:
    """No decision refused a quiet tenant (flagged in the op, or named in `quiet_tenants`)."""
    checked = violations = 0
    examples: list[dict[str, Any]] = []
    for v in _decisions(ops):
        if not (v.get("quiet") or (quiet_tenants is not None and v["tenant"] in quiet_tenants)):
            continue
        checked += 1
        if not v["allowed"]:
            violations += 1
            if len(examples) < MAX_EXAMPLES:
                examples.append({"tenant": v["tenant"], "time_us": v["time_us"], "algorithm": v["algorithm"]})
    return CheckResult(name="quiet_never_limited", valid=violations == 0, checked=checked, violations=violations,
                       examples=examples, detail=f"{checked} decisions of quiet tenants")


def check_history(ops: Iterable[Op], quiet_tenants: Collection[str] | None = None) -> list[CheckResult]:
    ops = list(ops)
    return [no_over_admission(ops), quiet_never_limited(ops, quiet_tenants)]


def write_check(path: Path, results: list[CheckResult]) -> None:
    """`check.json`: the list of verdicts (the form the report and the notebook read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_dict() for r in results], indent=2))


def check_run(out_dir: Path, settings: Settings | None = None) -> list[CheckResult]:
    """Check a live run folder: `out_dir/live/history.jsonl`, every decision the load test recorded.

    `settings` is part of every pattern's checker interface; this one needs no connection, since
    each decision carries everything it is judged on. Writes `out_dir/live/check.json`.
    """
    live = out_dir / "live"
    results = check_history(load(live / "history.jsonl"))
    write_check(live / "check.json", results)
    return results
